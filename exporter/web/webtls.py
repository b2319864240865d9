"""`tls_server_config` of `--web.config.file` as an `ssl.SSLContext`, setting by setting as
Prometheus exporter-toolkit (crypto/tls underneath) defines it.

What the toolkit refuses is refused with its reason; what it accepts is honoured; what Python
cannot honour is refused by name: Go's two client-certificate policies that ask for a
certificate without verifying it (`RequestClientCert`, `RequireAnyClientCert`) and more than
one curve in `curve_preferences`, which Python's `ssl` module cannot set (reaching past it
into OpenSSL's structures was tried and left out: a wrong guess there crashes the exporter).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import ssl
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from pydantic import Field

from exporter.config.model import StrictModel

# Go's crypto/tls CipherSuites() (what the toolkit accepts), with OpenSSL's names. The TLS 1.3
# suites are accepted and change nothing, in Go as here: TLS 1.3 suites are not configurable.
GO_CIPHER_SUITES: dict[str, str | None] = {
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
}
# Without cipher_suites: Go's default TLS 1.0-1.2 suites, in Go's order of preference.
GO_DEFAULT_SUITES = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA"
)
# Go's HTTP/2 server refuses a TLS 1.2 suite list without one of these.
HTTP2_REQUIRED_SUITES = (
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
)
# Go's curve names, with OpenSSL's.
GO_CURVES = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
}
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# client_auth_type -> (ask for a certificate, require one, verify it)
CLIENT_AUTH = {
    "": (False, False, False),
    "NoClientCert": (False, False, False),
    "RequestClientCert": (True, False, False),
    "RequireAnyClientCert": (True, True, False),
    "RequireClientCert": (True, True, False),  # the toolkit's older name of the one above
    "VerifyClientCertIfGiven": (True, False, True),
    "RequireAndVerifyClientCert": (True, True, True),
}
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.DOTALL
)


class TLSServerConfig(StrictModel):
    """The toolkit's keys, loosely typed: each is checked below with the toolkit's reason."""

    cert: str | None = None
    key: str | None = None
    client_ca: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None
    client_auth_type: str | None = None
    cipher_suites: list[str] | None = None
    curve_preferences: list[str] | None = None
    min_version: str | None = None
    max_version: str | None = None
    prefer_server_cipher_suites: bool = True
    client_allowed_sans: list[str] | None = Field(default=None)

    def enabled(self) -> bool:
        """The toolkit's test for TLS being on (its TLSConfig.IsEnabled)."""
        return any(
            (
                self.cert,
                self.key,
                self.client_ca,
                self.cert_file,
                self.key_file,
                self.client_ca_file,
                self.client_auth_type,
            )
        )


@dataclass(frozen=True)
class ServerTLS:
    """A ready context, the files it was read from, and the SANs a client must show."""

    context: ssl.SSLContext
    files: tuple[Path, ...]
    allowed_sans: frozenset[str] | None = None

    def refuses(self, sock: ssl.SSLObject | ssl.SSLSocket) -> str | None:
        """Why a client that completed its handshake is turned away (client_allowed_sans), or
        None. As with the toolkit, a client without a certificate is turned away too."""
        if self.allowed_sans is None:
            return None
        cert = sock.getpeercert()
        if not cert:
            return "no client certificate"
        # typeshed types every value of the certificate dict alike; this one is (kind, value) pairs.
        alt_names = cast("tuple[tuple[str, str], ...]", cert.get("subjectAltName", ()))
        sans = {_san(kind, value) for kind, value in alt_names}
        if sans & self.allowed_sans:
            return None
        return "no allowed SAN in the client certificate"


def _san(kind: str, value: str) -> str:
    """A SAN as Go prints it: an IP address in its short form."""
    if kind == "IP Address":
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_address(value.strip()))
    return value


def server_tls(
    tls: TLSServerConfig, base: Path, http2: bool, where: str, problems: list[str]
) -> ServerTLS | None:
    """The context for `tls` (paths relative to `base`, the web config's directory), or None
    with the reasons added to `problems`."""
    before = len(problems)
    if not tls.cert_file and not tls.cert:
        problems.append(f"{where}: missing one of cert or cert_file")
    if not tls.key_file and not tls.key:
        problems.append(f"{where}: missing one of key or key_file")
    versions = []
    for name, value, default in (
        ("min_version", tls.min_version, "TLS12"),
        ("max_version", tls.max_version, "TLS13"),
    ):
        version = TLS_VERSIONS.get(default if value is None else value)
        if version is None:
            problems.append(f"{where}.{name}: unknown TLS version: {value}")
        versions.append(version)
    minimum, maximum = versions
    if minimum is not None and maximum is not None and minimum > maximum:
        problems.append(f"{where}: min_version is above max_version: no client could connect")
    policy = CLIENT_AUTH.get(tls.client_auth_type or "")
    if policy is None:
        problems.append(f"{where}.client_auth_type: invalid ClientAuth: {tls.client_auth_type}")
    has_ca = bool(tls.client_ca_file or tls.client_ca)
    if policy is not None and not policy[0] and tls.client_allowed_sans is not None:
        problems.append(
            f"{where}.client_allowed_sans: needs a client_auth_type that asks for a client "
            f"certificate, not {tls.client_auth_type or 'NoClientCert'} (exporter-toolkit "
            "would ignore it)"
        )
    suites, minimum = _cipher_list(tls, minimum, maximum, http2, where, problems)
    groups = _curves(tls.curve_preferences, where, problems)
    if len(problems) > before or minimum is None or maximum is None or policy is None:
        return None

    files: list[Path] = []

    def read(name: str, path: str | None, inline: str | None) -> bytes | None:
        if not path:
            return (inline or "").encode()
        resolved = base / path  # an absolute path stays as it is
        files.append(resolved)
        try:
            return resolved.read_bytes()
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
            reason = getattr(exc, "strerror", None) or exc
            problems.append(f"{where}: failed to read {name} ({resolved}): {reason}")
            return None

    cert = read("cert_file", tls.cert_file, tls.cert)
    key = read("key_file", tls.key_file, tls.key)
    ca = read("client_ca_file", tls.client_ca_file, tls.client_ca) if has_ca else None
    if cert is None or key is None or (has_ca and ca is None):
        return None
    if has_ca and not policy[0]:  # the toolkit's order: the files are read first
        problems.append(
            f"{where}: client CA's have been configured without a Client Auth Policy "
            "(set client_auth_type, e.g. RequireAndVerifyClientCert)"
        )
        return None

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():  # TLS 1.0 and 1.1 are deprecated, and still the toolkit's
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = minimum
        context.maximum_version = maximum
    context.set_ciphers(suites)
    if not tls.prefer_server_cipher_suites:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if len(groups) > 1:
        problems.append(
            f"{where}.curve_preferences: more than one curve cannot be set with Python's ssl "
            "module; give one"
        )
        return None
    if groups:
        context.set_ecdh_curve(groups[0])  # TLS 1.2 and 1.3 alike
    if not _load_key_pair(context, cert, key, where, problems):
        return None
    ask, require, verify = policy
    if ca is not None:
        for block in _PEM_CERTIFICATE.findall(ca):
            # As Go's AppendCertsFromPEM: what is not a certificate is skipped (and an empty
            # pool verifies no client).
            with contextlib.suppress(ssl.SSLError, ValueError):
                context.load_verify_locations(cadata=block.decode("ascii", "replace"))
    if verify:
        context.verify_mode = ssl.CERT_REQUIRED if require else ssl.CERT_OPTIONAL
        if ca is None:  # no client CA: the system's trusted CAs, as Go does
            context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    elif ask:
        problems.append(
            f"{where}.client_auth_type: {tls.client_auth_type} (a client certificate asked "
            "for but not verified) cannot be set with Python's ssl module; use "
            "RequireAndVerifyClientCert or VerifyClientCertIfGiven"
        )
        return None
    sans = None if tls.client_allowed_sans is None else frozenset(tls.client_allowed_sans)
    return ServerTLS(context, tuple(files), sans)


def _cipher_list(
    tls: TLSServerConfig,
    minimum: ssl.TLSVersion | None,
    maximum: ssl.TLSVersion | None,
    http2: bool,
    where: str,
    problems: list[str],
) -> tuple[str, ssl.TLSVersion | None]:
    """OpenSSL's cipher string for TLS 1.0-1.2 (TLS 1.3's suites are not configurable), and
    the lowest TLS version a client can then connect with."""
    names = tls.cipher_suites or []
    unknown = [n for n in names if n not in GO_CIPHER_SUITES]
    for name in unknown:
        problems.append(f"{where}.cipher_suites: unknown cipher: {name}")
    if unknown or minimum is None or maximum is None:
        return "", minimum
    needs_http2_suite = names and http2 and minimum < ssl.TLSVersion.TLSv1_3
    if needs_http2_suite and not any(n in HTTP2_REQUIRED_SUITES for n in names):
        problems.append(
            f"{where}.cipher_suites: TLSConfig.CipherSuites is missing an HTTP/2-required "
            "AES_128_GCM_SHA256 cipher (need at least one of "
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 or "
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256), or set http_server_config.http2: false"
        )
        return "", minimum
    openssl = [s for s in (GO_CIPHER_SUITES[n] for n in names) if s is not None]
    suites = ":".join(openssl) if openssl else GO_DEFAULT_SUITES
    if names and not openssl:
        # Only TLS 1.3 suites: Go then has no TLS 1.2 suite in common with any client.
        if maximum < ssl.TLSVersion.TLSv1_3:
            problems.append(
                f"{where}.cipher_suites: only TLS 1.3 suites, and max_version below TLS13: "
                "no client could connect"
            )
        minimum = ssl.TLSVersion.TLSv1_3
    # TLS 1.0 and 1.1 sign with SHA-1, which OpenSSL allows only at security level 0.
    if minimum < ssl.TLSVersion.TLSv1_2:
        suites += ":@SECLEVEL=0"
    return suites, minimum


def _curves(names: list[str] | None, where: str, problems: list[str]) -> list[str]:
    groups = []
    for name in names or []:
        group = GO_CURVES.get(name)
        if group is None:
            problems.append(f"{where}.curve_preferences: unknown curve: {name}")
        else:
            groups.append(group)
    return groups


def _load_key_pair(
    context: ssl.SSLContext, cert: bytes, key: bytes, where: str, problems: list[str]
) -> bool:
    """load_cert_chain reads files only: the PEM (from a file or inline) goes through a
    private temporary directory, removed at once."""
    with tempfile.TemporaryDirectory(prefix="pgce-tls-") as d:
        cert_path, key_path = Path(d, "cert.pem"), Path(d, "key.pem")
        for path, data in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        try:
            context.load_cert_chain(cert_path, key_path, password=_no_password)
        except (ssl.SSLError, ValueError, OSError) as exc:
            problems.append(f"{where}: failed to load X509KeyPair: {exc}")
            return False
    return True


def _no_password() -> bytes:
    """An encrypted key is refused (as Go's X509KeyPair does) instead of OpenSSL prompting
    for its password on the terminal."""
    raise ValueError("the private key is encrypted")
