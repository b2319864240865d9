"""`--web.config.file`: TLS and basic auth in the Prometheus exporter-toolkit format.

The same file an operator already writes for node_exporter or postgres_exporter works here,
for the keys this server can honour; any other key is refused by name rather than ignored,
so a setting that looks active never silently is not. Like exporter-toolkit, which reads the
file on every connection, a changed file (or certificate, key or CA file it names) applies
without a restart: rotated certificates and new users take effect as requests arrive.
"""

from __future__ import annotations

import hmac
import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import bcrypt
from pydantic import Field, ValidationError, model_validator

from exporter.config.errors import ConfigError
from exporter.config.model import StrictModel, validation_problems
from exporter.config.safeyaml import load_yaml_file

log = logging.getLogger(__name__)

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLSVersion = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
# A web config is a few lines: anything near this is a wrong path.
MAX_WEB_CONFIG_BYTES = 1 << 20


class TLSServerConfig(StrictModel):
    cert_file: Path
    key_file: Path
    client_auth_type: Literal[
        "NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"
    ] = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: TLSVersion = "TLS12"
    max_version: TLSVersion = "TLS13"

    @model_validator(mode="after")
    def _consistent(self) -> TLSServerConfig:
        if self.client_auth_type != "NoClientCert" and self.client_ca_file is None:
            raise ValueError(f"client_auth_type {self.client_auth_type} needs client_ca_file")
        if _TLS_VERSIONS[self.min_version] > _TLS_VERSIONS[self.max_version]:
            raise ValueError("min_version is above max_version")
        return self


class HTTPServerConfig(StrictModel):
    headers: dict[str, str] = {}
    http2: bool = True  # accepted for compatibility; this server speaks HTTP/1.1 only


class WebConfigFile(StrictModel):
    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig = HTTPServerConfig()
    basic_auth_users: dict[str, str] = Field(default_factory=dict)


@dataclass
class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes; a success is remembered (as a
    keyed digest, never the password) so that bcrypt's cost is paid once per credential."""

    users: dict[str, bytes]
    _accepted: set[bytes] = field(default_factory=set)
    _key: bytes = field(default_factory=lambda: os.urandom(32))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, user: str, password: str) -> bool:
        digest = hmac.new(self._key, f"{user}\0{password}".encode(), "sha256").digest()
        with self._lock:
            if digest in self._accepted:
                return True
        hashed = self.users.get(user)
        # An unknown user costs the same bcrypt round, so timing does not reveal user names.
        candidate = hashed if hashed is not None else _DUMMY_HASH
        try:
            ok = bcrypt.checkpw(password.encode(), candidate) and hashed is not None
        except ValueError:  # a password longer than bcrypt's 72 bytes
            ok = False
        if ok:
            with self._lock:
                if len(self._accepted) > 1000:
                    self._accepted.clear()
                self._accepted.add(digest)
        return ok


_DUMMY_HASH = bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=10))


@dataclass(frozen=True)
class WebConfig:
    """What the HTTP server enforces: TLS (a ready context) and basic auth, plus headers."""

    ssl_context: ssl.SSLContext | None = None
    auth: BasicAuth | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # What it was read from: the web config file, then the TLS files it names.
    files: tuple[Path, ...] = ()


NO_WEB_CONFIG = WebConfig()  # without --web.config.file: plain HTTP, no auth


def load_web_config(path: str) -> WebConfig:
    """Read and check a web config file; one `ConfigError` names every problem."""
    source = str(path)
    data = load_yaml_file(path, source, MAX_WEB_CONFIG_BYTES) or {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: (top level): expected a mapping"])
    try:
        spec = WebConfigFile.model_validate(data)
    except ValidationError as err:
        raise ConfigError(validation_problems(err, source)) from None
    problems: list[str] = []
    users: dict[str, bytes] = {}
    for user, hashed in spec.basic_auth_users.items():
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            problems.append(f"{source}: basic_auth_users.{user}: not a bcrypt hash")
        else:
            users[user] = hashed.encode()
    context = None
    if spec.tls_server_config is not None:
        context = _ssl_context(spec.tls_server_config, source, problems)
    if problems:
        raise ConfigError(problems)
    auth = BasicAuth(users) if users else None
    files = [Path(path)]
    if (tls := spec.tls_server_config) is not None:
        files += [
            tls.cert_file,
            tls.key_file,
            *([tls.client_ca_file] if tls.client_ca_file else []),
        ]
    return WebConfig(context, auth, dict(spec.http_server_config.headers), tuple(files))


class WatchedWebConfig:
    """A web config file, read again when it or a TLS file it names changes (checked as
    requests arrive, at most once a second) and has then stayed unchanged for a check: a file
    caught half-written (which could parse without its basic_auth_users) is never taken, and a
    certificate and key replaced one after the other are taken together. A change with
    problems is logged and the previous web config stays in force, as does one that turns TLS
    on or off (the listener is made at start); `last_change_loaded` tells which happened last."""

    CHECK_INTERVAL = 1.0

    def __init__(self, path: str) -> None:
        """Raises ConfigError, as load_web_config does."""
        self.path = path
        self._current = load_web_config(path)
        self._signature = _signature(self._current.files)
        self._changing: tuple[tuple[int, int, int] | None, ...] | None = None
        self._checked = time.monotonic()
        self._lock = threading.Lock()
        self.last_change_loaded = True

    def get(self) -> WebConfig:
        """The web config in force, after a look at the files if it is time for one."""
        if time.monotonic() - self._checked >= self.CHECK_INTERVAL:
            with self._lock:
                if time.monotonic() - self._checked >= self.CHECK_INTERVAL:
                    self._check()
                    self._checked = time.monotonic()
        return self._current

    def _check(self) -> None:
        signature = _signature(self._current.files)
        if signature == self._signature:
            self._changing = None
            return
        if signature != self._changing:  # still being written, perhaps: look again next time
            self._changing = signature
            return
        # Tried once per change: a refused one is tried again when the files change again.
        self._signature, self._changing = signature, None
        try:
            new = load_web_config(self.path)
        except ConfigError as exc:
            self._refuse("; ".join(exc.problems))
            return
        if (new.ssl_context is None) != (self._current.ssl_context is None):
            self._refuse(f"{self.path}: turning TLS on or off needs a restart")
            return
        if new.files != self._current.files:  # it names other files now
            self._signature = _signature(new.files)
        self._current = new
        self.last_change_loaded = True
        log.info("web config reloaded", extra={"file": self.path})

    def _refuse(self, problems: str) -> None:
        self.last_change_loaded = False
        log.error(
            "web config refused, the previous one keeps running", extra={"problems": problems}
        )


def _signature(files: tuple[Path, ...]) -> tuple[tuple[int, int, int] | None, ...]:
    """What tells a file changed: modification time, size and inode (a Kubernetes secret
    update swaps a symlink, which os.stat follows)."""
    out: list[tuple[int, int, int] | None] = []
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


def _ssl_context(tls: TLSServerConfig, source: str, problems: list[str]) -> ssl.SSLContext | None:
    where = f"{source}: tls_server_config"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _TLS_VERSIONS[tls.min_version]
    context.maximum_version = _TLS_VERSIONS[tls.max_version]
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        problems.append(
            f"{where}.cert_file: cannot load {tls.cert_file} with key {tls.key_file}: "
            f"{getattr(exc, 'strerror', None) or exc}"
        )
        return None
    context.verify_mode = _CLIENT_AUTH[tls.client_auth_type]
    if tls.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            problems.append(
                f"{where}.client_ca_file: cannot load {tls.client_ca_file}: "
                f"{getattr(exc, 'strerror', None) or exc}"
            )
            return None
    return context
