"""--web.config.file: TLS and basic auth on every path, and clear errors for a bad file."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest

from exporter.cli import main
from exporter.config.errors import ConfigError
from exporter.web.webconfig import WatchedWebConfig, load_web_config
from harness.localpg import LocalCluster
from tests.conftest import require_program
from tests.helpers import Samples, wait_until

PATHS = ("/metrics", "/", "/healthz")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(
        [require_program("openssl"), *args], cwd=cwd, check=True, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (with SANs of every
    kind) signed by it; another CA and a client certificate of its; a self-signed client."""
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={ca}",
            "-keyout", f"{ca}.key", "-out", f"{ca}.crt", cwd=d,
        )  # fmt: skip
    client_sans = "DNS:scraper.example,email:ops@example.com,URI:spiffe://example/scraper,IP:::1"
    for name, ca, ext in (
        ("server", "ca", "subjectAltName=IP:127.0.0.1"),
        ("client", "ca", f"extendedKeyUsage=clientAuth\nsubjectAltName={client_sans}"),
        ("other-client", "other-ca", "extendedKeyUsage=clientAuth"),
    ):
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d,
        )  # fmt: skip
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt",
            cwd=d,
        )  # fmt: skip
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=self-signed",
        "-keyout", "self-signed.key", "-out", "self-signed.crt", cwd=d,
    )  # fmt: skip
    return d


def _get(
    url: str, context: ssl.SSLContext | None = None, auth: tuple[str, str] | None = None
) -> tuple[int, str]:
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _web_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return path


def test_tls_and_basic_auth_on_every_path(
    pg: LocalCluster, exporter_for, pki: Path, tmp_path: Path
) -> None:
    hashed = bcrypt.hashpw(b"s3cret-for-prom", bcrypt.gensalt(rounds=4)).decode()
    path = _web_config(
        tmp_path,
        f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n"
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n",
    )
    running = exporter_for(
        {"targets": [{"name": "pg", "dsn": pg.dsn()}]}, WatchedWebConfig(str(path))
    )
    base = f"https://127.0.0.1:{running.exporter.port}"
    trusted = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    for p in PATHS:
        assert _get(base + p, trusted)[0] == 401, p
        assert _get(base + p, trusted, ("prometheus", "wrong"))[0] == 401, p
        assert _get(base + p, trusted, ("nobody", "s3cret-for-prom"))[0] == 401, p
    status, body = _get(base + "/metrics", trusted, ("prometheus", "s3cret-for-prom"))
    assert status == 200
    assert 'pg_up{target="pg"} 1.0' in body
    assert _get(base + "/healthz", trusted, ("prometheus", "s3cret-for-prom")) == (200, "ok\n")
    # POST /-/reload is behind the same gate.
    request = urllib.request.Request(base + "/-/reload", data=b"", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30, context=trusted)
    assert refused.value.code == 401
    # The response headers of the web config are sent.
    request = urllib.request.Request(
        base + "/healthz",
        headers={
            "Authorization": "Basic " + base64.b64encode(b"prometheus:s3cret-for-prom").decode()
        },
    )
    with urllib.request.urlopen(request, timeout=30, context=trusted) as response:
        assert response.headers["X-Frame-Options"] == "deny"
    # Plain HTTP to the TLS port gets no answer, and an untrusted client refuses the server.
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{running.exporter.port}/healthz", timeout=10)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(base + "/healthz", timeout=10, context=ssl.create_default_context())


def test_client_certificates_required(exporter_for, pki: Path, tmp_path: Path, pg) -> None:
    path = _web_config(
        tmp_path,
        f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n"
        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki}/ca.crt\n",
    )
    running = exporter_for(
        {"targets": [{"name": "pg", "dsn": pg.dsn()}]}, WatchedWebConfig(str(path))
    )
    base = f"https://127.0.0.1:{running.exporter.port}"
    without = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
        urllib.request.urlopen(base + "/healthz", timeout=10, context=without)
    with_cert = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    with_cert.load_cert_chain(pki / "client.crt", pki / "client.key")
    assert _get(base + "/healthz", with_cert) == (200, "ok\n")


def test_a_silent_client_does_not_block_the_others(
    exporter_for, pki: Path, tmp_path: Path, pg
) -> None:
    path = _web_config(
        tmp_path,
        f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n",
    )
    running = exporter_for(
        {"targets": [{"name": "pg", "dsn": pg.dsn()}]}, WatchedWebConfig(str(path))
    )
    # A client that connects and never starts its handshake holds only its own thread.
    with socket.create_connection(("127.0.0.1", running.exporter.port)):
        trusted = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        url = f"https://127.0.0.1:{running.exporter.port}/healthz"
        assert _get(url, trusted) == (200, "ok\n")


def _server_certificate(pki: Path, d: Path, name: str) -> tuple[Path, Path]:
    """Another server certificate for 127.0.0.1 from the test CA, with CN=name."""
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d,
    )  # fmt: skip
    (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", str(pki / "ca.crt"), "-CAkey",
        str(pki / "ca.key"), "-CAserial", str(d / "ca.srl"), "-CAcreateserial", "-days", "2",
        "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d,
    )  # fmt: skip
    return d / f"{name}.crt", d / f"{name}.key"


def _install(source: Path, target: Path) -> None:
    """Replace `target` at once, as a certificate manager does."""
    staged = target.with_suffix(".new")
    shutil.copyfile(source, staged)
    os.replace(staged, target)


def _served_certificate(port: int, trusted: ssl.SSLContext) -> str:
    """The CN of the certificate a new connection is served."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        trusted.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        subject = dict(pair[0] for pair in tls.getpeercert()["subject"])
    return subject["commonName"]


def test_web_config_changes_apply_without_a_restart(
    exporter_for, pki: Path, tmp_path: Path, pg
) -> None:
    """A rotated certificate is served from a new connection on, a new user is let in; a
    change with problems (a key that does not match, TLS turned off) leaves the last good web
    config in force and says so in a metric, until it is fixed."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    _install(pki / "server.crt", cert)
    _install(pki / "server.key", key)
    rotated_cert, rotated_key = _server_certificate(pki, tmp_path, "server-rotated")
    hashes = {
        user: bcrypt.hashpw(f"{user}-password".encode(), bcrypt.gensalt(rounds=4)).decode()
        for user in ("prometheus", "grafana-agent")
    }
    tls = f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"

    def users(*names: str) -> str:
        return "basic_auth_users:\n" + "".join(f"  {n}: '{hashes[n]}'\n" for n in names)

    path = _web_config(tmp_path, tls + users("prometheus"))
    running = exporter_for(
        {"targets": [{"name": "pg", "dsn": pg.dsn()}]}, WatchedWebConfig(str(path))
    )
    port = running.exporter.port
    trusted = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    base = f"https://127.0.0.1:{port}"

    def reload_metric() -> float:
        status, body = _get(base + "/metrics", trusted, ("prometheus", "prometheus-password"))
        assert status == 200, status
        return Samples(body).value("pg_connections_exporter_web_config_last_reload_successful")

    assert _served_certificate(port, trusted) == "server"
    assert reload_metric() == 1

    _install(rotated_cert, cert)
    _install(rotated_key, key)
    wait_until(
        lambda: _served_certificate(port, trusted) == "server-rotated", 15, 0.2, "the new cert"
    )
    assert _get(base + "/healthz", trusted, ("grafana-agent", "grafana-agent-password"))[0] == 401
    path.write_text(tls + users("prometheus", "grafana-agent"))
    wait_until(
        lambda: (
            _get(base + "/healthz", trusted, ("grafana-agent", "grafana-agent-password"))[0] == 200
        ),
        15,
        0.2,
        "the new user to be let in",
    )
    assert reload_metric() == 1

    # A key that does not match the certificate: refused, the last good pair is still served.
    _install(pki / "server.key", key)
    wait_until(lambda: reload_metric() == 0, 15, 0.2, "the refused change in the metric")
    assert _served_certificate(port, trusted) == "server-rotated"
    _install(rotated_key, key)
    wait_until(lambda: reload_metric() == 1, 15, 0.2, "the fixed change in the metric")

    # TLS cannot be turned off without a restart: refused, still served over TLS.
    path.write_text(users("prometheus"))
    wait_until(lambda: reload_metric() == 0, 15, 0.2, "TLS off refused")
    assert _served_certificate(port, trusted) == "server-rotated"
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10)


def test_a_web_config_caught_half_written_is_never_taken(tmp_path: Path) -> None:
    """A writer that truncates the file and then writes it can be caught in between, when the
    file parses without its users (basic auth off): a change is taken only once the files have
    stayed the same from one look to the next."""
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    users = f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    csp = "http_server_config:\n  headers: {Content-Security-Policy: %s}\n"
    path = _web_config(tmp_path, users + csp % "v1")
    watched = WatchedWebConfig(str(path))
    watched.CHECK_INTERVAL = 0  # look at every get(), as if a second had passed each time

    path.write_text(csp % "v2")  # half written
    first = watched.get()
    assert first.auth is not None and first.headers == {"Content-Security-Policy": "v1"}
    path.write_text(users + csp % "v2")  # done
    second = watched.get()  # changed again since the last look: still not taken
    assert second.auth is not None and second.headers == {"Content-Security-Policy": "v1"}
    third = watched.get()  # the same as at the last look: taken
    assert third.auth is not None and third.headers == {"Content-Security-Policy": "v2"}
    assert watched.last_change_loaded


def test_bad_web_config_names_every_problem(tmp_path: Path, capsys) -> None:
    path = _web_config(
        tmp_path,
        "tls_server_config:\n  cert_file: /nonexistent/server.crt\n  key_file: /nonexistent/k\n"
        "  cipher_suite: [TLS_AES_128_GCM_SHA256]\n"
        "basic_auth_users:\n  prometheus: plaintext-password\n",
    )
    with pytest.raises(ConfigError) as err:
        load_web_config(str(path))
    assert err.value.problems == [
        f"{path}: tls_server_config.cipher_suite: Extra inputs are not permitted"
    ]
    path.write_text(
        "tls_server_config:\n  cert_file: /nonexistent/server.crt\n  key_file: /nonexistent/k\n"
        "basic_auth_users:\n  prometheus: plaintext-password\n"
    )
    with pytest.raises(ConfigError) as err:
        load_web_config(str(path))
    assert err.value.problems == [
        f"{path}: basic_auth_users.prometheus: "
        "crypto/bcrypt: hashedSecret too short to be a bcrypted password",
        f"{path}: tls_server_config: failed to read cert_file (/nonexistent/server.crt): "
        "No such file or directory",
        f"{path}: tls_server_config: failed to read key_file (/nonexistent/k): "
        "No such file or directory",
    ]
    # The command line: exit 2, the file and key named, no traceback, no password echoed.
    # Problems of both files at once.
    bad = tmp_path / "config.yml"
    bad.write_text("targets: []\n")
    assert main(["--config.file", str(bad), "--web.config.file", str(path), "--check-config"]) == 2
    err_text = capsys.readouterr().err
    assert f"{bad}: targets: none: give targets, target_files or auth_modules" in err_text
    assert f"{path}: basic_auth_users.prometheus: crypto/bcrypt: hashedSecret too short" in err_text
    assert "plaintext-password" not in err_text
    assert "Traceback" not in err_text
