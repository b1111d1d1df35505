"""The ITSP trunk's host names and the addresses they last resolved to.

A trunk written as a name (`remote_hosts = sip.itsp.example`) is never jailed
under any address it resolves to. Names are resolved again every
`trunk_refresh` (5 minutes by default), because ITSPs move their servers; a
failed resolution keeps the last addresses, and those are kept in the state
file too, so a resolver that is down at boot does not leave the trunk
unprotected."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable

from pbxhost import service
from pbxhost.autoban.config import Network, resolve_host

log = logging.getLogger("pbxhost.autoban")
Resolver = Callable[[str], list[Network] | None]


class Trunks:
    def __init__(self, names: list[str], saved: dict[str, list[str]] | None = None) -> None:
        self.names = names
        self.last: dict[str, list[Network]] = {}
        for name in names:
            try:
                self.last[name] = [ipaddress.ip_network(a) for a in (saved or {}).get(name, [])]
            except ValueError as exc:
                log.warning("state file: trunk %s addresses ignored: %s", name, exc)
                self.last[name] = []

    def networks(self) -> list[Network]:
        return list(dict.fromkeys(n for nets in self.last.values() for n in nets))

    def refresh(self, resolve: Resolver = resolve_host) -> list[Network]:
        """Resolve every name again (blocking: run in a thread); the networks that
        are new. A name that does not resolve keeps its last addresses."""
        before = set(self.networks())
        for name in self.names:
            found = resolve(name)
            if found is None:
                if self.last.get(name):
                    log.warning("trunk %s: keeping its last addresses %s", name,
                                ", ".join(map(str, self.last[name])))
                continue
            if found and set(found) != set(self.last.get(name, [])):
                log.log(service.NOTICE, "trunk %s resolves to %s: never jailed", name,
                        ", ".join(map(str, found)))
            # an empty answer is not trusted more than a failure: keep the last
            self.last[name] = found or self.last.get(name, [])
        return [n for n in self.networks() if n not in before]

    def saved(self) -> dict[str, list[str]]:
        return {name: [str(n) for n in nets] for name, nets in self.last.items()}
