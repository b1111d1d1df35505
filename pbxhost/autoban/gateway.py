"""A warning for autoban behind a port forwarder that rewrites source addresses.

Rootless podman's default port forwarder (rootlessport) and some NAT set-ups
hand every client's packets to Asterisk from one address: the host's end of
the container's network, which is the container's default gateway. autoban
then sees every phone and every attacker as that one address and would jail
them all at once. When the attack events seen so far all came from a default
gateway of this host, autoban says so in the journal, once."""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path

from pbxhost.autoban.events import Address

ROUTES_V4 = Path("/proc/net/route")
ROUTES_V6 = Path("/proc/net/ipv6_route")
# so that one stray event from a router that really attacks does not warn
MIN_EVENTS = 3


def gateways_v4(route_table: str) -> set[Address]:
    """The default gateways in /proc/net/route's text (hex, little-endian)."""
    found: set[Address] = set()
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[1] == "00000000" and fields[2] != "00000000":
            found.add(ipaddress.IPv4Address(bytes.fromhex(fields[2])[::-1]))
    return found


def gateways_v6(route_table: str) -> set[Address]:
    """The default gateways in /proc/net/ipv6_route's text (::/0 with a next hop)."""
    found: set[Address] = set()
    for line in route_table.splitlines():
        fields = line.split()
        if (len(fields) >= 5 and fields[0] == "0" * 32 and fields[1] == "00"
                and fields[4] != "0" * 32):
            found.add(ipaddress.IPv6Address(bytes.fromhex(fields[4])))
    return found


def read_gateways() -> set[Address]:
    found: set[Address] = set()
    for path, parse in ((ROUTES_V4, gateways_v4), (ROUTES_V6, gateways_v6)):
        with contextlib.suppress(OSError):  # no such table (IPv6 off): nothing to compare
            found |= parse(path.read_text())
    return found


class GatewayWatch:
    """Counts attack events; `warning()` gives the warning once, when at least
    MIN_EVENTS events came and every one came from a default gateway."""

    def __init__(self, gateways: set[Address]) -> None:
        self.gateways = gateways
        self.events = 0
        self.from_gateway = True
        self.warned = False

    def observe(self, addr: Address) -> str | None:
        self.events += 1
        self.from_gateway = self.from_gateway and addr in self.gateways
        if self.warned or not self.from_gateway or self.events < MIN_EVENTS:
            return None
        self.warned = True
        return (f"every attack event so far ({self.events}) came from {addr}, this host's "
                "default gateway: a port forwarder (rootless podman's default, or NAT) "
                "rewrites the clients' source addresses, so jailing it locks everybody out; "
                "run rootful, with host networking or podman's slirp4netns port handler")
