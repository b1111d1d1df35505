"""Who is on the other end of a loopback TCP connection: the uid that owns
the peer's socket, as the kernel knows it.

FastAGI is TCP only (Asterisk has no Unix-socket FastAGI), so any local user
can connect to 127.0.0.1:4573. The kernel records the owner of every socket;
websmsd asks it for the peer socket's owner (NETLINK_SOCK_DIAG, an exact
lookup by the connection's four-tuple, what `ss -e` shows) and serves only
Asterisk's user. Without AF_NETLINK (a unit's RestrictAddressFamilies) the
same fact is read from /proc/net/tcp{,6}, a full listing: slower, still exact."""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from pathlib import Path

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
_NOCOOKIE = 0xFFFFFFFF
_HDR = struct.Struct("=IHHII")                  # nlmsghdr
_REQ = struct.Struct("=BBBBI")                  # inet_diag_req_v2 before its sockid
_SOCKID = struct.Struct("!HH16s16s") # sport, dport (big-endian), src, dst; then if, cookie[2]
_UID_AT = _HDR.size + 4 + 48 + 12               # inet_diag_msg: 4 bytes, sockid, 3 u32, uid


def _addr16(ip: str) -> tuple[int, bytes]:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # a dual-stack listener's view of an IPv4 peer
    family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    return family, addr.packed.ljust(16, b"\0")


def _diag_request(peer: tuple[str, int], local: tuple[str, int]) -> bytes:
    """The peer's socket: its own address is PEER, its remote end is LOCAL."""
    family, src = _addr16(peer[0])
    _, dst = _addr16(local[0])
    body = (_REQ.pack(family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF)
            + _SOCKID.pack(peer[1], local[1], src, dst)
            + struct.pack("=III", 0, _NOCOOKIE, _NOCOOKIE))
    return _HDR.pack(_HDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0) + body


def uid_by_sock_diag(peer: tuple[str, int], local: tuple[str, int]) -> int | None:
    """None: no such socket. Raises OSError when netlink is not available."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(1.0)
        nl.send(_diag_request(peer, local))
        reply = nl.recv(8192)
    if len(reply) < _HDR.size:
        return None
    _, kind, _, _, _ = _HDR.unpack_from(reply)
    if kind == NLMSG_ERROR or len(reply) < _UID_AT + 4:
        return None
    return int(struct.unpack_from("=I", reply, _UID_AT)[0])


def _proc_hex(ip: str, port: int) -> str:
    """An address as /proc/net/tcp prints it: each 32-bit word in host order."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    raw = addr.packed
    words = (int.from_bytes(raw[i:i + 4], sys.byteorder) for i in range(0, len(raw), 4))
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def uid_by_proc(peer: tuple[str, int], local: tuple[str, int],
                proc: Path = Path("/proc/net")) -> int | None:
    want = (_proc_hex(*peer), _proc_hex(*local))
    name = "tcp" if len(want[0]) == 13 else "tcp6"
    with open(proc / name, encoding="ascii") as f:
        next(f, None)  # the header
        for line in f:
            cols = line.split()
            if len(cols) > 7 and (cols[1], cols[2]) == want:
                return int(cols[7])
    return None


def peer_uid(peer: tuple[str, int], local: tuple[str, int]) -> int | None:
    """The uid owning the peer's end of the TCP connection PEER → LOCAL
    (both on this host); None when no socket matches (the peer is gone)."""
    try:
        return uid_by_sock_diag(peer, local)
    except OSError:  # EAFNOSUPPORT under RestrictAddressFamilies; EPERM in odd sandboxes
        return uid_by_proc(peer, local)
