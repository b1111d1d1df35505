"""The one record of an SMS in websms's spool, in either direction."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field, fields
from typing import Any

INBOUND = "in"    # ITSP → phone
OUTBOUND = "out"  # phone → ITSP
FORMAT = 1


@dataclass
class Sms:
    kind: str                 # INBOUND or OUTBOUND
    id: str                   # also the spool file name: hex, or p + hex
    to: str
    sender: str
    body: str
    created: float
    expires: float
    iface: str = ""           # interface index (incoming: the webhook's; outgoing: WEBSMS_INDEX)
    provider_id: str = ""     # the ITSP's message id, when its webhook has one
    user: str = ""            # outgoing: the SIP user told when sending fails for good
    delivered: list[str] = field(default_factory=list)  # incoming: contact URIs that got it
    attempts: int = 0
    next_try: float = 0.0     # outgoing: not before this (epoch seconds)
    error: str = ""           # the last failure, for `websms queue`
    notice: bool = False      # a report made by websms itself (never reported on in turn)
    owner: int = 0            # outgoing: pid of the process attempting it now (a lease)

    def to_json(self) -> bytes:
        # vars(), not asdict(): asdict deep-copies, a tenth of a webhook's CPU time
        return json.dumps({"format": FORMAT, **vars(self)}, ensure_ascii=False,
                          separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Sms:
        """Strict: a spool file that is not exactly ours raises ValueError."""
        raw = json.loads(data.decode("utf-8"))
        if not isinstance(raw, dict) or raw.pop("format", None) != FORMAT:
            raise ValueError("not a websms spool record of format 1")
        known = {f.name: f for f in fields(cls)}
        if set(raw) - set(known) or {"kind", "id", "to", "sender", "body"} - set(raw):
            raise ValueError("unexpected or missing fields")
        sms = cls(**raw)
        _check_types(sms)
        return sms


def _check_types(sms: Sms) -> None:
    expected: dict[str, Any] = {"kind": str, "id": str, "to": str, "sender": str, "body": str,
                                "created": (int, float), "expires": (int, float),
                                "iface": str, "provider_id": str, "user": str,
                                "delivered": list, "attempts": int, "next_try": (int, float),
                                "error": str, "notice": bool, "owner": int}
    for name, typ in expected.items():
        if not isinstance(getattr(sms, name), typ):
            raise ValueError(f"field {name} has the wrong type")
    if sms.kind not in (INBOUND, OUTBOUND) or not valid_id(sms.id):
        raise ValueError("bad kind or id")


def valid_id(text: str) -> bool:
    return 32 <= len(text) <= 33 and all(c in "0123456789abcdefp" for c in text)


def new_id() -> str:
    return secrets.token_hex(16)


def provider_key(iface: str, provider_id: str) -> str:
    """The spool id of a provider's message: the same id twice is the same file."""
    digest = hashlib.sha256(f"{iface}\0{provider_id}".encode()).hexdigest()
    return "p" + digest[:32]
