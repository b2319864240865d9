"""Which hosts a /probe may connect to: host name patterns and CIDRs from the config.

The guard against server-side request forgery: whoever can reach /probe could otherwise make
the exporter open connections (with the operator's credentials) to any address it can reach.
A host is checked as written in the probe, before anything resolves or connects: a name
matches only name patterns (no DNS lookup, which an attacker's DNS could answer at will), an
IP address literal matches CIDRs (or a pattern written as that exact address).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass

_PATTERN = re.compile(r"^[A-Za-z0-9*?._-]+$")
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_rule(rule: str) -> str:
    """Validate one `allowed_hosts` entry (a CIDR, an address, or a host pattern with * and ?)."""
    text = rule.strip()
    if "/" in text:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{rule!r} is not a valid CIDR such as 10.0.0.0/8") from None
        return text
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if not _PATTERN.match(text) or text.strip("*?.") == "":
        raise ValueError(
            f"{rule!r} is neither a CIDR nor a host pattern such as db-*.prod.example.com"
        )
    return text.lower()


@dataclass(frozen=True)
class HostAllowList:
    """The allowed hosts; empty allows nothing."""

    rules: tuple[str, ...] = ()

    def refusal(self, host: str) -> str | None:
        """None if `host` is allowed, otherwise why not (naming the rules it was checked by)."""
        if not self.rules:
            return "no probe.allowed_hosts in the configuration: probes of servers are off"
        address = _address(host)
        for rule in self.rules:
            if address is not None:
                if _network_contains(rule, address):
                    return None
            elif "/" not in rule and fnmatch.fnmatchcase(host.lower().rstrip("."), rule):
                return None
        kind = "address" if address is not None else "host name"
        return f"{kind} {host} matches no entry of probe.allowed_hosts ({', '.join(self.rules)})"


def _address(host: str) -> _IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _network_contains(rule: str, address: _IPAddress) -> bool:
    try:
        network: _IPNetwork = ipaddress.ip_network(rule, strict=False)
    except ValueError:
        return False  # a host name pattern: names only
    return address.version == network.version and address in network
