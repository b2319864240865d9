"""`--web.config.file`: TLS and basic auth in the Prometheus exporter-toolkit format.

The same file an operator already writes for node_exporter or postgres_exporter works here,
for the keys this server can honour; any other key is refused by name rather than ignored,
so a setting that looks active never silently is not. Like exporter-toolkit, which reads the
file on every connection, a changed file (or certificate, key or CA file it names) applies
without a restart: rotated certificates and new users take effect as requests arrive.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import bcrypt
from pydantic import BeforeValidator, Field, ValidationError

from exporter.config.errors import ConfigError
from exporter.config.model import StrictModel, validation_problems
from exporter.config.safeyaml import load_yaml_file
from exporter.web.webtls import ServerTLS, TLSServerConfig, server_tls

log = logging.getLogger(__name__)

# A web config is a few lines: anything near this is a wrong path.
MAX_WEB_CONFIG_BYTES = 1 << 20
# The only response headers the toolkit lets a web config set, with their allowed values
# (None: any). It refuses any other header, and any other value of an enumerated one.
TOOLKIT_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}


def _go_string(value: Any) -> Any:
    """A YAML scalar read into a Go string: `X-XSS-Protection: 1` is "1", a null is ""."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


GoString = Annotated[str, BeforeValidator(_go_string)]


class HTTPServerConfig(StrictModel):
    headers: dict[str, GoString] | None = None
    # HTTP/2 is offered only over TLS, and only by Go: this server speaks HTTP/1.1 (what a
    # client falls back to). The setting still decides what cipher_suites must hold.
    http2: bool = True


class RateLimitConfig(StrictModel):
    interval: Any = 0
    burst: int = 0


class WebConfigFile(StrictModel):
    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig = HTTPServerConfig()
    rate_limit: RateLimitConfig | None = None
    basic_auth_users: dict[str, GoString] | None = Field(default=None)


class RateLimiter:
    """The toolkit's rate_limit: a token bucket (golang.org/x/time/rate) of `burst` tokens,
    one more every `interval`, starting full; a request without a token gets 429."""

    def __init__(self, interval: float, burst: int) -> None:
        self.interval = interval
        self.burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        if self.interval <= 0:  # Go's rate.Every of a negative interval: no limit
            return True
        with self._lock:
            now = time.monotonic()
            elapsed, self._last = now - self._last, now
            self._tokens = min(float(self.burst), self._tokens + elapsed / self.interval)
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False


_GO_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def go_duration(value: Any) -> float:
    """Seconds from a Go duration as yaml.v2 reads one: a string such as `1m30s` or `500ms`
    (time.ParseDuration), or an integer of nanoseconds. Raises ValueError."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value * 1e-9
    if not isinstance(value, str):
        raise ValueError(f"time: invalid duration {value!r}")
    text = value
    sign = -1 if text.startswith("-") else 1
    text = text[1:] if text[:1] in ("+", "-") else text
    if text == "0":
        return 0.0
    seconds, at = 0.0, 0
    while at < len(text):
        match = _GO_DURATION.match(text, at)
        if match is None or match.group(1) in ("", "."):
            raise ValueError(f"time: invalid duration {json.dumps(value)}")
        seconds += float(match.group(1)) * _GO_UNITS[match.group(2)]
        at = match.end()
    if not text:
        raise ValueError(f"time: invalid duration {json.dumps(value)}")
    return sign * seconds


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
    """What the HTTP server enforces: TLS, basic auth, the rate limit, the headers."""

    tls: ServerTLS | None = None
    auth: BasicAuth | None = None
    headers: dict[str, str] = field(default_factory=dict)
    limiter: RateLimiter | None = None
    # What it was read from: the web config file, then the TLS files it names.
    files: tuple[Path, ...] = ()

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        return self.tls.context if self.tls is not None else None

    def refuses_peer(self, sock: ssl.SSLObject | ssl.SSLSocket) -> str | None:
        """Why a client that completed its TLS handshake is turned away, or None."""
        return self.tls.refuses(sock) if self.tls is not None else None


NO_WEB_CONFIG = WebConfig()  # without --web.config.file: plain HTTP, no auth


def load_web_config(path: str, previous: WebConfig | None = None) -> WebConfig:
    """Read and check a web config file; one `ConfigError` names every problem. The rate
    limiter of `previous` is kept when the limit is unchanged (its bucket is not refilled)."""
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
    for user, hashed in (spec.basic_auth_users or {}).items():
        reason = bcrypt_hash_problem(hashed)
        if reason is not None:
            problems.append(f"{source}: basic_auth_users.{user}: {reason}")
        else:
            users[user] = hashed.encode()
    headers = spec.http_server_config.headers or {}
    for name, value in headers.items():
        allowed = TOOLKIT_HEADERS.get(name, ())
        if allowed == ():
            problems.append(
                f"{source}: http_server_config.headers: HTTP header {json.dumps(name)} can not "
                f"be configured (only {', '.join(TOOLKIT_HEADERS)})"
            )
        elif allowed is not None and value not in allowed:
            problems.append(
                f"{source}: http_server_config.headers: invalid value for {name}. Expected "
                f"one of: [{' '.join(json.dumps(v) for v in allowed)}], but got: "
                f"{json.dumps(value)}"
            )
    limiter = _rate_limiter(spec.rate_limit, source, problems, previous)
    tls = None
    if (tls_spec := spec.tls_server_config) is not None:
        where = f"{source}: tls_server_config"
        if tls_spec.enabled():
            base = Path(path).parent
            tls = server_tls(tls_spec, base, spec.http_server_config.http2, where, problems)
        elif tls_spec.model_fields_set:
            problems.append(
                f"{where}: missing one of cert or cert_file (without a certificate, key, "
                "client CA or client_auth_type, exporter-toolkit would serve plain HTTP and "
                "ignore the other TLS settings)"
            )
    if problems:
        raise ConfigError(problems)
    auth = BasicAuth(users) if users else None
    files = (Path(path), *(tls.files if tls is not None else ()))
    return WebConfig(tls, auth, dict(headers), limiter, files)


def bcrypt_hash_problem(hashed: str) -> str | None:
    """What Go's bcrypt.Cost (the toolkit's check of basic_auth_users) refuses in a hash, in
    its words; None for a hash it takes. The hash itself is never quoted: it may be a
    password written where its hash belongs."""
    raw = hashed.encode()
    if len(raw) < 59:
        return "crypto/bcrypt: hashedSecret too short to be a bcrypted password"
    if raw[:1] != b"$":
        return "crypto/bcrypt: bcrypt hashes must start with '$'"
    if raw[1:2] > b"2":
        return "crypto/bcrypt: bcrypt algorithm version requested is newer than current version '2'"
    at = 3 if raw[2:3] == b"$" else 4
    digits = raw[at : at + 2].decode("ascii", "replace")
    if not (digits.isascii() and digits.lstrip("+-").isdigit()):
        return "crypto/bcrypt: the cost is not a number"
    cost = int(digits)
    if not 4 <= cost <= 31:
        return f"crypto/bcrypt: cost {cost} is outside allowed range (4,31)"
    return None


def _rate_limiter(
    spec: RateLimitConfig | None, source: str, problems: list[str], previous: WebConfig | None
) -> RateLimiter | None:
    if spec is None:
        return None
    try:
        interval = go_duration(spec.interval)
    except ValueError as exc:
        problems.append(f"{source}: rate_limit.interval: {exc}")
        return None
    if interval == 0:  # the toolkit's "no rate limiter"
        return None
    kept = previous.limiter if previous is not None else None
    if kept is not None and (kept.interval, kept.burst) == (interval, spec.burst):
        return kept
    return RateLimiter(interval, spec.burst)


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
            new = load_web_config(self.path, self._current)
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
