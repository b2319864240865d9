"""The `server` label: one name for a PostgreSQL server, computed the same way from a
PostgreSQL target's DSN and from the host and port a PgBouncer's SHOW DATABASES reports for a
pooled database, so that recording rules can join the poolers' promises to the server's slots.

The normalization (README, "Poolers against the server"):
- the host is lowercased, a trailing dot dropped, an IP address written in its canonical form
  (IPv6 in brackets);
- a local host (`localhost`, any 127.0.0.0/8 address, `::1`, a Unix socket directory, or no
  host at all, which libpq and PgBouncer read as the default socket) is the machine the
  connection starts from: for a pooled database, the pooler's own host as the exporter reaches
  it; for the exporter's own connections, `localhost`;
- no port is 5432;
- a list of hosts (`a,b`) is each of them.
The result is `host:port`. Where addresses cannot agree (a DNS name on one side, an IP on the
other; NAT), the config names the server instead (`server:` on the PostgreSQL target,
`upstreams:` on the PgBouncer target).
"""

from __future__ import annotations

import ipaddress

import psycopg.conninfo

DEFAULT_PORT = 5432
LOCALHOST = "localhost"


def is_local(host: str) -> bool:
    """A host that names the machine the connection starts from."""
    host = host.strip().lower().rstrip(".")
    if not host or host == LOCALHOST or host.startswith(("/", "@")):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    return f"[{address.compressed}]" if address.version == 6 else address.compressed


def server_addresses(host: str | None, port: object, local_to: str | None = None) -> list[str]:
    """The `server` label of each host in `host` (a comma-separated list, as libpq and
    PgBouncer 1.24+ take it) on `port`; a local host becomes `local_to` (a host, as the
    exporter reaches the machine), or `localhost` when that is local too or not given."""
    port_text = str(port).strip() if port not in (None, "", 0, "0") else ""
    ports = port_text.split(",") if port_text else []
    hosts = (host or "").split(",") if host else [""]
    out = []
    for i, one in enumerate(hosts):
        this_port = ports[i] if i < len(ports) else (ports[-1] if ports else "")
        number = this_port.strip() or str(DEFAULT_PORT)
        if is_local(one):
            name = _host(local_to) if local_to and not is_local(local_to) else LOCALHOST
        else:
            name = _host(one)
        if f"{name}:{number}" not in out:
            out.append(f"{name}:{number}")
    return out


def dsn_host(conninfo: str) -> str:
    """The first host a DSN names ('' for the default socket); '' when it does not parse."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return ""
    host = str(params.get("host") or params.get("hostaddr") or "")
    return host.split(",")[0]


def dsn_server(conninfo: str) -> str:
    """The `server` label of the server a DSN connects to (its first host)."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return f"{LOCALHOST}:{DEFAULT_PORT}"
    host = str(params.get("host") or params.get("hostaddr") or "").split(",")[0]
    port = str(params.get("port") or "").split(",")[0]
    return server_addresses(host, port)[0]
