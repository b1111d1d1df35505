"""Who a number is, and where that user's phones are: the contact cache of
the delivery worker (deliver.py schedules; this knows).

A number is looked up as a hint in [astqueue] hint_context (the wizard's
hint_exten: `PJSIP/john.doe`), else taken as an endpoint name; an endpoint's
AORs and their contacts come from PJSIP_ENDPOINT/PJSIP_AOR/PJSIP_CONTACT
(AMI Getvar), then follow ContactStatus events.

A number no user has is remembered as unknown for UNKNOWN_TTL: however many
SMS are queued for it, it costs at most one lookup (2-3 AMI actions) a
minute, so SMS for strangers cannot crowd out the AMI session."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pbxhost.websms.config import Queue

REACHABLE = ("Reachable", "NonQualified")
TARGET_TTL = 60.0    # seconds a number → endpoints lookup is trusted
UNKNOWN_TTL = 60.0   # seconds a number no user has is not looked up again


class Ami(Protocol):
    async def action(self, fields: dict[str, Any], timeout: float = 10) -> Any: ...


@dataclass
class Contact:
    uri: str
    endpoint: str
    status: str

    @property
    def reachable(self) -> bool:
        return self.status in REACHABLE


@dataclass
class Target:
    endpoints: tuple[str, ...]
    aors: tuple[str, ...]
    found: float


def hint_candidates(to: str) -> list[str]:
    """ITSPs write numbers with or without + or 00; hints are E.164 (+...)."""
    out = [to]
    if to.isdigit():
        out += ["+" + to[2:]] if to.startswith("00") else ["+" + to]
    elif to.startswith("+"):
        out.append(to[1:])
    return list(dict.fromkeys(out))


def hint_endpoints(hint: str) -> tuple[str, ...]:
    """`PJSIP/jane&PJSIP/jane-desk&Custom:x` → (jane, jane-desk)."""
    return tuple(d.split("/", 1)[1] for d in hint.split("&")
                 if d.upper().startswith("PJSIP/") and "/" in d and d.split("/", 1)[1])


class Directory:
    """Numbers → users → AORs → contacts, looked up over AMI and kept current
    by ContactStatus events; numbers no user has, remembered for a minute."""

    def __init__(self, queue: Queue, ami: Ami,
                 clock: Callable[[], float] = time.time) -> None:
        self.queue, self.ami, self.clock = queue, ami, clock
        self.targets: dict[str, Target] = {}
        self.unknown: dict[str, float] = {}                # number → looked up again then
        self.contacts: dict[str, dict[str, Contact]] = {}  # AOR → URI → contact
        self.loading: dict[str, list[Any]] = {}            # AOR → events during its lookup
        self.lookups = 0                                   # numbers looked up (a statistic)

    def forget(self) -> None:
        """Everything may be stale (a new AMI session: events were missed)."""
        self.contacts.clear()
        self.targets.clear()
        self.unknown.clear()

    def forget_targets(self) -> None:
        """Numbers → users again (a sweep, a flush); unknown numbers keep their minute."""
        self.targets.clear()

    def unknown_until(self, to: str) -> float:
        return self.unknown.get(to, self.clock())

    # -- events ----------------------------------------------------------------------
    def on_event(self, event: Any) -> str | None:
        """A ContactStatus event applied; the AOR when one of its phones is reachable."""
        if event.get("Event") != "ContactStatus":
            return None
        aor = event.get("AOR", "")
        if aor in self.loading:
            self.loading[aor].append(event)  # applied once the lookup in flight is stored
        elif aor in self.contacts:
            self._apply(self.contacts[aor], event)
        return aor if event.get("ContactStatus") in REACHABLE else None

    @staticmethod
    def _apply(known: dict[str, Contact], event: Any) -> None:
        uri, status = event.get("URI", ""), event.get("ContactStatus", "")
        if not uri:
            return
        if status == "Removed":
            known.pop(uri, None)
            return
        old = known.get(uri)
        endpoint = event.get("EndpointName") or (old.endpoint if old else event.get("AOR", ""))
        known[uri] = Contact(uri, endpoint, status)

    # -- Asterisk lookups ----------------------------------------------------------
    async def _getvar(self, expression: str) -> str:
        reply = await self.ami.action({"Action": "Getvar", "Variable": expression},
                                      timeout=self.queue.waittime)
        return (reply.get("Value") or "").strip() if reply.get("Response") == "Success" else ""

    async def resolve(self, to: str) -> Target | None:
        """The user of TO; None when no user has it (then not asked again for a minute)."""
        now = self.clock()
        cached = self.targets.get(to)
        if cached is not None and now - cached.found < TARGET_TTL:
            return cached
        if self.unknown.get(to, 0.0) > now:
            return None
        self.lookups += 1
        endpoints: tuple[str, ...] = ()
        for exten in hint_candidates(to):
            reply = await self.ami.action({"Action": "ExtensionState", "Exten": exten,
                                           "Context": self.queue.hint_context},
                                          timeout=self.queue.waittime)
            endpoints = hint_endpoints(reply.get("Hint") or "")
            if endpoints:
                break
        if not endpoints and not to.startswith("+"):
            endpoints = (to,)  # a user name, or an endpoint named by its number
        aors: list[str] = []
        for endpoint in endpoints:
            value = await self._getvar(f"PJSIP_ENDPOINT({endpoint},aors)")
            aors += [a.strip() for a in value.split(",") if a.strip()]
        if not aors:
            self.unknown[to] = self.clock() + UNKNOWN_TTL
            return None
        self.unknown.pop(to, None)
        target = Target(endpoints, tuple(dict.fromkeys(aors)), self.clock())
        self.targets[to] = target
        return target

    async def _load_contacts(self, aor: str, endpoint: str) -> dict[str, Contact]:
        known = self.contacts.get(aor)
        if known is not None:
            return known
        found: dict[str, Contact] = {}
        self.loading[aor] = []
        try:
            ids = await self._getvar(f"PJSIP_AOR({aor},contact)")
            for cid in filter(None, (c.strip() for c in ids.split(","))):
                uri = await self._getvar(f"PJSIP_CONTACT({cid},uri)")
                status = await self._getvar(f"PJSIP_CONTACT({cid},status)")
                owner = await self._getvar(f"PJSIP_CONTACT({cid},endpoint)") or endpoint
                if uri:
                    found[uri] = Contact(uri, owner, status)
            for event in self.loading[aor]:
                self._apply(found, event)
        finally:
            self.loading.pop(aor, None)
        self.contacts[aor] = found
        return found

    async def reachable(self, target: Target) -> list[Contact]:
        out: list[Contact] = []
        for aor in target.aors:
            contacts = await self._load_contacts(aor, target.endpoints[0])
            out += [c for c in contacts.values() if c.reachable]
        return out
