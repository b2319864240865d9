"""--web.config.file: TLS and basic auth on every path, and clear errors for a bad file."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest

from exporter.cli import main
from exporter.config import ConfigError
from exporter.localpg import LocalCluster
from exporter.webconfig import load_web_config
from tests.conftest import require_program

PATHS = ("/metrics", "/", "/healthz")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(
        [require_program("openssl"), *args], cwd=cwd, check=True, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.crt", cwd=d,
    )  # fmt: skip
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d,
        )  # fmt: skip
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt",
            cwd=d,
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
    running = exporter_for({"targets": [{"name": "pg", "dsn": pg.dsn()}]}, load_web_config(path))
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
    running = exporter_for({"targets": [{"name": "pg", "dsn": pg.dsn()}]}, load_web_config(path))
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
    running = exporter_for({"targets": [{"name": "pg", "dsn": pg.dsn()}]}, load_web_config(path))
    # A client that connects and never starts its handshake holds only its own thread.
    with socket.create_connection(("127.0.0.1", running.exporter.port)):
        trusted = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        url = f"https://127.0.0.1:{running.exporter.port}/healthz"
        assert _get(url, trusted) == (200, "ok\n")


def test_bad_web_config_names_every_problem(tmp_path: Path, capsys) -> None:
    path = _web_config(
        tmp_path,
        "tls_server_config:\n  cert_file: /nonexistent/server.crt\n  key_file: /nonexistent/k\n"
        "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"
        "basic_auth_users:\n  prometheus: plaintext-password\n",
    )
    with pytest.raises(ConfigError) as err:
        load_web_config(str(path))
    assert err.value.problems == [
        f"{path}: tls_server_config.cipher_suites: Extra inputs are not permitted"
    ]
    path.write_text(
        "tls_server_config:\n  cert_file: /nonexistent/server.crt\n  key_file: /nonexistent/k\n"
        "basic_auth_users:\n  prometheus: plaintext-password\n"
    )
    with pytest.raises(ConfigError) as err:
        load_web_config(str(path))
    assert err.value.problems[0] == f"{path}: basic_auth_users.prometheus: not a bcrypt hash"
    assert err.value.problems[1].startswith(
        f"{path}: tls_server_config.cert_file: cannot load /nonexistent/server.crt"
    )
    # The command line: exit 2, the file and key named, no traceback, no password echoed.
    # Problems of both files at once.
    bad = tmp_path / "config.yml"
    bad.write_text("targets: []\n")
    assert main(["--config.file", str(bad), "--web.config.file", str(path), "--check-config"]) == 2
    err_text = capsys.readouterr().err
    assert f"{bad}: targets: List should have at least 1 item" in err_text
    assert f"{path}: basic_auth_users.prometheus: not a bcrypt hash" in err_text
    assert "plaintext-password" not in err_text
    assert "Traceback" not in err_text
