"""nf_tables over netlink: exact-key queries, element writes to the timed sets,
and the change notifications (what `nft monitor` reads).

libnftables 1.0.6 (Debian 12) answers `get element` from a cache of every
element of every set, rebuilt after each miss: ~40 ms per lookup with 5000
jailed addresses. The kernel's GETSETELEM and GETTABLE answer one key in
~0.1 ms. Element writes here are autoband's flood path only (a batch of
NEWSETELEM/DELSETELEM, no JSON, no ruleset cache); everything else, the table
and its rules first, goes through libnftables (see firewall.py). Constants
from linux/netfilter/nf_tables.h and nfnetlink.h."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import socket
import struct
import threading
from collections.abc import Iterator
from typing import NamedTuple

_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETTABLE = 1
NFT_MSG_GETSETELEM = 13
# the notifications a Monitor reads (the group every nf_tables commit is told to)
_NFNLGRP_NFTABLES = 7
_NFT_MSG_NEWTABLE, _NFT_MSG_DELTABLE, _NFT_MSG_NEWSET, _NFT_MSG_DELSET = 0, 2, 9, 11
_NFT_MSG_NEWSETELEM, _NFT_MSG_DELSETELEM, _NFT_MSG_NEWGEN = 12, 14, 15
_NFNL_MSG_BATCH_BEGIN, _NFNL_MSG_BATCH_END = 0x10, 0x11
_NLM_F_CREATE = 0x400
_NFTA_SET_TABLE, _NFTA_SET_NAME = 1, 2
_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP = 270, 1
_SO_ATTACH_FILTER = 26
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33  # root may exceed wmem_max, rmem_max
_NLM_F_REQUEST, _NLM_F_ACK = 1, 4
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_DUMP = 0x300
_NFPROTO_INET = 1
_NLA_F_NESTED = 0x8000
NFTA_TABLE_NAME = 1
_NFTA_SET_ELEM_LIST_TABLE, _NFTA_SET_ELEM_LIST_SET, _NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
_NFTA_LIST_ELEM = 1
_NFTA_SET_ELEM_KEY, _NFTA_SET_ELEM_FLAGS = 1, 3
_NFTA_SET_ELEM_TIMEOUT, _NFTA_SET_ELEM_EXPIRATION = 4, 5
_NFT_SET_ELEM_INTERVAL_END = 1
NFTA_SET_ELEM_USERDATA = 6
_NFTA_DATA_VALUE = 1
_NFTNL_UDATA_SET_ELEM_COMMENT = 0
_NETLINK_TIMEOUT = 5.0  # seconds; the kernel answers in microseconds
# Requests sent in one write by elements(): each reply is an skb of up to a page,
# and the kernel drops what overflows the receive buffer (set to _RCVBUF below).
PIPELINE = 64
_RCVBUF = 4 << 20
_SEND_SLACK = 4096  # a datagram may be the send buffer less a little
_ELEMENTS_MAX = 0xFFFF - 4  # bytes of elements in one message's list attribute


def nla(kind: int, payload: bytes, nested: bool = False) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    head = struct.pack("=HH", 4 + len(payload), kind | (_NLA_F_NESTED if nested else 0))
    return head + payload + bytes(-len(payload) % 4)


_HEAD = struct.Struct("=HH")
_NLMSG_HEAD = struct.Struct("=IHHII")  # length, type, flags, seq, sender's address


def _attr_list(data: bytes) -> list[tuple[int, bytes]]:
    """The attributes in DATA in order, as (type without flag bits, payload).
    The hot loop of a 100k-element dump: locals bound once, on purpose."""
    found: list[tuple[int, bytes]] = []
    append, unpack, offset, end = found.append, _HEAD.unpack_from, 0, len(data) - 4
    while offset <= end:
        length, kind = unpack(data, offset)
        if length < 4:
            break
        append((kind & 0x3FFF, data[offset + 4:offset + length]))
        offset += (length + 3) & ~3
    return found


def _attrs(data: bytes) -> dict[int, bytes]:
    """The attributes in DATA by type (the last one of a repeated type)."""
    return dict(_attr_list(data))


def _messages(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, seq, payload) of each netlink message in DATA."""
    found, offset = [], 0
    while offset + 16 <= len(data):
        length, kind, _, seq, _ = struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            break
        found.append((kind, seq, data[offset + 16:offset + length]))
        offset += (length + 3) & ~3
    return found


def udata_comment(udata: bytes) -> str | None:
    """The comment among an element's user data TLVs (u8 type, u8 len, value)."""
    offset = 0
    while offset + 2 <= len(udata):
        kind, length = udata[offset], udata[offset + 1]
        value = udata[offset + 2:offset + 2 + length]
        if kind == _NFTNL_UDATA_SET_ELEM_COMMENT:
            return value.rstrip(b"\0").decode("utf-8", "replace")
        offset += 2 + length
    return None


def elem_request(table: str, name: str, key: bytes, end: bool) -> bytes:
    """GETSETELEM attributes for one key; END asks an interval set for the end
    element after the key instead of the start element covering it."""
    elem = nla(_NFTA_SET_ELEM_KEY, nla(_NFTA_DATA_VALUE, key), nested=True)
    if end:
        elem += nla(_NFTA_SET_ELEM_FLAGS, struct.pack(">I", _NFT_SET_ELEM_INTERVAL_END))
    return (nla(_NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
            + nla(_NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0")
            + nla(_NFTA_SET_ELEM_LIST_ELEMENTS, nla(_NFTA_LIST_ELEM, elem, nested=True),
                   nested=True))


def reply_attrs(payload: bytes) -> dict[int, bytes]:
    """The attributes of the one element in a NEWSETELEM reply."""
    elements = _attrs(_attrs(payload).get(_NFTA_SET_ELEM_LIST_ELEMENTS, b""))
    return _attrs(elements.get(_NFTA_LIST_ELEM, b""))


def reply_key(attrs: dict[int, bytes]) -> int:
    # the key attribute nests one value attribute: its length, then the bytes
    key = attrs[_NFTA_SET_ELEM_KEY]
    return int.from_bytes(key[4:_HEAD.unpack_from(key)[0]], "big")


def reply_times(attrs: dict[int, bytes]) -> tuple[int | None, int | None]:
    """Timeout and remaining seconds; the kernel keeps ms, nft lists s (floor)."""
    if _NFTA_SET_ELEM_TIMEOUT not in attrs:
        return None, None
    timeout = struct.unpack(">Q", attrs[_NFTA_SET_ELEM_TIMEOUT])[0] // 1000
    expires = struct.unpack(">Q", attrs.get(_NFTA_SET_ELEM_EXPIRATION, bytes(8)))[0] // 1000
    return timeout, expires


class Netlink:
    """Exact-key reads straight from nf_tables. libnftables 1.0.6 answers a
    `get element` from a cache of every element of every set, which it drops
    whenever an element is missing: O(ruleset) per lookup. The kernel's
    GETSETELEM is O(1). Writes: elements of the timed sets only (see write)."""

    def __init__(self) -> None:
        # Like libnftables' socket, this one stays in the creating thread's netns.
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
        self._sock.bind((0, 0))
        # root may exceed rmem_max; else the default buffer
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RCVBUF)
        self._sock.settimeout(_NETLINK_TIMEOUT)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._heads: dict[tuple[str, str, int], tuple[bytes, bytes]] = {}

    def get(self, msg: int, attrs: bytes) -> bytes | None:
        """Send one GET request; the reply's attributes, None for ENOENT."""
        replies = self._request(msg, attrs, _NLM_F_REQUEST | _NLM_F_ACK)
        return replies[0] if replies else None  # an ack without data: nothing found

    @staticmethod
    def _message(msg: int, attrs: bytes, flags: int, seq: int) -> bytes:
        body = struct.pack("=BBH", _NFPROTO_INET, 0, 0) + attrs
        return struct.pack("=IHHII", 16 + len(body), _NFNL_SUBSYS_NFTABLES << 8 | msg,
                           flags, seq, 0) + body

    def _request(self, msg: int, attrs: bytes, flags: int) -> list[bytes] | None:
        """Send one request; the payloads of its replies, None for ENOENT."""
        seq = next(self._seq)
        try:
            with self._lock:
                self._sock.send(self._message(msg, attrs, flags, seq))
                return self._collect(seq)
        except OSError as exc:
            raise OSError(exc.errno, f"nf_tables netlink: {exc}") from exc

    def _elem_message(self, table: str, name: str, key: bytes, seq: int) -> bytes:
        """elem_request's message, its constant parts built once per set (the hot
        path of a flood's lookups)."""
        parts = self._heads.get((table, name, len(key)))
        if parts is None:
            probe = self._message(NFT_MSG_GETSETELEM, elem_request(table, name, key, False),
                                  _NLM_F_REQUEST | _NLM_F_ACK, 0)
            # the nlmsghdr's seq at bytes 8..12; the key ends the request (4-byte sized)
            parts = (probe[:8], probe[12:len(probe) - len(key)])
            self._heads[table, name, len(key)] = parts
        head, middle = parts
        return head + struct.pack("=I", seq) + middle + key

    def elements(self, table: str, queries: list[tuple[str, bytes]]) -> list[Found | None]:
        """element() for many (set, key) QUERIES, PIPELINE requests per write: the
        kernel answers every message of one write in order, so a hundred lookups
        cost a few system calls instead of two hundred."""
        return [None if reply is None else _found(reply_attrs(reply))
                for reply in self._replies(table, queries)]

    def present(self, table: str, queries: list[tuple[str, bytes]]) -> list[bool]:
        """Whether each (set, key) of QUERIES is there: elements() without parsing."""
        return [reply is not None for reply in self._replies(table, queries)]

    def _replies(self, table: str, queries: list[tuple[str, bytes]]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for i in range(0, len(queries), PIPELINE):
            out += self._pipeline(table, queries[i:i + PIPELINE])
        return out

    def _pipeline(self, table: str, queries: list[tuple[str, bytes]]) -> list[bytes | None]:
        seqs = [next(self._seq) for _ in queries]
        data = b"".join(self._elem_message(table, name, key, seq)
                        for (name, key), seq in zip(queries, seqs, strict=True))
        replies: dict[int, bytes] = {}
        try:
            with self._lock:
                self._sock.send(data)
                waiting = set(seqs)
                while waiting:
                    for kind, got, payload in _messages(self._sock.recv(65536)):
                        if got not in waiting:
                            continue  # a late answer to an earlier, timed-out request
                        if kind != _NLMSG_ERROR:
                            replies[got] = payload[4:]
                            continue
                        error = -struct.unpack_from("=i", payload)[0]
                        if error not in (0, errno.ENOENT):
                            raise OSError(error, os.strerror(error))
                        waiting.discard(got)  # the ack (found) or ENOENT ends a request
        except OSError as exc:
            raise OSError(exc.errno, f"nf_tables netlink: {exc}") from exc
        return [replies.get(seq) for seq in seqs]

    def _collect(self, seq: int) -> list[bytes] | None:
        replies: list[bytes] = []
        while True:
            for kind, got, payload in _messages(self._sock.recv(65536)):
                if got != seq:
                    continue  # a late answer to an earlier, timed-out request
                if kind == _NLMSG_DONE:
                    return replies
                if kind != _NLMSG_ERROR:
                    replies.append(payload[4:])  # after the nfgenmsg header
                    continue
                error = -struct.unpack_from("=i", payload)[0]
                if error == 0:
                    return replies
                if error == errno.ENOENT:
                    return None
                raise OSError(error, os.strerror(error))

    def dump(self, table: str, name: str) -> list[Found]:
        """Every element of set NAME (a timed set of single addresses). libnftables'
        JSON listing of 10k elements costs ~150 ms and ~15 MB; this ~1/20 of both."""
        return list(self.iter_dump(table, name))

    def iter_dump(self, table: str, name: str) -> Iterator[Found]:
        """dump() one element at a time: the replies are read whole first (the
        socket is free again before the caller sees an element), but parsed as
        the caller goes, so 100k elements never exist as objects at once."""
        attrs = (nla(_NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
                 + nla(_NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0"))
        replies = self._request(NFT_MSG_GETSETELEM, attrs, _NLM_F_REQUEST | _NLM_F_DUMP) or []
        return (_found(_attrs(elem)) for payload in replies
                for _, elem in _attr_list(_attrs(payload).get(_NFTA_SET_ELEM_LIST_ELEMENTS, b"")))

    def load(self, table: str, name: str) -> Iterator[Change]:
        """Every element of set NAME as a Change that adds it (interval ends
        flagged): what a Mirror starts from."""
        attrs = (nla(_NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
                 + nla(_NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0"))
        replies = self._request(NFT_MSG_GETSETELEM, attrs, _NLM_F_REQUEST | _NLM_F_DUMP)
        if replies is None:
            raise OSError(errno.ENOENT, f"nf_tables netlink: no set {name} in table {table}")
        return (_change(True, name, _attrs(elem)) for payload in replies
                for _, elem in _attr_list(_attrs(payload).get(_NFTA_SET_ELEM_LIST_ELEMENTS, b"")))

    @property
    def portid(self) -> int:
        """This socket's netlink address: the nlmsg_pid of what its writes notify."""
        return int(self._sock.getsockname()[0])

    def write(self, table: str, writes: list[Write]) -> None:
        """WRITES in order as one nf_tables transaction (all or nothing); OSError
        with the kernel's errno (ENFILE: a set is full; ENOENT: no such element,
        set or table) when it refused them."""
        messages: list[bytes] = []
        seqs: list[int] = []
        for (added, name), run in itertools.groupby(writes, lambda w: (w.added, w.set)):
            head = (nla(_NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
                    + nla(_NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0"))
            kind = _NFT_MSG_NEWSETELEM if added else _NFT_MSG_DELSETELEM
            flags = _NLM_F_REQUEST | _NLM_F_ACK | (_NLM_F_CREATE if added else 0)
            for elements in _packs(map(_elem_attr, run)):
                seqs.append(next(self._seq))
                messages.append(self._message(
                    kind, head + nla(_NFTA_SET_ELEM_LIST_ELEMENTS, elements, nested=True),
                    flags, seqs[-1]))
        if not messages:
            return
        batch = b"".join([self._batch(_NFNL_MSG_BATCH_BEGIN), *messages,
                          self._batch(_NFNL_MSG_BATCH_END)])
        try:
            with self._lock:
                self._fit(len(batch))
                self._sock.send(batch)
                self._acks(set(seqs))
        except OSError as exc:
            raise OSError(exc.errno, f"nf_tables netlink: {exc.strerror or exc}") from exc

    def _fit(self, size: int) -> None:
        """A transaction is one datagram: the send buffer grows to hold it, as
        libnftables' does (else EMSGSIZE); the kernel keeps twice what is set."""
        if size + _SEND_SLACK <= self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF):
            return
        for option in (_SO_SNDBUFFORCE, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.SOL_SOCKET, option, size + _SEND_SLACK)
                return

    def _batch(self, kind: int) -> bytes:
        # a batch delimiter: its nfgenmsg names the subsystem (res_id, big-endian)
        body = struct.pack("=BB", 0, 0) + struct.pack(">H", _NFNL_SUBSYS_NFTABLES)
        return struct.pack("=IHHII", 16 + len(body), kind, _NLM_F_REQUEST,
                           next(self._seq), 0) + body

    def _acks(self, waiting: set[int]) -> None:
        """Read until every message of a batch is acknowledged; the first error
        the kernel reports is raised once all of them are in."""
        failed = 0
        while waiting:
            for kind, got, payload in _messages(self._sock.recv(65536)):
                if kind != _NLMSG_ERROR or got not in waiting:
                    continue
                waiting.discard(got)
                failed = failed or -struct.unpack_from("=i", payload)[0]
        if failed:
            raise OSError(failed, os.strerror(failed))

    def has_table(self, table: str) -> bool:
        """Whether table inet TABLE exists (one GETTABLE)."""
        return self.get(NFT_MSG_GETTABLE, nla(NFTA_TABLE_NAME, table.encode() + b"\0")) is not None

    def element(self, table: str, name: str, key: bytes, end: bool = False) -> Found | None:
        """The element of set NAME holding KEY (see elem_request for END); None if absent."""
        reply = self.get(NFT_MSG_GETSETELEM, elem_request(table, name, key, end))
        if reply is None:
            return None
        return _found(reply_attrs(reply))


def _found(attrs: dict[int, bytes]) -> Found:
    timeout, expires = reply_times(attrs)
    return Found(reply_key(attrs), timeout, expires,
                 udata_comment(attrs.get(NFTA_SET_ELEM_USERDATA, b"")))


class Found(NamedTuple):
    """One set element as the kernel holds it."""
    key: int
    timeout: int | None
    expires: int | None
    comment: str | None


class Write(NamedTuple):
    """An element to add to (ADDED) or delete from a set of exact keys."""
    added: bool
    set: str
    key: bytes
    timeout: int | None = None  # seconds
    comment: str | None = None


_KEY_HEAD = struct.Struct("=HHHH")       # the key attribute and the value nested in it


def _elem_attr(w: Write) -> bytes:
    """One element of a write as its list attribute (nla() inlined: a flood's
    counts write thousands of these per second)."""
    n = len(w.key)  # 4 or 16: no padding
    attrs = _KEY_HEAD.pack(8 + n, _NFTA_SET_ELEM_KEY | _NLA_F_NESTED, 4 + n,
                           _NFTA_DATA_VALUE) + w.key
    if w.added and w.timeout is not None:
        attrs += _HEAD.pack(12, _NFTA_SET_ELEM_TIMEOUT) + (w.timeout * 1000).to_bytes(8, "big")
    if w.added and w.comment is not None:
        text = w.comment.encode() + b"\0"  # as nft writes it: type, length, NUL-ended text
        attrs += (_HEAD.pack(6 + len(text), NFTA_SET_ELEM_USERDATA)
                  + bytes((_NFTNL_UDATA_SET_ELEM_COMMENT, len(text))) + text
                  + bytes(-(2 + len(text)) % 4))
    return _HEAD.pack(4 + len(attrs), _NFTA_LIST_ELEM | _NLA_F_NESTED) + attrs



def _packs(attrs: Iterator[bytes]) -> Iterator[bytes]:
    """ATTRS joined into runs that fit one attribute (its length is 16 bits):
    one message per set and kind, unless a batch is that large."""
    run: list[bytes] = []
    size = 0
    for attr in attrs:
        if size + len(attr) > _ELEMENTS_MAX:
            yield b"".join(run)
            run, size = [], 0
        run.append(attr)
        size += len(attr)
    if run:
        yield b"".join(run)


class Change(NamedTuple):
    """One element added to or deleted from a set of the monitored table."""
    added: bool
    set: str
    element: Found
    end: bool  # an interval set's end element (one past the interval)


def _attach_filter(sock: socket.socket, code: list[tuple[int, int, int, int]]) -> None:
    """A classic BPF socket filter (the kernel copies it at attach)."""
    insns = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *i) for i in code))
    prog = struct.pack("HP", len(code), ctypes.addressof(insns))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, prog)


def _own_filter(own: int) -> list[tuple[int, int, int, int]]:
    """Drop, in the kernel, the datagrams OWN's commits notify but their end
    (NEWGEN, which the Monitor counts): a flood's own writes would otherwise
    cost one recv each. BPF loads are big-endian; the header is host order."""
    pid = int.from_bytes(struct.pack("=I", own), "big")
    newgen = int.from_bytes(struct.pack("=H", _NFNL_SUBSYS_NFTABLES << 8 | _NFT_MSG_NEWGEN),
                            "big")
    ld_w, ld_h, jeq, ret = 0x20, 0x28, 0x15, 0x06  # BPF_LD|W|ABS, LD|H|ABS, JMP|JEQ|K, RET|K
    return [(ld_w, 0, 0, 12),              # nlmsg_pid of the first message
            (jeq, 0, 2, pid),              # ours? else accept
            (ld_h, 0, 0, 4),               # nlmsg_type
            (jeq, 0, 1, newgen),           # our NEWGEN: accept; else drop
            (ret, 0, 0, 0xFFFFFFFF),
            (ret, 0, 0, 0)]


def _change(added: bool, name: str, fields: dict[int, bytes]) -> Change:
    """One notified (or dumped) element; a deletion needs only its key: the
    daemon's own writes come back this way, two per count under a flood."""
    flags = struct.unpack(">I", fields.get(_NFTA_SET_ELEM_FLAGS, bytes(4)))[0]
    found = _found(fields) if added else Found(reply_key(fields), None, None, None)
    return Change(added, name, found, bool(flags & _NFT_SET_ELEM_INTERVAL_END))


class Monitor:
    """nf_tables' notifications of every committed change (anyone's: libnftables,
    `nft`, another autoban), for one table, read without blocking. The kernel
    sends them during the commit, so a change is readable here as soon as the
    writer's call has returned.

    OWN: the netlink address of a socket whose writes the reader has taken in
    already (Netlink.write, then Mirror.wrote): their notifications are skipped
    unparsed. Each such commit is counted (wrote()) until its end (NEWGEN) comes
    by; a change of someone else's seen while one of ours is counted was
    committed between our last read and our write, so the copy took ours before
    theirs: it is reported lost (the copy is read again), never misordered."""

    def __init__(self, table: str, own: int | None = None) -> None:
        self.table = table.encode()
        self.own = own
        self._ahead = 0  # our commits taken in, their notifications not read yet
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                                   _NETLINK_NETFILTER)
        self._sock.bind((0, 0))
        with contextlib.suppress(OSError):  # a flood's own writes: room for a few batches
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RCVBUF)
        self._sock.setsockopt(_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, _NFNLGRP_NFTABLES)
        if own is not None:
            _attach_filter(self._sock, _own_filter(own))

    def fileno(self) -> int:
        return self._sock.fileno()

    def wrote(self) -> None:
        """One commit of OWN's was taken in by the reader."""
        self._ahead += 1

    def read(self) -> tuple[list[Change], bool]:
        """The changes notified since the last read (but OWN's), and whether some
        may be missing (the socket overflowed, the table or a set was created or
        deleted, or a change came in out of order): then what the caller copied
        must be read again whole, and nothing of ours is pending any more."""
        changes: list[Change] = []
        lost = False
        while True:
            try:
                data = self._sock.recv(1 << 17)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                lost = True  # notifications dropped: the copy is out of date
                continue
            offset, unpack, inet = 0, _NLMSG_HEAD.unpack_from, bytes([_NFPROTO_INET])
            while offset + 16 <= len(data):
                length, kind, _, _, sender = unpack(data, offset)
                if length < 16:
                    break
                payload, offset = data[offset + 16:offset + length], offset + ((length + 3) & ~3)
                if kind >> 8 != _NFNL_SUBSYS_NFTABLES:
                    continue
                if sender == self.own:
                    if kind & 0xFF == _NFT_MSG_NEWGEN:
                        self._ahead = max(0, self._ahead - 1)
                    continue
                if payload[:1] == inet:
                    lost |= self._parse(kind & 0xFF, _attrs(payload[4:]), changes)
        if lost:
            self._ahead = 0
        return changes, lost

    def _parse(self, msg: int, attrs: dict[int, bytes], changes: list[Change]) -> bool:
        if msg in (_NFT_MSG_NEWSETELEM, _NFT_MSG_DELSETELEM):
            if attrs.get(_NFTA_SET_ELEM_LIST_TABLE, b"").rstrip(b"\0") != self.table:
                return False
            if self._ahead:
                return True  # theirs before ours in the kernel, after ours in the copy
            name = attrs.get(_NFTA_SET_ELEM_LIST_SET, b"").rstrip(b"\0").decode()
            for _, elem in _attr_list(attrs.get(_NFTA_SET_ELEM_LIST_ELEMENTS, b"")):
                fields = _attrs(elem)
                if _NFTA_SET_ELEM_KEY not in fields:
                    return True  # not an element we can follow: read the sets again
                changes.append(_change(msg == _NFT_MSG_NEWSETELEM, name, fields))
            return False
        if msg in (_NFT_MSG_NEWTABLE, _NFT_MSG_DELTABLE):
            return attrs.get(NFTA_TABLE_NAME, b"").rstrip(b"\0") == self.table
        if msg in (_NFT_MSG_NEWSET, _NFT_MSG_DELSET):
            return attrs.get(_NFTA_SET_TABLE, b"").rstrip(b"\0") == self.table
        return False
