"""deploy/kubernetes: every manifest the kustomization pulls in is valid against the Kubernetes
schemas (kubernetes-validate, strict: an unknown field fails), the Prometheus Operator objects
have the fields they need, and the pieces agree with each other and with the exporter."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from exporter.config.errors import ConfigError
from exporter.config.model import parse_config
from tests.helpers import REPO

KUBERNETES_VERSION = "1.30.0"
KUSTOMIZE_ROOT = REPO / "deploy" / "kubernetes"
OPERATOR_KINDS = {"ServiceMonitor", "Probe", "PrometheusRule"}


def kustomize(root: Path) -> list[dict[str, Any]]:
    """The objects of a kustomization (its `resources`, files or directories, recursively),
    with its namespace applied: what `kubectl apply -k` sends, for the features used here."""
    k = yaml.safe_load((root / "kustomization.yaml").read_text())
    assert k["kind"] == "Kustomization", root
    assert set(k) <= {"apiVersion", "kind", "namespace", "labels", "resources"}, root
    objects: list[dict[str, Any]] = []
    for entry in k["resources"]:
        path = (root / entry).resolve()
        assert path.exists(), f"{root}/kustomization.yaml: {entry} does not exist"
        if path.is_dir():
            objects += kustomize(path)
        else:
            objects += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for obj in objects:
        if "namespace" in k:
            obj["metadata"]["namespace"] = k["namespace"]
        for label in k.get("labels", []):
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
    return objects


def validate(obj: dict[str, Any]) -> None:
    """Raises kubernetes_validate.ValidationError (or AssertionError) if `obj` is invalid."""
    if obj["kind"] in OPERATOR_KINDS:
        _validate_operator_object(obj)
    else:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def _validate_operator_object(obj: dict[str, Any]) -> None:
    """The Prometheus Operator's CRD schemas are not packaged: check what these objects use."""
    assert obj["apiVersion"] == "monitoring.coreos.com/v1", obj["kind"]
    assert obj["metadata"]["name"], obj["kind"]
    spec = obj["spec"]
    if obj["kind"] == "ServiceMonitor":
        assert spec["selector"]["matchLabels"]
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}, endpoint
    elif obj["kind"] == "Probe":
        assert set(spec) <= {"jobName", "prober", "module", "interval", "scrapeTimeout", "targets"}
        assert set(spec["prober"]) <= {"url", "path", "scheme"}
        assert spec["targets"]["staticConfig"]["static"]
    else:
        for group in spec["groups"]:
            for rule in group["rules"]:
                assert ("alert" in rule) != ("record" in rule) and rule["expr"], rule


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [o["kind"] for o in objects]
    assert len(set(kinds)) == len(kinds), kinds
    return {o["kind"]: o for o in objects}


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return kustomize(KUSTOMIZE_ROOT)


def test_every_manifest_is_valid(objects: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in objects}
    assert kinds == {"ConfigMap", "Secret", "Deployment", "Service", *OPERATOR_KINDS}
    for obj in objects:
        validate(obj)
        assert obj["metadata"]["namespace"] == "monitoring"


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("Deployment", ["spec", "template", "spec", "containers", 0, "ports", 0, "containerPort"],
         "http"),
        ("Deployment", ["spec", "template", "spec", "containers", 0, "resourcez"], {}),
        ("Service", ["spec", "ports", 0, "port"], "nine"),
        ("Secret", ["stringData"], ["password"]),
        ("Probe", ["spec", "prober", "address"], "x:1"),
        ("ServiceMonitor", ["spec", "selector"], {}),
    ],
)  # fmt: skip
def test_a_broken_manifest_fails(
    objects: list[dict[str, Any]], kind: str, path: list[Any], value: Any
) -> None:
    broken = copy.deepcopy(_by_kind(objects)[kind])
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises((kubernetes_validate.ValidationError, AssertionError, KeyError)):
        validate(broken)


def test_the_pieces_fit_together(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    by_kind = _by_kind(objects)
    deployment, service = by_kind["Deployment"], by_kind["Service"]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    pod_labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port_names == {"http": 9832}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(port_names)
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # The ServiceMonitor finds the Service; the Probe goes through it to /probe.
    monitor = by_kind["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["endpoints"]} <= {
        p["name"] for p in service["spec"]["ports"]
    }
    probe = by_kind["Probe"]["spec"]
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    assert probe["prober"]["url"] == f"{name}.{namespace}.svc:{service['spec']['ports'][0]['port']}"
    assert probe["prober"]["path"] == "/probe"
    assert probe["jobName"] == "pg-connections-exporter"  # what the alerting rules select
    # The config the ConfigMap mounts is a valid exporter config whose auth module reads the
    # password from where the Secret is mounted, and allows the Probe's module.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    config_path = next(a.split("=", 1)[1] for a in container["args"] if "config.file" in a)
    assert mounts["config"] == config_path
    data = yaml.safe_load(by_kind["ConfigMap"]["data"]["config.yaml"])
    password_file = data["auth_modules"][probe["module"]]["password_file"]
    secret = by_kind["Secret"]
    assert Path(password_file).parent == Path(mounts["secret"])
    assert Path(password_file).name in secret["stringData"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["secret"]["secret"]["secretName"] == secret["metadata"]["name"]
    assert volumes["config"]["configMap"]["name"] == by_kind["ConfigMap"]["metadata"]["name"]
    (tmp_path / "password").write_text("x")
    data["auth_modules"][probe["module"]]["password_file"] = str(tmp_path / "password")
    config = parse_config(data, "configmap config.yaml")
    for target in probe["targets"]["staticConfig"]["static"]:
        host = target.split(":")[0]
        assert config.allowed_hosts.refusal(host) is None, target
    # The PrometheusRule is the generated one, unchanged.
    rule_file = REPO / "alerts" / "kubernetes" / "prometheusrule.yaml"
    assert by_kind["PrometheusRule"]["spec"] == yaml.safe_load(rule_file.read_text())["spec"]
    with pytest.raises(ConfigError):
        data["probe"]["allowed_hosts"] = ["not a host"]
        parse_config(data, "configmap config.yaml")


def test_the_log_sidecar_example_reads_the_servers_log_volume_read_only(tmp_path: Path) -> None:
    """deploy/kubernetes/sidecar: the exporter beside PostgreSQL, its log volume mounted
    read-only where the exporter's config reads the log, the server writing it there."""
    objects = kustomize(KUSTOMIZE_ROOT / "sidecar")
    for obj in objects:
        validate(obj)
    by_kind = _by_kind(objects)
    pod = by_kind["StatefulSet"]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    exporter, postgres = containers["exporter"], containers["postgres"]
    mounts = {m["name"]: m for m in exporter["volumeMounts"]}
    assert mounts["log"]["readOnly"] is True
    assert "data" not in mounts  # the exporter sees the log, not the server's files
    settings = dict(a.split("=", 1) for a in postgres["args"] if "=" in a)
    server_mounts = {m["name"]: m["mountPath"] for m in postgres["volumeMounts"]}
    assert settings["log_directory"] == server_mounts["log"] == mounts["log"]["mountPath"]
    assert settings["log_destination"] == "csvlog" and settings["logging_collector"] == "on"
    data = yaml.safe_load(by_kind["ConfigMap"]["data"]["config.yaml"])
    (tmp_path / "password").write_text("x")
    data["targets"][0]["password_file"] = str(tmp_path / "password")
    [target] = parse_config(data, "sidecar config.yaml").targets
    assert target.log is not None and target.log.format == settings["log_destination"]
    assert str(target.log.directory) == mounts["log"]["mountPath"]
