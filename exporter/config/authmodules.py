"""Auth modules and probe targets: how `/probe?target=HOST[:PORT][/DB]&auth_module=NAME` becomes
a connection string.

An auth module is postgres_exporter's (`type: userpass`, `userpass: {username, password}`,
`options:` such as sslmode), plus `password_file`, `dbname` (when the target names none) and
`role` (the session's role after login, for a login role that is granted a monitoring role).
The probe's target names only a host, a port and a database: credentials and connection
options come from the operator's config, never from the request, so that a request cannot
point the connection elsewhere (`host=`, `hostaddr=`, a service file) or read local files
(`sslkey=`, `passfile=`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import psycopg.conninfo

DEFAULT_PORT = 5432
DEFAULT_DBNAME = "postgres"
# Options that would choose the server or the credentials: the target and the module own those.
FORBIDDEN_OPTIONS = frozenset(
    {
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "passfile",
        "service",
        "servicefile",
        "options",
    }
)
_HOST_NAME = re.compile(
    r"^(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_DBNAME = re.compile(r"^[A-Za-z0-9_.$-]{1,63}$")
_ROLE = re.compile(r"^[A-Za-z0-9_.$-]{1,63}$")


class BadTarget(ValueError):
    """A probe target that is not HOST[:PORT][/DB]; the message says what is wrong."""


@dataclass(frozen=True)
class ProbeAddress:
    """Where a probe goes: a host as written (a name or an IP address), a port, a database."""

    host: str
    port: int
    dbname: str | None

    def name(self, default_dbname: str) -> str:
        """The `target` label of its series: host:port/db (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}/{self.dbname or default_dbname}"


def parse_probe_target(text: str) -> ProbeAddress:
    """`HOST[:PORT][/DB]`, `[IPv6][:PORT][/DB]`, or the same as a postgresql:// URI."""
    if not text or len(text) > 512:
        raise BadTarget("target must be HOST[:PORT][/DB], at most 512 characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise BadTarget("target has spaces or control characters")
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme not in ("postgres", "postgresql"):
            raise BadTarget(f"target scheme {scheme!r}: only postgresql:// or HOST[:PORT][/DB]")
        text = text.split("://", 1)[1]
    try:
        parts = urlsplit("//" + text)  # ValueError: brackets without an IPv6 address
    except ValueError:
        raise BadTarget("target must be HOST[:PORT][/DB], an IPv6 address in brackets") from None
    if "@" in parts.netloc:
        raise BadTarget("target must not carry credentials: they come from the auth module")
    if parts.query or parts.fragment or "?" in text:
        raise BadTarget("target must not carry options: put them in the auth module's options")
    try:
        port = parts.port
    except ValueError:
        raise BadTarget("target port must be a number from 1 to 65535") from None
    host = parts.hostname or ""
    if parts.netloc.startswith("["):
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise BadTarget(f"target host [{host}] is not an IPv6 address") from None
    elif not _HOST_NAME.match(host):
        raise BadTarget("target host must be a DNS name or an IP address")
    elif host.rstrip(".").rsplit(".", 1)[-1].isdigit() or host.lower().startswith("0x"):
        # 127.1, 2130706433, 0177.0.0.1: what getaddrinfo reads as an address, the allow-list
        # would read as a name. No top-level domain is all digits.
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError:
            raise BadTarget(
                f"target host {host!r} is neither a name nor a dotted IPv4 address"
            ) from None
    path = unquote(parts.path)
    dbname = path[1:] if path.startswith("/") else ""
    if dbname and not _DBNAME.match(dbname):
        raise BadTarget("target database must be 1-63 letters, digits or _ . $ -")
    if port == 0:
        raise BadTarget("target port must be a number from 1 to 65535")
    return ProbeAddress(host.lower(), port or DEFAULT_PORT, dbname or None)


@dataclass(frozen=True)
class AuthModule:
    """A resolved auth module: who to log in as, how, with the password already read."""

    name: str
    user: str
    password: str | None = field(repr=False)
    options: Mapping[str, str]
    dbname: str
    role: str | None
    connect_timeout: float

    def conninfo(self, address: ProbeAddress) -> str:
        """The libpq connection string for `address`, logged in as this module says."""
        params: dict[str, str | int | None] = {
            **self.options,
            "host": address.host,
            "port": address.port,
            "dbname": address.dbname or self.dbname,
            "user": self.user,
        }
        if self.password:
            params["password"] = self.password
        if self.role:
            params["options"] = f"-c role={self.role}"
        return psycopg.conninfo.make_conninfo("", **params)


def check_options(options: Mapping[str, str]) -> list[str]:
    """Problems with an auth module's `options` (libpq keywords other than the forbidden ones)."""
    problems = []
    for key in sorted(set(options) & FORBIDDEN_OPTIONS):
        problems.append(
            f"{key!r} cannot be an option: the probe's target gives host, port and database, "
            "the module's userpass, password_file, dbname and role the rest"
        )
    if not problems:
        try:
            psycopg.conninfo.make_conninfo("", **options)
        except psycopg.ProgrammingError as exc:
            problems.append(f"not valid libpq options: {str(exc).splitlines()[0]}")
    return problems


def check_role(role: str) -> str:
    if not _ROLE.match(role):
        raise ValueError("a role is 1-63 letters, digits or _ . $ -")
    return role
