"""--web.config.file as Prometheus exporter-toolkit defines it, case by case from its tests'
tables (web/tls_config_test.go, web/handler_test.go) and docs/web-configuration.md: what it
refuses is refused with its reason; what it accepts is honoured, checked with a real TLS client
against the exporter's own HTTP server. Our certificates, our files."""

from __future__ import annotations

import base64
import http.client
import shutil
import ssl
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest

from exporter.config.errors import ConfigError
from exporter.web.webconfig import WatchedWebConfig, load_web_config
from harness.localpg import LocalCluster, free_port
from tests import test_webconfig
from tests.helpers import Samples, wait_until

pki = test_webconfig.pki  # the fixture: the test CAs and certificates

HASH = bcrypt.hashpw(b"right-password", bcrypt.gensalt(rounds=4)).decode()
TLS = "tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n"


def _write(tmp_path: Path, text: str, name: str = "web.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_web_config(str(path))
    return err.value.problems


# --- refused, with the toolkit's reason ---------------------------------------------------------

REFUSED = {
    # a client CA never means "no client certificates"
    "client CA, no client_auth_type": (
        TLS + "  client_ca_file: {pki}/ca.crt\n",
        "client CA's have been configured without a Client Auth Policy",
    ),
    "client CA with NoClientCert": (
        TLS + "  client_ca_file: {pki}/ca.crt\n  client_auth_type: NoClientCert\n",
        "client CA's have been configured without a Client Auth Policy",
    ),
    "inline client CA, no client_auth_type": (
        TLS + "  client_ca: |\n    -----BEGIN CERTIFICATE-----\n    x\n",
        "client CA's have been configured without a Client Auth Policy",
    ),
    "client CA file missing": (
        TLS + "  client_ca_file: somefile\n  client_auth_type: RequireAndVerifyClientCert\n",
        "failed to read client_ca_file ({dir}/somefile): No such file or directory",
    ),
    "truncated bcrypt hash": (
        "basic_auth_users:\n  alice: '" + HASH[:40] + "'\n",
        "basic_auth_users.alice: crypto/bcrypt: hashedSecret too short to be a bcrypted password",
    ),
    "a password instead of its hash": (
        "basic_auth_users:\n  john: doe\n",
        "basic_auth_users.john: crypto/bcrypt: hashedSecret too short to be a bcrypted password",
    ),
    "bcrypt cost out of range": (
        "basic_auth_users:\n  alice: '$2y$03" + HASH[6:] + "'\n",
        "basic_auth_users.alice: crypto/bcrypt: cost 3 is outside allowed range (4,31)",
    ),
    "X-Frame-Options: foo": (
        "http_server_config:\n  headers:\n    X-Frame-Options: foo\n",
        'invalid value for X-Frame-Options. Expected one of: ["deny" "sameorigin"], but got: "foo"',
    ),
    "X-Content-Type-Options: sniff": (
        "http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n",
        'invalid value for X-Content-Type-Options. Expected one of: ["nosniff"], but got: "sniff"',
    ),
    "Content-Type header": (
        "http_server_config:\n  headers:\n    Content-Type: foo\n",
        'HTTP header "Content-Type" can not be configured',
    ),
    "cert_file and key_file empty": (
        "tls_server_config:\n  cert_file: ''\n  key_file: ''\n  client_auth_type: x\n",
        "missing one of cert or cert_file",
    ),
    "cert empty": (
        "tls_server_config:\n  cert: ''\n  key_file: {pki}/server.key\n",
        "missing one of cert or cert_file",
    ),
    "key_file empty": (
        "tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: ''\n",
        "missing one of key or key_file",
    ),
    "key empty": (
        "tls_server_config:\n  cert_file: {pki}/server.crt\n  key: ''\n",
        "missing one of key or key_file",
    ),
    "cert_file missing": (
        "tls_server_config:\n  cert_file: somefile\n  key_file: {pki}/server.key\n",
        "failed to read cert_file ({dir}/somefile): No such file or directory",
    ),
    "key_file missing": (
        "tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: somefile\n",
        "failed to read key_file ({dir}/somefile): No such file or directory",
    ),
    "key of another certificate": (
        "tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/client.key\n",
        "failed to load X509KeyPair",
    ),
    "invalid client_auth_type": (
        TLS + "  client_auth_type: Whatever\n",
        "invalid ClientAuth: Whatever",
    ),
    "unknown cipher": (
        TLS + "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA2048]\n",
        "unknown cipher: TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA2048",
    ),
    "an insecure cipher Go leaves out of CipherSuites()": (
        TLS + "  cipher_suites: [TLS_RSA_WITH_AES_128_GCM_SHA256]\n",
        "unknown cipher: TLS_RSA_WITH_AES_128_GCM_SHA256",
    ),
    "unknown curve": (
        TLS + "  curve_preferences: [CurveP257]\n",
        "unknown curve: CurveP257",
    ),
    "unknown TLS version": (
        TLS + "  min_version: TLS111\n",
        "unknown TLS version: TLS111",
    ),
    "TLS 1.2 suites without HTTP/2's, HTTP/2 on": (
        TLS + "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]\n  max_version: TLS12\n",
        "TLSConfig.CipherSuites is missing an HTTP/2-required AES_128_GCM_SHA256 cipher",
    ),
    # What Python's ssl module cannot do: refused by name, never accepted and ignored.
    **{
        f"{policy}: a certificate asked for, not verified": (
            TLS + f"  client_auth_type: {policy}\n",
            f"client_auth_type: {policy} (a client certificate asked for but not verified) "
            "cannot be set with Python's ssl module",
        )
        for policy in ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
    },
    "more than one curve": (
        TLS + "  curve_preferences: [CurveP384, X25519]\n",
        "curve_preferences: more than one curve cannot be set with Python's ssl module",
    ),
    "misspelt key": (
        "tls_server_config:\n  cert_filse: server.crt\n",
        "tls_server_config.cert_filse: Extra inputs are not permitted",
    ),
    "rate_limit interval": (
        "rate_limit:\n  interval: 1 second\n  burst: 1\n",
        'rate_limit.interval: time: invalid duration "1 second"',
    ),
    # Where the toolkit would accept and ignore: refused by name here.
    "client_allowed_sans without a client certificate asked for": (
        TLS + "  client_allowed_sans: [scraper.example]\n",
        "client_allowed_sans: needs a client_auth_type that asks for a client certificate",
    ),
    "TLS settings without a certificate": (
        "tls_server_config:\n  min_version: TLS13\n",
        "tls_server_config: missing one of cert or cert_file",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_with_the_toolkits_reason(case: str, pki: Path, tmp_path: Path) -> None:
    text, reason = REFUSED[case]
    path = _write(tmp_path, text.format(pki=pki))
    problems = _problems(path)
    assert any(reason.format(dir=tmp_path) in p for p in problems), problems
    assert all(p.startswith(f"{path}: ") for p in problems), problems
    assert HASH[7:] not in "".join(problems)  # a hash (or password) is never quoted


# --- accepted and honoured ----------------------------------------------------------------------


def _context(
    pki: Path,
    cert: str | None = None,
    *,
    max_version: ssl.TLSVersion | None = None,
    min_version: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
    curve: str | None = None,
) -> ssl.SSLContext:
    """A client trusting the test CA, with a client certificate `cert` when given."""
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert is not None:
        context.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if min_version is not None:
            context.minimum_version = min_version
        if max_version is not None:
            context.maximum_version = max_version
    if ciphers is not None:
        context.set_ciphers(ciphers)
    if curve is not None:
        context.set_ecdh_curve(curve)
    return context


def _request(
    port: int,
    context: ssl.SSLContext | None,
    path: str = "/healthz",
    auth: tuple[str, str] | None = None,
) -> tuple[int, http.client.HTTPMessage, str | None]:
    """(status, headers, negotiated cipher); raises OSError when the connection fails."""
    if context is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    headers = {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        sock = conn.sock
        cipher = sock.cipher()[0] if isinstance(sock, ssl.SSLSocket) else None
        return response.status, response.headers, cipher
    finally:
        conn.close()


def _status(port: int, context: ssl.SSLContext | None, **kw) -> int | str:
    """The status, or "refused" when the TLS connection fails."""
    try:
        return _request(port, context, **kw)[0]
    except OSError:
        return "refused"


@pytest.fixture
def serve(exporter_for, tmp_path: Path) -> Callable[[str], int]:
    """Start the exporter with a web config of this text; its port. Its target's server is
    down (what is tested is the HTTP side: /healthz answers all the same)."""
    down = f"host=127.0.0.1 port={free_port()} connect_timeout=2"

    def start(text: str) -> int:
        path = _write(tmp_path, text)
        running = exporter_for(
            {"targets": [{"name": "pg", "dsn": down}]}, WatchedWebConfig(str(path))
        )
        return running.exporter.port

    return start


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # policy: without a certificate, one from the client CA, one from another CA, self-signed
        ("VerifyClientCertIfGiven", (200, 200, "refused", "refused")),
        ("RequireAndVerifyClientCert", ("refused", 200, "refused", "refused")),
    ],
)
def test_client_certificate_policies(
    policy: str, expected: tuple, serve, pki: Path, tmp_path: Path
) -> None:
    ca = "" if "Verify" not in policy else f"  client_ca_file: {pki}/ca.crt\n"
    port = serve(TLS.format(pki=pki) + f"  client_auth_type: {policy}\n" + ca)
    got = tuple(
        _status(port, _context(pki, cert))
        for cert in (None, "client", "other-client", "self-signed")
    )
    assert got == expected


def test_verified_client_certificates_without_a_client_ca_use_the_system_cas(
    serve, pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The toolkit accepts VerifyClientCertIfGiven / RequireAndVerifyClientCert without
    client_ca_file: Go verifies the client with the system's trusted CAs. OpenSSL's system CA
    file is SSL_CERT_FILE here: our test CA plays the system's."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki / "ca.crt"))
    port = serve(TLS.format(pki=pki) + "  client_auth_type: RequireAndVerifyClientCert\n")
    assert _status(port, _context(pki)) == "refused"
    assert _status(port, _context(pki, "client")) == 200
    assert _status(port, _context(pki, "other-client")) == "refused"


@pytest.mark.parametrize(
    ("allowed", "expected"),
    [
        ("[one, scraper.example, two]", 200),  # a DNS name
        ("['::1']", 200),  # an IP address, as Go prints it
        ("[spiffe://example/scraper]", 200),  # a URI
        ("[ops@example.com]", 200),  # an e-mail address
        ("[bad]", "refused"),
        ("[client]", "refused"),  # the subject's CN is not a SAN
    ],
)
def test_client_allowed_sans(allowed: str, expected: int | str, serve, pki: Path) -> None:
    port = serve(
        TLS.format(pki=pki) + f"  client_auth_type: RequireAndVerifyClientCert\n"
        f"  client_ca_file: {pki}/ca.crt\n  client_allowed_sans: {allowed}\n"
    )
    assert _status(port, _context(pki, "client")) == expected


def test_client_allowed_sans_turn_away_a_client_without_a_certificate(serve, pki: Path) -> None:
    port = serve(
        TLS.format(pki=pki) + f"  client_auth_type: VerifyClientCertIfGiven\n"
        f"  client_ca_file: {pki}/ca.crt\n  client_allowed_sans: [scraper.example]\n"
    )
    assert _status(port, _context(pki)) == "refused"
    assert _status(port, _context(pki, "client")) == 200


def test_relative_paths_are_the_config_files_and_inline_pem_works(
    serve, pki: Path, tmp_path: Path
) -> None:
    """cert_file, key_file and client_ca_file relative to the web config's directory (not the
    working directory); and the certificate and key inline (toolkit 0.11)."""
    for name in ("server.crt", "server.key", "ca.crt"):
        shutil.copyfile(pki / name, tmp_path / name)
    port = serve(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
    )
    assert _status(port, _context(pki, "client")) == 200
    assert _status(port, _context(pki)) == "refused"

    def block(name: str) -> str:
        return "".join(f"    {line}\n" for line in (pki / name).read_text().splitlines())

    inline = serve(
        "tls_server_config:\n  cert: |\n" + block("server.crt") + "  key: |\n" + block("server.key")
    )
    assert _status(inline, _context(pki)) == 200


def test_tls_versions(serve, pki: Path) -> None:
    v = ssl.TLSVersion
    default = serve(TLS.format(pki=pki))
    assert _status(default, _context(pki, max_version=v.TLSv1_1, min_version=v.TLSv1)) == (
        "refused"
    )
    assert _status(default, _context(pki, max_version=v.TLSv1_2)) == 200
    assert _status(default, _context(pki, min_version=v.TLSv1_3)) == 200
    only13 = serve(TLS.format(pki=pki) + "  min_version: TLS13\n")
    assert _status(only13, _context(pki, max_version=v.TLSv1_2)) == "refused"
    assert _status(only13, _context(pki, min_version=v.TLSv1_3)) == 200
    only12 = serve(TLS.format(pki=pki) + "  max_version: TLS12\n")
    assert _status(only12, _context(pki, min_version=v.TLSv1_3)) == "refused"
    assert _status(only12, _context(pki, max_version=v.TLSv1_2)) == 200
    # TLS 1.1 when the file allows it (OpenSSL needs security level 0 for it, on both sides).
    old = serve(TLS.format(pki=pki) + "  min_version: TLS11\n")
    tls11 = _context(pki, max_version=v.TLSv1_1, min_version=v.TLSv1, ciphers="DEFAULT:@SECLEVEL=0")
    assert _status(old, tls11) == 200


def test_cipher_suites_for_tls12(serve, pki: Path) -> None:
    some = (
        "  cipher_suites:\n  - TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\n"
        "  - TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\n  min_version: TLS12\n  max_version: TLS12\n"
    )
    both = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"  # the client's order
    port = serve(TLS.format(pki=pki) + some)
    assert _request(port, _context(pki, ciphers="ECDHE-RSA-AES128-GCM-SHA256"))[2] == (
        "ECDHE-RSA-AES128-GCM-SHA256"
    )
    assert _status(port, _context(pki, ciphers="ECDHE-RSA-AES256-SHA")) == "refused"
    # prefer_server_cipher_suites (default true): the server's order decides, else the client's
    assert _request(port, _context(pki, ciphers=both))[2] == "ECDHE-RSA-AES256-GCM-SHA384"
    client_order = serve(TLS.format(pki=pki) + some + "  prefer_server_cipher_suites: false\n")
    assert _request(client_order, _context(pki, ciphers=both))[2] == "ECDHE-RSA-AES128-GCM-SHA256"
    # Without HTTP/2, a list without its required suite is fine.
    no_http2 = serve(
        TLS.format(pki=pki) + "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]\n"
        "  max_version: TLS12\nhttp_server_config:\n  http2: false\n"
    )
    assert _request(no_http2, _context(pki))[2] == "ECDHE-RSA-AES256-GCM-SHA384"


def test_curve_preferences(serve, pki: Path) -> None:
    one = serve(TLS.format(pki=pki) + "  min_version: TLS13\n  curve_preferences: [CurveP521]\n")
    assert _status(one, _context(pki, curve="secp521r1")) == 200
    assert _status(one, _context(pki, curve="secp384r1")) == "refused"
    tls12 = serve(TLS.format(pki=pki) + "  max_version: TLS12\n  curve_preferences: [X25519]\n")
    assert _status(tls12, _context(pki, curve="X25519")) == 200
    assert _status(tls12, _context(pki, curve="prime256v1")) == "refused"


def test_headers_and_basic_auth(serve, pki: Path) -> None:
    """The toolkit's good headers (X-XSS-Protection: 1 is a YAML integer), on every answer;
    basic auth with right and wrong passwords and users."""
    port = serve(
        TLS.format(pki=pki) + f"basic_auth_users:\n  alice: '{HASH}'\n"
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
        "    Strict-Transport-Security: max-age=31536000; includeSubDomains\n"
        "    X-Content-Type-Options: nosniff\n    X-XSS-Protection: 1\n"
        "    Content-Security-Policy: \"default-src 'self' *.test.example.net\"\n"
    )
    context = _context(pki)
    status, headers, _ = _request(port, context, "/metrics", ("alice", "right-password"))
    assert status == 200
    assert headers["X-Frame-Options"] == "deny"
    assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-XSS-Protection"] == "1"
    assert headers["Content-Security-Policy"] == "default-src 'self' *.test.example.net"
    assert len(headers.get_all("Content-Type")) == 1
    for auth in (None, ("alice", "wrong"), ("bob", "right-password"), ("alice", "")):
        assert _request(port, context, "/metrics", auth)[0] == 401, auth


def test_rate_limit(serve) -> None:
    """A token bucket of `burst` requests, one more every `interval`: beyond, 429 on every
    path, before basic auth. Burst 0 lets nothing through (the toolkit's own test); interval
    0 is no limit."""
    burst = serve(f"rate_limit:\n  interval: 1h\n  burst: 3\nbasic_auth_users:\n  a: '{HASH}'\n")
    assert [_status(burst, None, auth=("a", "right-password")) for _ in range(3)] == [200] * 3
    assert _status(burst, None, auth=("a", "right-password")) == 429
    assert _status(burst, None, path="/metrics") == 429
    assert _status(serve("rate_limit:\n  interval: 1s\n  burst: 0\n"), None) == 429
    unlimited = serve("rate_limit:\n  interval: 0\n  burst: 0\n")
    assert [_status(unlimited, None) for _ in range(10)] == [200] * 10
    refill = serve("rate_limit:\n  interval: 1500ms\n  burst: 1\n")
    assert [_status(refill, None) for _ in range(2)] == [200, 429]
    wait_until(lambda: _status(refill, None) == 200, 10, 0.1, "a token after 1.5s")


def test_hot_reload_from_one_file_to_another_under_load(
    exporter_for, pg: LocalCluster, pki: Path, tmp_path: Path
) -> None:
    """While a scraper with a client certificate keeps scraping, the file changes from
    RequireAndVerifyClientCert with user alice to VerifyClientCertIfGiven with users alice and
    bob and other headers; then to a file with problems (refused, the last good one stays).
    No request of the scraper's fails; the new file's rules apply from a moment on."""
    alice = f"  alice: '{HASH}'\n"
    bob = f"  bob: '{HASH}'\n"
    first = (
        TLS.format(pki=pki) + f"  client_auth_type: RequireAndVerifyClientCert\n"
        f"  client_ca_file: {pki}/ca.crt\nbasic_auth_users:\n{alice}"
        "http_server_config:\n  headers: {X-Frame-Options: deny}\n"
    )
    second = (
        TLS.format(pki=pki) + f"  client_auth_type: VerifyClientCertIfGiven\n"
        f"  client_ca_file: {pki}/ca.crt\nbasic_auth_users:\n{alice}{bob}"
        "http_server_config:\n  headers:\n    X-Frame-Options: sameorigin\n"
    )
    path = _write(tmp_path, first)
    running = exporter_for(
        {"targets": [{"name": "pg", "dsn": pg.dsn()}]}, WatchedWebConfig(str(path))
    )
    port = running.exporter.port
    scraper = _context(pki, "client")
    seen: list[list[str]] = [[] for _ in range(3)]  # each scraper's X-Frame-Options, in order
    failures: list[object] = []
    stop = threading.Event()

    def scrape(mine: list[str]) -> None:
        while not stop.is_set():
            try:
                status, headers, _ = _request(
                    port, scraper, "/metrics", ("alice", "right-password")
                )
            except OSError as exc:
                failures.append(exc)
                continue
            if status != 200:
                failures.append(status)
            mine.append(headers["X-Frame-Options"])

    def scrapes() -> int:
        return sum(len(mine) for mine in seen)

    threads = [threading.Thread(target=scrape, args=(mine,)) for mine in seen]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: scrapes() >= 10, 30, 0.05, "scrapes under the first file")
        assert _status(port, _context(pki), auth=("alice", "right-password")) == "refused"
        assert _status(port, scraper, auth=("bob", "right-password")) == 401
        path.write_text(second)
        wait_until(
            lambda: all(mine and mine[-1] == "sameorigin" for mine in seen),
            30,
            0.05,
            "the second file's header",
        )
        assert _status(port, _context(pki), auth=("bob", "right-password")) == 200
        # A change with a problem: refused, the second file stays in force, said by a metric.
        path.write_text(second + "    Content-Type: text/html\n")
        wait_until(lambda: _reload_successful(port, scraper) == 0, 30, 0.2, "the refused change")
        assert _status(port, _context(pki), auth=("bob", "right-password")) == 200
        count = scrapes()
        wait_until(lambda: scrapes() > count + 10, 30, 0.05, "more scrapes")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    for mine in seen:  # once the second file is seen, never the first again
        changed = mine.index("sameorigin")
        assert set(mine[:changed]) == {"deny"} and set(mine[changed:]) == {"sameorigin"}


def _reload_successful(port: int, context: ssl.SSLContext) -> float:
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    token = base64.b64encode(b"bob:right-password").decode()
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Basic {token}"})
        response = conn.getresponse()
        body = response.read().decode()
    finally:
        conn.close()
    assert response.status == 200, response.status
    return Samples(body).value("pg_connections_exporter_web_config_last_reload_successful")
