"""Which AMI security events prove an attack, and the offender's address."""

from __future__ import annotations

import ipaddress
import socket
from typing import NamedTuple

# Each of these is a request that failed authentication or authorisation:
#   InvalidAccountID          unknown user (scanners probe extensions)
#   InvalidPassword           wrong password (AMI, and PJSIP without digest)
#   ChallengeResponseFailed   wrong digest answer (the usual SIP brute force)
#   FailedACL                 refused by an ACL / permit-deny
#   RequestBadFormat          a malformed request: no real phone sends one
#   AuthMethodNotAllowed      an auth method the endpoint does not allow
# Not counted: ChallengeSent (every legitimate REGISTER gets one), SuccessfulAuth.
ATTACK_EVENTS = frozenset({
    "InvalidAccountID", "InvalidPassword", "ChallengeResponseFailed", "FailedACL",
    "RequestBadFormat", "AuthMethodNotAllowed",
})
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


# A connection-oriented transport proves the source address (a handshake); UDP
# does not: the sender may never see a reply (a forged source).
PROVEN_TRANSPORTS = frozenset({"TCP", "TLS", "WS", "WSS"})


class Remote(NamedTuple):
    addr: Address
    transport: str   # "UDP", "TCP", "TLS", "WS", "WSS"; "" when the event has none
    port: int | None
    text: str        # str(addr), made once: a flood's events need it several times each

    @property
    def proven(self) -> bool:
        return self.transport in PROVEN_TRANSPORTS

    @property
    def proto(self) -> str:
        """The layer-4 protocol its packets use: udp or tcp."""
        return "udp" if self.transport in ("UDP", "") else "tcp"


def parse_remote(value: str) -> Remote:
    """RemoteAddress → address, transport and port (see parse_remote_address)."""
    addr, given, parts = _parse_remote_address(value)
    transport = parts[1].upper() if len(parts) == 4 else ""
    try:
        port: int | None = int(parts[-1])
        if not 0 < port < 65536:  # type: ignore[operator]
            port = None
    except ValueError:
        port = None
    return Remote(addr, transport, port, given or str(addr))


def parse_remote_address(value: str) -> Address:
    """`IPV4/UDP/203.0.113.9/5060`, `IPV4/203.0.113.9/5060`, `IPV6/UDP/2001:db8::9/5060`
    or with `[2001:db8::9]` → the address; IPv4-mapped IPv6 → IPv4 (what the
    kernel sees). ValueError on anything else: a zone id (`fe80::1%eth0`, which no
    kernel set can match), a doubled header (panoramisk gives a list), garbage."""
    return _parse_remote_address(value)[0]


def address_text(version: int, value: int) -> str:
    """str() of the address VALUE, 4x faster: inet_ntop writes what ipaddress writes
    (RFC 5952), except for ::/80 addresses (IPv4-compatible and mapped forms)."""
    if version == 4:
        return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
    if value >> 48 == 0:
        return str(ipaddress.IPv6Address(value))
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


def _parse_remote_address(value: str) -> tuple[Address, str, list[str]]:
    """parse_remote_address, its text when that is already str(address) (an IPv4
    address inet_pton took is: glibc takes dotted quads without zeros; IPv6 is
    written again), and the value's parts."""
    if not isinstance(value, str):
        raise ValueError(f"not one AMI address: {value!r}")
    parts = value.strip().split("/")
    if len(parts) not in (3, 4) or parts[0] not in ("IPV4", "IPV6"):
        raise ValueError(f"not an AMI address: {value!r}")
    text = parts[-2]
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "%" in text:
        raise ValueError(f"an address with a zone id: {value!r}")
    addr: Address
    try:  # 5x faster than ipaddress: one per event of a flood
        addr = ipaddress.IPv4Address(int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big"))
    except OSError:
        try:
            number = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
            addr, text = ipaddress.IPv6Address(number), address_text(6, number)
        except OSError:  # ipaddress says why
            addr, text = ipaddress.ip_address(text), ""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped, "", parts
    if (addr.version == 4) != (parts[0] == "IPV4"):
        raise ValueError(f"address family does not match: {value!r}")
    return addr, text, parts
