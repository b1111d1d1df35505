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
import json
import subprocess

from pbxhost.autoban.events import Address

# so that one stray event from a router that really attacks does not warn
MIN_EVENTS = 3


def gateways(routes_json: str) -> set[Address]:
    """The gateways of `ip -j route show default`'s output."""
    found: set[Address] = set()
    for route in json.loads(routes_json or "[]"):
        with contextlib.suppress(KeyError, ValueError):
            found.add(ipaddress.ip_address(route["gateway"]))
    return found


def read_gateways() -> set[Address]:
    """This host's default gateways, IPv4 and IPv6. From `ip` (as the host's own
    addresses): the unit's ProcSubset=pid hides /proc/net."""
    found: set[Address] = set()
    for family in ("-4", "-6"):
        with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
            found |= gateways(subprocess.run(["ip", "-j", family, "route", "show", "default"],
                                             capture_output=True, text=True, check=True,
                                             timeout=5).stdout)
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
