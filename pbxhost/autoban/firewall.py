"""autoban's kernel state: nftables sets in table `inet autoban`.

This module is the only code of autoban that talks to nftables: every change
goes through libnftables (python3-nftables) as one JSON transaction, never by
running `nft`. Addresses are checked with `ipaddress` and rendered canonically
before anything is sent, so nothing from a log line or a SIP packet ever
reaches nftables as text.

The table holds, per family (4, 6), the timed sets watch, jail, parole and trust
(single addresses, each with its own timeout; the comment carries the policy's
data) and the interval sets whitelist and blacklist (permanent addresses,
prefixes and ranges, auto-merge). A base chain `input` accepts whitelisted
sources and counts and drops blacklisted and jailed ones.

What libnftables 1.0.6 (Debian 12) and the kernel taught us, by experiment:

* JSON input has neither `get` nor the `auto-merge` set property. So the table
  is created from one constant text template (only the validated table name
  varies), and the two reads that must be cheap, lookup() and exists(), are
  exact-key netlink GET requests of our own (read-only; see nfnetlink.py).
* `get element` in 1.0.6 first caches every element of every set in the
  ruleset, and any failing command (a missing element) drops that cache: with
  5000 jailed addresses a six-set lookup took ~40 ms; via netlink ~0.1 ms.
  `list tables` and `list chain` also fill the whole cache (~8 ms there).
* Several `list set` commands in one JSON batch fail (a cache bug), so sets
  are listed one command each.
* A comment longer than 251 bytes makes the batch fail, is silently dropped, or
  (254+) makes libnftables exit() the whole process; nft's own parser allows 128.
* Timeouts: the kernel rejects >= U64_MAX/10^6 ms with ERANGE, and libnftables
  multiplies JSON seconds by 1000 in 64 bits, so ~2^62 s silently wraps to an
  element WITHOUT timeout. MAX_TIMEOUT below is the largest value that is
  accepted and read back exactly (binary search on kernel 6.18).
* Re-adding an existing element keeps its comment (kernel 6.18 updates the
  timeout, older kernels keep it); deleting an absent element fails the whole
  batch, and 1.0.6 has no `destroy`; in a full set (`size`) even add+delete of
  an absent element fails (ENFILE). Hence each op first reads whether its
  element is there (one netlink GET): Put is delete+add or add, Delete is
  delete or nothing, in one transaction.
* The chain hooks prerouting at raw priority (-300), before conntrack (-200).
* libnftables resolves malformed addresses in JSON via DNS; validating first
  prevents both those lookups and a batch rejected halfway through parsing."""

from __future__ import annotations

import errno
import functools
import ipaddress
import itertools
import json
import logging
import operator
import re
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import nftables

from pbxhost.autoban import nfnetlink
from pbxhost.autoban.events import address_text
from pbxhost.autoban.mirror import Mirror

log = logging.getLogger("pbxhost.autoban.firewall")

FAMILIES = ("4", "6")
CHAIN = "prerouting"
TIMED_SETS = ("watch", "jail", "sipjail", "parole", "trust")
PAIR_SETS = ("proven",)  # address . protocol . port, e.g. "192.0.2.9 udp 5060"
LIST_SETS = ("whitelist", "blacklist")
SETS = TIMED_SETS + PAIR_SETS + LIST_SETS
STANDING_SETS = ("watch", "jail", "sipjail", "parole", "trust", "whitelist")  # a verdict's input
SIP_PORTS = "sipports"  # the ports a sipjail closes (PJSIP's transports)
DEFAULT_SIP_PORTS = (5060, 5061)
PROTOS = {"tcp": 6, "udp": 17}
# IPv6 prefixes (autoban.conf `prefix6`) live in sets of their own, keyed by the
# prefix's first address and matched with the source address masked: watchnet6,
# jailnet6, sipjailnet6, parolenet6. (Interval sets would do it in one set, but
# libnftables 1.0.6 reads every element of a table's interval sets before each
# change: with thousands of prefixes, every write took ~10 ms.)
NET_BASES = ("watch", "jail", "sipjail", "parole")
LEGACY_SETS = ("watch", "jail", "parole", "whitelist", "blacklist")  # the seed's table ip

# Every set is bounded (per family): the kernel refuses a new element in a full
# set (ENFILE) and never evicts one. What autoban does then is in docs/autoban.md:
# a full watch set never blocks jailing (the daemon counts in memory instead), and
# jail/parole are separate sets, so a flood of watched addresses cannot evict them.
# An interval set's element takes two kernel slots (start and end).
DEFAULT_SIZES = {"watch": 100_000, "jail": 100_000, "sipjail": 100_000, "parole": 100_000,
                 "trust": 10_000, "proven": 100_000, "whitelist": 20_000, "blacklist": 20_000}
_ENFILE_TEXT = "Too many open files in system"  # strerror(ENFILE): the set is full

# Largest element timeout in seconds: the kernel's limit (ms < U64_MAX / 10^6,
# nf_msecs_to_jiffies64); 18446744074 s gives ERANGE. About 584 years.
MAX_TIMEOUT = 18_446_744_073
# nft's own limit for comments (bytes of UTF-8); `nft -f` of a listed ruleset
# must still load, and the JSON path breaks at 252 bytes.
COMMENT_MAX = 128

Json = dict[str, Any]
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_SET_NOTES = {
    "watch": "addresses being watched; comment: the policy's event times",
    "jail": "jailed addresses, dropped until the timeout ends",
    "sipjail": "jailed on unproven (UDP) evidence: their SIP dropped until the timeout ends",
    "proven": "address, protocol, port of a successful login: accepted before any jail",
    "parole": "addresses released from jail, still remembered",
    "trust": "addresses that logged in successfully; never jailed",
    "whitelist": "never blocked (addresses, prefixes, ranges)",
    "blacklist": "always dropped (addresses, prefixes, ranges)",
}
_RULES = (  # (set, match, verdict, what the rule means to someone reading `nft list ruleset`)
    ("whitelist", "{ip} saddr @whitelist{fam}", "accept",
     "whitelisted source: accepted, autoban never blocks it"),
    ("blacklist", "{ip} saddr @blacklist{fam}", "counter drop", "blacklisted source: dropped"),
    ("proven", "{ip} saddr . meta l4proto . th sport @proven{fam}", "accept",
     "proven address and port (a successful login): accepted before any jail"),
    ("jail", "{ip} saddr @jail{fam}", "counter drop",
     "jailed source: dropped until its sentence ends"),
    ("sipjail", "meta l4proto {{ tcp, udp }} th dport @" + SIP_PORTS + " {ip} saddr @sipjail{fam}",
     "counter drop", "jailed on UDP evidence: its SIP dropped until its sentence ends"),
)


class FirewallError(Exception):
    """nftables refused or failed; the message includes what nft said."""


class SetFullError(FirewallError):
    """A set is at its size: the kernel refused a new element (ENFILE)."""


class Element(NamedTuple):
    set: str             # base name, e.g. "jail"
    addr: str            # "192.0.2.9", "2001:db8::9", "192.0.2.0/24", "192.0.2.1-192.0.2.200"
    timeout: int | None  # the element's full timeout in seconds
    expires: int | None  # remaining seconds
    comment: str | None


class Put(NamedTuple):
    """Add or replace an element; replacing resets its timeout and comment."""
    set: str
    addr: str
    timeout: int | None = None
    comment: str | None = None


class Delete(NamedTuple):
    """Remove an element; an absent one is not an error."""
    set: str
    addr: str


@dataclass(frozen=True)
class _Span:
    """A validated address, prefix or range as integers."""
    version: int
    lo: int
    hi: int
    single: bool  # written as one address (no prefix, no range)


@dataclass(frozen=True)
class _Piece:
    """One interval-set element in the planning model."""
    lo: int
    hi: int
    comment: str | None


class _Op(NamedTuple):
    """A validated Put (put=True) or Delete."""
    put: bool
    base: str
    span: _Span
    timeout: int | None
    comment: str | None
    pair: tuple[str, int] | None = None  # proven: protocol and port (Delete: None = all)

    @property
    def name(self) -> str:
        """The kernel set: BASE4, BASE6, or BASEnet6 for an IPv6 prefix."""
        return _set_name(self.base, NET if self.net else self.span.version)

    @property
    def net(self) -> bool:
        """An IPv6 prefix in a timed set: kept in BASEnet6 under its first address."""
        return self.base in NET_BASES and self.span.version == 6 and not self.span.single

    def addr_text(self) -> str:
        return _text(self.span.version, self.span.lo, self.span.hi)


NET = 0  # the family of a base's IPv6 /prefix6 set (BASEnet6) in _set_name
_SET_NAMES = {(base, fam): f"{base}{fam or 'net6'}" for base in SETS for fam in (NET, 4, 6)}


def _set_name(base: str, fam: int | str) -> str:
    """The kernel set of BASE for a family (4 or 6, as number or text) or NET."""
    return _SET_NAMES[base, int(fam)]


# ---- addresses -------------------------------------------------------------

def _unbracket(text: str) -> str:
    return text[1:-1] if text.startswith("[") and text.endswith("]") else text


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(_unbracket(text))
    # A v4 client of a dual-stack socket shows up as ::ffff:a.b.c.d, but its
    # packets are IPv4: only the v4 sets can match them.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


@functools.lru_cache(maxsize=8192)  # a flood's address: looked up, then written
def _span(addr: str) -> _Span:
    """Parse an address, a prefix or a first-last range, written as pbxhost.conf
    accepts them ([v6] brackets, host bits in a prefix are cleared, as nft does).
    ValueError if invalid."""
    if not isinstance(addr, str) or "%" in addr:  # a scope (fe80::1%eth0) can't be matched
        raise ValueError(f"{addr!r} is not an address nftables can match")
    if (single := _single(addr)) is not None:
        return single
    if "-" in addr:
        first, last = (_address(part) for part in addr.split("-", 1))
        if first.version != last.version or int(first) > int(last):
            raise ValueError(f"{addr!r} is not a range")
        return _Span(first.version, int(first), int(last), False)
    if "/" in addr:
        host, _, length = addr.partition("/")
        net = ipaddress.ip_network(f"{_unbracket(host)}/{length}", strict=False)
        return _Span(net.version, int(net.network_address), int(net.broadcast_address), False)
    ip = _address(addr)
    return _Span(ip.version, int(ip), int(ip), True)


def _single(text: str) -> _Span | None:
    """_span of one plain address through inet_pton, 10x faster than ipaddress
    (a flood's hot path); None for anything else, which _span parses. glibc's
    inet_pton refuses what ipaddress refuses (leading zeros, short forms)."""
    try:
        return _single_span(4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big"))
    except OSError:
        pass
    try:
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, _unbracket(text)), "big")
    except OSError:
        return None
    if value >> 32 == 0xFFFF:  # ::ffff:a.b.c.d is IPv4 on the wire (see _address)
        return _single_span(4, value & 0xFFFFFFFF)
    return _single_span(6, value)


def _single_span(version: int, value: int) -> _Span:
    return _Span(version, value, value, True)


def family(addr: str) -> str:
    """"4" or "6" for an address, prefix or range; ValueError if invalid."""
    return str(_span(addr).version)


def _ip(version: int, value: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


def _packed(version: int, value: int) -> bytes:
    """_ip(version, value).packed without the object: a netlink key."""
    return value.to_bytes(4 if version == 4 else 16, "big")


def _value(version: int, lo: int, hi: int) -> str | Json:
    """The JSON element value, in the form nft itself lists it."""
    first, last = _ip(version, lo), _ip(version, hi)
    if lo == hi:
        return str(first)
    size = hi - lo + 1
    if size & (size - 1) == 0 and lo % size == 0:  # exactly one CIDR block
        bits = 32 if version == 4 else 128
        return {"prefix": {"addr": str(first), "len": bits - size.bit_length() + 1}}
    return {"range": [str(first), str(last)]}


def _text(version: int, lo: int, hi: int) -> str:
    value = _value(version, lo, hi)
    if isinstance(value, str):
        return value
    if "prefix" in value:
        return f"{value['prefix']['addr']}/{value['prefix']['len']}"
    return "-".join(value["range"])


def _listed_span(value: str | Json) -> _Span:
    """A value as nft lists it (address, prefix or range) as a span."""
    if isinstance(value, str):
        return _span(value)
    if "prefix" in value:
        return _span(f"{value['prefix']['addr']}/{value['prefix']['len']}")
    return _span("-".join(value["range"]))


# ---- validation --------------------------------------------------------------

def _check_comment(comment: str | None) -> None:
    if comment is None:
        return
    if not isinstance(comment, str) or not comment.isprintable():
        raise ValueError(f"comment {comment!r}: only printable text on one line")
    if len(comment.encode()) > COMMENT_MAX:
        raise ValueError(f"comment {comment!r} is longer than {COMMENT_MAX} bytes")


def _check_timeout(timeout: int | None) -> int | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
        raise ValueError(f"timeout {timeout!r}: whole seconds, at least 1")
    if timeout > MAX_TIMEOUT:
        log.debug("timeout %d s clamped to %d s", timeout, MAX_TIMEOUT)
    return min(timeout, MAX_TIMEOUT)


def _check_base(base: str) -> str:
    if base not in SETS:
        raise ValueError(f"unknown set {base!r}; known: {', '.join(SETS)}")
    return base


def _flags(base: str, fam: str) -> tuple[str, ...]:
    """A set's flags as nft lists them."""
    return ("interval",) if base in LIST_SETS else ("timeout",)


def _is_prefix(span: _Span) -> bool:
    size = span.hi - span.lo + 1
    return size & (size - 1) == 0 and span.lo % size == 0


def _parse_pair(text: str) -> tuple[str, tuple[str, int] | None]:
    """`192.0.2.9 udp 5060` → ("192.0.2.9", ("udp", 5060)); `192.0.2.9` → (…, None)."""
    words = text.split() if isinstance(text, str) else []
    if len(words) == 1:
        return words[0], None
    if len(words) == 3 and words[1] in PROTOS and words[2].isdigit() and 0 < int(words[2]) < 65536:
        return words[0], (words[1], int(words[2]))
    raise ValueError(f"{text!r}: a proven element is `ADDRESS udp|tcp PORT`")


def _pair_text(version: int, key: bytes) -> str:
    """A proven4/6 key (address, protocol and port, each padded to 4 bytes) as text."""
    size = 4 if version == 4 else 16
    proto = next((name for name, number in PROTOS.items() if number == key[size]), str(key[size]))
    port = int.from_bytes(key[size + 4:size + 6], "big")
    return f"{address_text(version, int.from_bytes(key[:size], 'big'))} {proto} {port}"


def _pair_key(op: _Op) -> bytes:
    assert op.pair is not None
    proto, port = op.pair
    return (_packed(op.span.version, op.span.lo) + bytes([PROTOS[proto], 0, 0, 0])
            + port.to_bytes(2, "big") + bytes(2))


def _check(op: Put | Delete) -> _Op:
    """Validate one operation; raises ValueError before anything is sent."""
    base = _check_base(op.set)
    if base in PAIR_SETS:
        addr, pair = _parse_pair(op.addr)
        span = _span(addr)
        if not span.single or (pair is None and isinstance(op, Put)):
            raise ValueError(f"{op.addr!r}: a proven element is `ADDRESS udp|tcp PORT`")
        if not isinstance(op, Put):
            return _Op(False, base, span, None, None, pair)
        _check_comment(op.comment)
        return _Op(True, base, span, _check_timeout(op.timeout), op.comment, pair)
    span = _span(op.addr)
    if base in TIMED_SETS and not span.single and not (
            span.version == 6 and base in NET_BASES and _is_prefix(span)):
        raise ValueError(f"{op.addr!r}: set {base} takes single addresses "
                         "(and IPv6 prefixes of length prefix6) only")
    if not isinstance(op, Put):
        return _Op(False, base, span, None, None)
    if base in LIST_SETS and op.timeout is not None:
        raise ValueError(f"set {base} is permanent: no timeout")
    _check_comment(op.comment)
    return _Op(True, base, span, _check_timeout(op.timeout), op.comment)


# ---- reading nft's answers ---------------------------------------------------

def _element(base: str, item: str | Json) -> Element:
    """An element as JSON lists it: a bare value or {"elem": {val, timeout, ...}}."""
    attrs: Json = item["elem"] if isinstance(item, dict) and "elem" in item else {"val": item}
    span = _listed_span(attrs["val"])
    timeout = attrs.get("timeout")
    expires = attrs.get("expires", 0 if timeout is not None else None)
    return Element(base, _text(span.version, span.lo, span.hi), timeout, expires,
                   attrs.get("comment"))


def _set_ref(exprs: list[Json]) -> str | None:
    """The set a rule matches the source against ("jail4"), if any."""
    found = None
    for expr in exprs:
        right = expr.get("match", {}).get("right")
        if isinstance(right, str) and right.startswith("@") and right[1:] != SIP_PORTS:
            found = right[1:]
    return found


def _packets(exprs: list[Json]) -> int | None:
    return next((e["counter"]["packets"] for e in exprs if "counter" in e), None)


# ---- the interval-set model --------------------------------------------------
# whitelist/blacklist behave as sets of addresses: Delete removes exactly the
# given addresses (punching a hole into a bigger element if needed) and Put
# merges with what it overlaps or touches, as nft's auto-merge would. The plan
# is computed here so the batch holds only exact deletes and non-overlapping adds.

def _put_piece(pieces: list[_Piece], lo: int, hi: int, comment: str | None) -> list[_Piece]:
    inside = next((p for p in pieces if p.lo <= lo and hi <= p.hi), None)
    if inside is not None:
        if (inside.lo, inside.hi) != (lo, hi):
            return pieces  # already covered: keep the bigger element and its comment
        return [replace(p, comment=comment) if p is inside else p for p in pieces]
    touching = [p for p in pieces if p.lo <= hi + 1 and lo <= p.hi + 1]
    rest = [p for p in pieces if p not in touching]
    if comment is None:
        comment = next((p.comment for p in touching if p.comment is not None), None)
    merged = _Piece(min([lo, *(p.lo for p in touching)]),
                    max([hi, *(p.hi for p in touching)]), comment)
    return sorted([*rest, merged], key=lambda p: p.lo)


def _delete_piece(pieces: list[_Piece], lo: int, hi: int) -> list[_Piece]:
    kept: list[_Piece] = []
    for p in pieces:
        if p.hi < lo or hi < p.lo:
            kept.append(p)
            continue
        if p.lo < lo:
            kept.append(_Piece(p.lo, lo - 1, p.comment))
        if hi < p.hi:
            kept.append(_Piece(hi + 1, p.hi, p.comment))
    return kept


def _plan(pieces: list[_Piece], ops: list[_Op]) -> list[_Piece]:
    for op in ops:
        if op.put:
            pieces = _put_piece(pieces, op.span.lo, op.span.hi, op.comment)
        else:
            pieces = _delete_piece(pieces, op.span.lo, op.span.hi)
    return pieces


def _elem(version: int, piece: _Piece) -> str | Json:
    value = _value(version, piece.lo, piece.hi)
    return value if piece.comment is None else {"elem": {"val": value, "comment": piece.comment}}


def _timed_elem(op: _Op, key: str) -> str | Json:
    attrs: Json = {"val": key}
    if op.timeout is not None:
        attrs["timeout"] = op.timeout
    if op.comment is not None:
        attrs["comment"] = op.comment
    return {"elem": attrs} if len(attrs) > 1 else attrs["val"]


@functools.cache
def _mirror_names(bases: tuple[str, ...], version: int) -> tuple[dict[str, str], ...]:
    """BASES' sets a lookup reads for an address of VERSION, as {base: set name}:
    the exact-key ones, the /prefix6 ones (IPv6) and the interval ones."""
    exact = {b: _set_name(b, version) for b in bases if b not in LIST_SETS}
    nets = {b: _set_name(b, NET) for b in bases if b in NET_BASES and version == 6}
    return exact, nets, {b: _set_name(b, version) for b in bases if b in LIST_SETS}


# ---- the firewall ------------------------------------------------------------

class Firewall:
    """Table `inet <table>` through one libnftables context and one read-only
    netlink socket (FOLLOW: and a notification socket), opened here: they act in
    the network namespace of the thread that constructed the Firewall, whichever
    thread calls it later."""

    MAX_TIMEOUT = MAX_TIMEOUT

    def __init__(self, table: str = "autoban", sizes: dict[str, int] | None = None,
                 prefix6: int = 64, follow: bool = False) -> None:
        if not isinstance(table, str) or not _NAME.fullmatch(table):
            raise ValueError(f"table name {table!r}: letters, digits, _ (max 64)")
        self.table = table
        self.sizes = {**DEFAULT_SIZES, **(sizes or {})}
        if not isinstance(prefix6, int) or not 1 <= prefix6 <= 128:
            raise ValueError(f"prefix6 must be 1..128, not {prefix6!r}")
        self.prefix6 = prefix6
        self._mask6 = ((1 << 128) - 1) ^ ((1 << (128 - prefix6)) - 1)
        if any(not isinstance(n, int) or n < 1 for n in self.sizes.values()):
            raise ValueError(f"set sizes must be positive: {self.sizes}")
        self._lock = threading.Lock()  # one nft context: one call at a time
        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._netlink = nfnetlink.Netlink()
        self._mirror: Mirror | None = None
        if follow:
            # lookups and a write's presence reads from a copy of the sets kept by
            # the kernel's notifications (mirror.py): autoband's flood path
            names = [_set_name(base, fam) for base in TIMED_SETS for fam in FAMILIES]
            names += [_set_name(base, NET) for base in NET_BASES]
            self._mirror = Mirror(nfnetlink.Monitor(table, own=self._netlink.portid), names,
                                  [_set_name(base, fam) for base in LIST_SETS for fam in FAMILIES],
                                  lambda name: self._netlink.load(table, name))

    def notifications(self) -> int | None:
        """FOLLOW: the file descriptor that becomes readable when the table
        changes; the caller's event loop calls follow_changes() then, so an
        element's deadline is counted from the moment it was written."""
        return None if self._mirror is None else self._mirror.fileno()

    def follow_changes(self) -> None:
        self._refreshed()

    def _refreshed(self) -> Mirror | None:
        if self._mirror is not None:
            try:
                self._mirror.refresh()
            except OSError as exc:
                raise FirewallError(str(exc)) from exc
        return self._mirror

    # -- talking to libnftables

    def _call(self, text: str, terse: bool = False) -> tuple[int, str, str]:
        with self._lock:
            self._nft.set_terse_output(terse)  # terse: list sets without their elements
            rc, out, err = self._nft.cmd(text)
        return int(rc), str(out), str(err)

    def _json(self, commands: list[Json], terse: bool = False) -> tuple[int, list[Json], str]:
        rc, out, err = self._call(json.dumps({"nftables": commands}), terse)
        return rc, json.loads(out)["nftables"] if out else [], err

    def _run(self, commands: list[Json], terse: bool = False) -> list[Json]:
        rc, items, err = self._json(commands, terse)
        if rc != 0:
            raise self._failure(err)
        return items

    def _failure(self, err: str) -> FirewallError:
        """The error to raise for ERR: the table being gone is the usual cause."""
        if not self.exists():
            return FirewallError(f"table inet {self.table} is missing")
        if _ENFILE_TEXT in err:
            return SetFullError(f"set full: nft: {' '.join(err.split())}")
        return FirewallError(f"nft: {' '.join(err.split())}")

    def _ref(self, name: str, family: str = "inet") -> Json:
        return {"family": family, "table": self.table, "name": name}

    # -- the table

    def exists(self) -> bool:
        """Whether table inet <table> is there (one netlink GETTABLE)."""
        try:
            return self._netlink.has_table(self.table)
        except OSError as exc:
            raise FirewallError(str(exc)) from exc

    def current(self) -> bool:
        """Whether the table is there exactly as this version builds it (sets,
        sizes, chain and rules): a table of an older release is not."""
        return self._describe() == self._expected()

    def ensure(self) -> bool:
        """Create the table, sets and chain if missing (or rebuild them if
        incomplete or outdated) in one transaction; True if it (re)created them.
        A rebuild starts empty: the caller keeps the elements (daemon.py)."""
        found = self._describe()
        if found == self._expected():
            return False
        if found is not None:
            log.warning("table inet %s is incomplete or outdated; rebuilding it", self.table)
        rc, _, err = self._call(self._skeleton())
        if rc != 0:
            raise FirewallError(f"creating table inet {self.table}: nft: {' '.join(err.split())}")
        log.info("created table inet %s", self.table)
        return True

    def remove(self, family: str = "inet") -> None:
        """Delete the table; an absent table is fine (add+delete in one batch)."""
        table = {"family": family, "name": self.table}
        self._run([{"add": {"table": table}}, {"delete": {"table": table}}])
        log.info("removed table %s %s", family, self.table)

    def legacy_elements(self) -> list[Element] | None:
        """The elements of the seed's `table ip <table>` (sets watch, jail, parole,
        whitelist, blacklist; IPv4 only), None when that table is not there."""
        rc, _, _ = self._json([{"list": {"table": {"family": "ip", "name": self.table}}}],
                              terse=True)
        if rc != 0:
            return None
        found: list[Element] = []
        for base in LEGACY_SETS:
            rc, items, _ = self._json([{"list": {"set": self._ref(base, "ip")}}])
            if rc == 0:
                elems = next(i["set"] for i in items if "set" in i).get("elem", [])
                found += [_element(base, item) for item in elems]
        return found

    def _expected(self) -> tuple[dict[str, tuple[Any, ...]], tuple[str, ...]]:
        sizes: dict[str, tuple[Any, ...]] = {
            _set_name(base, fam): (self.sizes[base], _flags(base, fam))
            for base in SETS for fam in FAMILIES}
        sizes.update({_set_name(base, NET): (self.sizes[base], ("timeout",))
                      for base in NET_BASES})
        sizes[SIP_PORTS] = (None, ("interval",))
        return sizes, tuple(note for _, note in self._rules())

    def _rules(self) -> list[tuple[str, str]]:
        """The chain's rules and their comments (the comments tell a table of
        another version or another prefix6 apart)."""
        mask = str(ipaddress.IPv6Address(self._mask6))
        rules = []
        for base, match, verdict, note in _RULES:
            for fam in FAMILIES:
                rules.append((f"{match.format(ip='ip' if fam == '4' else 'ip6', fam=fam)} "
                              f"{verdict}", f"autoban: IPv{fam} {note}"))
            if base in NET_BASES:  # jail, sipjail: the prefixes too
                net = match.format(ip="ip6", fam="6").replace(
                    f"ip6 saddr @{base}6", f"ip6 saddr & {mask} @{base}net6")
                rules.append((f"{net} {verdict}", f"autoban: IPv6 /{self.prefix6} {note}"))
        return rules

    def _describe(self) -> tuple[dict[str, tuple[Any, ...]], tuple[str, ...]] | None:
        """Our sets with their sizes and flags, and the rule comments; None
        without the table."""
        if not self.exists():
            return None
        items = self._run([{"list": {"sets": {"family": "inet"}}}], terse=True)
        wanted = self._expected()[0]
        sizes = {i["set"]["name"]: (i["set"].get("size"), tuple(i["set"].get("flags", ())))
                 for i in items
                 if "set" in i and i["set"]["table"] == self.table
                 and i["set"]["name"] in wanted}
        rc, rules, _ = self._json([{"list": {"chain": self._ref(CHAIN)}}])
        notes = tuple(r["rule"].get("comment", "") for r in rules if "rule" in r) if rc == 0 else ()
        return sizes, notes

    def _skeleton(self) -> str:
        """The whole table as one nft transaction, replacing any old one. Text, as
        1.0.6 JSON cannot declare auto-merge; only the checked table name varies."""
        sets = [f'  set {SIP_PORTS} {{ type inet_service; flags interval; '
                f'comment "the ports a sipjail closes: PJSIP transports"; }}']
        for base in SETS:
            for fam in FAMILIES:
                flags = ", ".join(_flags(base, fam)) + ("; auto-merge" if base in LIST_SETS else "")
                kind = (f"ipv{fam}_addr . inet_proto . inet_service" if base in PAIR_SETS
                        else f"ipv{fam}_addr")
                sets.append(f'  set {_set_name(base, fam)} {{ type {kind}; flags {flags}; '
                            f'size {int(self.sizes[base])}; comment "{_SET_NOTES[base]}"; }}')
            if base in NET_BASES:
                sets.append(f'  set {_set_name(base, NET)} {{ type ipv6_addr; flags timeout; '
                            f'size {int(self.sizes[base])}; comment "IPv6 prefixes: '
                            f'{_SET_NOTES[base]}"; }}')
        rules = [f'    {rule} comment "{note}"' for rule, note in self._rules()]
        return "\n".join([
            f"add table inet {self.table}", f"delete table inet {self.table}",
            f"table inet {self.table} {{", '  comment "autoban: intrusion prevention for Asterisk"',
            # prerouting at raw priority: before conntrack, so a jailed flood creates no
            # conntrack entries, a tracked flow is cut at the jailing, and traffic
            # forwarded to containers on this host is dropped too (on purpose).
            *sets, f"  chain {CHAIN} {{",
            "    type filter hook prerouting priority raw; policy accept;", *rules,
            "  }", "}", ""])

    # -- reading

    def lookup(self, addr: str) -> dict[str, Element]:
        """The sets that hold one address (whitelist/blacklist: the element that
        covers it; IPv6: the address itself, else its /prefix6 element), by base
        name. Exact-key netlink reads: cost independent of set sizes."""
        span = _span(addr)
        if not span.single:
            raise ValueError(f"{addr!r}: lookup takes a single address")
        if not self.exists():
            raise FirewallError(f"table inet {self.table} is missing")
        key = _packed(span.version, span.lo)
        found: dict[str, Element] = {}
        for base in (b for b in SETS if b not in PAIR_SETS):
            element = self._get(base, span.version, key)
            if element is None and span.version == 6 and base in NET_BASES:
                element = self._get_net(base, span.lo)
            if element is not None:
                found[base] = element
        return found

    def lookup_many(self, addrs: list[str],
                    bases: Iterable[str] = STANDING_SETS) -> list[dict[str, Element]]:
        """lookup() of each of ADDRS in BASES (default: the sets a verdict reads),
        all exact-key reads pipelined on one socket, or from the copy when
        following (a table gone is a notification: the copy's reload fails)."""
        bases = tuple(b for b in bases if b not in PAIR_SETS)
        if (mirror := self._refreshed()) is not None:
            return [self._from_mirror(mirror, _span(addr), bases) for addr in addrs]
        if not self.exists():
            raise FirewallError(f"table inet {self.table} is missing")
        queries: list[tuple[str, bytes]] = []
        plans: list[list[tuple[str, int, int, int]]] = []  # (base, version, value, query index)
        for addr in addrs:
            span = _span(addr)
            if not span.single:
                raise ValueError(f"{addr!r}: lookup takes a single address")
            plan = []
            for base in bases:
                plan.append((base, span.version, span.lo, len(queries)))
                queries.append((_set_name(base, span.version), _packed(span.version, span.lo)))
                if span.version == 6 and base in NET_BASES:
                    first = span.lo & self._mask6
                    plan.append((base, 0, first, len(queries)))
                    queries.append((_set_name(base, NET), _packed(6, first)))
            plans.append(plan)
        try:
            answers = self._netlink.elements(self.table, queries)
        except OSError as exc:
            raise FirewallError(str(exc)) from exc
        out = []
        for plan in plans:
            found: dict[str, Element] = {}
            for base, version, value, index in plan:
                got = answers[index]
                if got is None or base in found:
                    continue  # the address's own element before its prefix's
                if version == 0:
                    found[base] = Element(base, self._net_text(value), got.timeout,
                                          got.expires, got.comment)
                elif base in LIST_SETS:  # an interval: its end needs a read of its own
                    element = self._get(base, version, _packed(version, value))
                    if element is not None:
                        found[base] = element
                else:
                    found[base] = Element(base, address_text(version, got.key), got.timeout,
                                          got.expires, got.comment)
            out.append(found)
        return out

    def _from_mirror(self, mirror: Mirror, span: _Span,
                     bases: tuple[str, ...]) -> dict[str, Element]:
        """lookup_many's answer for one address from the mirror (no system call)."""
        if not span.single:
            raise ValueError(f"{_text(span.version, span.lo, span.hi)}: lookup takes a "
                             "single address")
        version, value = span.version, span.lo
        exact, nets, intervals = _mirror_names(bases, version)
        found: dict[str, Element] = {}
        if held := mirror.holding(exact.values(), value):
            text = address_text(version, value)
            for base, name in exact.items():
                if (got := held.get(name)) is not None:
                    found[base] = Element(base, text, got.timeout, got.expires, got.comment)
        if nets:  # IPv6: the /prefix6 element, where the address has none of its own
            first = value & self._mask6
            if held := mirror.holding(nets.values(), first):
                for base, name in nets.items():
                    if base not in found and (got := held.get(name)) is not None:
                        found[base] = Element(base, self._net_text(first), got.timeout,
                                              got.expires, got.comment)
        for base, name in intervals.items():
            top = (1 << (32 if version == 4 else 128)) - 1
            if (covering := mirror.interval(name, value, top)) is not None:
                start, last = covering
                found[base] = Element(base, _text(version, start.key, last), start.timeout,
                                      start.expires, start.comment)
        return found

    def _get_net(self, base: str, value: int) -> Element | None:
        first = value & self._mask6
        try:
            found = self._netlink.element(self.table, _set_name(base, NET), _packed(6, first))
        except OSError as exc:
            raise FirewallError(str(exc)) from exc
        if found is None:
            return None
        return Element(base, self._net_text(first), found.timeout, found.expires, found.comment)

    def _net_text(self, first: int) -> str:
        return f"{address_text(6, first)}/{self.prefix6}"

    def _get(self, base: str, version: int, key: bytes) -> Element | None:
        name = _set_name(base, version)
        try:
            found = self._netlink.element(self.table, name, key)
            if found is None:
                return None
            hi = found.key
            if base in LIST_SETS:
                # the kernel keeps an interval's end as an element one past it,
                # absent when the interval reaches the top of the address space
                end = self._netlink.element(self.table, name, key, end=True)
                hi = end.key - 1 if end else (1 << (32 if version == 4 else 128)) - 1
        except OSError as exc:
            raise FirewallError(str(exc)) from exc
        return Element(base, _text(version, found.key, hi), found.timeout, found.expires,
                       found.comment)

    def elements(self, sets: Iterable[str] = SETS) -> list[Element]:
        """Every element of those base sets, both families."""
        return list(self.iter_elements(sets))

    def iter_elements(self, sets: Iterable[str] = SETS) -> Iterator[Element]:
        """elements() one at a time (the state file is written this way: with
        100k elements, a list of them would double autoband's memory)."""
        for base in [_check_base(s) for s in sets]:
            for fam in FAMILIES:
                yield from self._set_elements(base, fam)

    def _set_elements(self, base: str, fam: str) -> Iterator[Element]:
        if base in PAIR_SETS:
            return self._dump_pairs(base, int(fam))
        if base in NET_BASES and fam == "6":
            singles = self._dump(base, 6)
            try:
                nets = list(self._netlink.iter_dump(self.table, _set_name(base, NET)))
            except OSError as exc:
                raise FirewallError(str(exc)) from exc
            return itertools.chain(singles, (
                Element(base, self._net_text(e.key), e.timeout, e.expires, e.comment)
                for e in nets))
        if base in TIMED_SETS:
            return self._dump(base, int(fam))
        # intervals come as start/end pairs: libnftables joins them
        return iter([_element(base, item) for item in self._list(_set_name(base, fam))])

    def salvage(self) -> list[Element]:
        """Every element of those of our sets that exist (a table of an older
        release may lack some): what an upgrade keeps."""
        found: list[Element] = []
        for base in SETS:
            for fam in FAMILIES:
                try:
                    found += self._set_elements(base, fam)
                except FirewallError as exc:
                    log.info("set %s%s not kept: %s", base, fam, exc)
        return found

    def _dump_pairs(self, base: str, version: int) -> Iterator[Element]:
        try:
            dumped = self._netlink.iter_dump(self.table, _set_name(base, version))
        except OSError as exc:
            raise FirewallError(str(exc)) from exc
        size = 12 if version == 4 else 24
        return (Element(base, _pair_text(version, e.key.to_bytes(size, "big")), e.timeout,
                        e.expires, e.comment) for e in dumped)

    def _dump(self, base: str, version: int) -> Iterator[Element]:
        try:
            dumped = self._netlink.iter_dump(self.table, _set_name(base, version))
        except OSError as exc:
            raise FirewallError(str(exc)) from exc
        return (Element(base, address_text(version, e.key), e.timeout, e.expires, e.comment)
                for e in dumped)

    def _list(self, name: str) -> list[str | Json]:
        # One set per command: several `list set` in one batch fail in 1.0.6.
        items = self._run([{"list": {"set": self._ref(name)}}])
        elems: list[str | Json] = next(i["set"] for i in items if "set" in i).get("elem", [])
        return elems

    def counters(self) -> dict[str, int]:
        """Packets dropped per rule: {"blacklist4": n, ..., "jail6": n}."""
        items = self._run([{"list": {"chain": self._ref(CHAIN)}}])
        found: dict[str, int] = {}
        for rule in (i["rule"] for i in items if "rule" in i):
            name, packets = _set_ref(rule["expr"]), _packets(rule["expr"])
            if name is not None and packets is not None:
                name = name.replace("net6", "6")  # prefixes count with their set
                found[name] = found.get(name, 0) + packets
        return found

    # -- writing

    def apply(self, ops: Sequence[Put | Delete], fresh: bool = False) -> None:
        """Apply OPS in order as one atomic transaction: all or nothing. Every
        operation is validated first (ValueError) so nothing is half-applied.
        FRESH: filling a table just built, the timed elements are not read first
        (a Put of one that is there anyway keeps its comment)."""
        checked = [_check(op) for op in ops]
        for op in checked:
            if op.net and op.span.hi - op.span.lo + 1 != 1 << (128 - self.prefix6):
                raise ValueError(f"{op.addr_text()}: IPv6 prefixes in timed sets are "
                                 f"/{self.prefix6} (prefix6)")
        if not checked:
            return
        if self._mirror is not None and all(o.base in TIMED_SETS for o in checked):
            self._write_timed(self._mirror, checked, fresh)
            return
        commands = [*self._timed_commands(checked, fresh), *self._pair_commands(checked, fresh),
                    *self._interval_commands(checked)]
        if commands:
            self._run(commands)
            # the notifications of this commit are there now: taken in at once, the
            # deadlines they tell are counted from now, not from a later read
            self._refreshed()
        log.debug("applied %d operations as %d nft commands", len(checked), len(commands))

    def _write_timed(self, mirror: Mirror, ops: list[_Op], fresh: bool) -> None:
        """FOLLOW's path for timed elements only (every count and jailing of
        autoband, a restore's batches): one netlink batch, taken into the mirror
        as written. A fraction of libnftables' memory and time: 100k elements
        restored at boot through it stay within autoband's 60 MB."""
        writes = [nfnetlink.Write(added, name, _packed(op.span.version, op.span.lo),
                                  op.timeout, op.comment)
                  for added, name, op in self._timed_plan(ops, fresh)]
        try:
            self._netlink.write(self.table, writes)
        except OSError as exc:
            if exc.errno == errno.ENFILE:
                raise SetFullError(f"set full: {exc.strerror}") from exc
            if not self.exists():
                raise FirewallError(f"table inet {self.table} is missing") from exc
            raise FirewallError(str(exc)) from exc
        mirror.wrote(writes)
        log.debug("applied %d operations as %d netlink elements", len(ops), len(writes))

    def _timed_commands(self, ops: list[_Op], fresh: bool = False) -> list[Json]:
        commands: list[Json] = []
        for added, name, op in self._timed_plan(ops, fresh):
            # net elements are keyed by the prefix's first address
            key = str(_ip(op.span.version, op.span.lo))
            elem = _timed_elem(op, key) if added else key
            commands.append({"add" if added else "delete": {
                "element": {**self._ref(name), "elem": [elem]}}})
        return commands

    def _timed_plan(self, ops: list[_Op], fresh: bool) -> list[tuple[bool, str, _Op]]:
        """The timed elements' writes as (add?, set, op): each element the ops touch is
        deleted once if it is there (deleting an absent one fails the batch; add
        and delete of an absent one fails too once the set is full), then added
        once if the last op on it puts it (delete then add resets timeout and
        comment). Deletions first, then additions, each grouped by set: a flood's
        batch is a few netlink messages, not one per element."""
        last: dict[tuple[str, int], _Op] = {}  # each element's final op, first-touch order
        for op in self._with_covering_nets([o for o in ops if o.base in TIMED_SETS]):
            last[op.name, op.span.lo] = op
        present: dict[tuple[str, int], bool] = {}
        # What is there now, every read of the batch in one pipeline. An element that
        # expires between this read and the batch fails the batch (it is gone); the
        # daemon retries once with a fresh read.
        if not fresh:
            wheres = list(last)
            # the kernel is asked only near a deadline
            if (mirror := self._refreshed()) is not None:
                for where in wheres:
                    if (known := mirror.present(*where)) is not None:
                        present[where] = known
                wheres = [w for w in wheres if w not in present]
            try:
                there = self._netlink.present(self.table, [
                    (name, _packed(last[name, lo].span.version, lo)) for name, lo in wheres])
            except OSError as exc:
                raise FirewallError(str(exc)) from exc
            present.update(zip(wheres, there, strict=True))
        deletes = [(False, name, op) for (name, lo), op in last.items() if present.get((name, lo))]
        adds = [(True, name, op) for (name, _), op in last.items() if op.put]
        by_set = operator.itemgetter(1)
        return sorted(deletes, key=by_set) + sorted(adds, key=by_set)

    def _with_covering_nets(self, ops: list[_Op]) -> list[_Op]:
        """A Delete of one IPv6 address deletes its /prefix6 element too: what frees
        the address (`autoban del all = 2001:db8::5`)."""
        out: list[_Op] = []
        for op in ops:
            out.append(op)
            if (not op.put and op.span.version == 6 and op.span.single
                    and op.base in NET_BASES):
                first = op.span.lo & self._mask6
                last = first + (1 << (128 - self.prefix6)) - 1
                if first != last:
                    out.append(_Op(False, op.base, _Span(6, first, last, False), None, None))
        return out

    def _pair_commands(self, ops: list[_Op], fresh: bool) -> list[Json]:
        """proven: exact pairs are read first like the timed sets' elements; a
        Delete of an address alone deletes every pair of that address."""
        commands: list[Json] = []
        present: dict[tuple[str, bytes], bool] = {}
        for op in (o for o in ops if o.base in PAIR_SETS):
            if op.pair is None:
                pairs = [e.addr for e in self._set_elements(op.base, str(op.span.version))
                         if e.addr.split()[0] == address_text(op.span.version, op.span.lo)]
                found = [_Op(False, op.base, op.span, None, None, _parse_pair(p)[1])
                         for p in pairs]
            else:
                found = [op]
            for one in found:
                assert one.pair is not None
                key = _pair_key(one)
                where = (one.name, key)
                if where not in present:  # pairs found by the dump are there
                    present[where] = op.pair is None or (not fresh
                                                         and self._has_key(one.name, key))
                value = {"concat": [address_text(one.span.version, one.span.lo), *one.pair]}
                if present[where]:
                    commands.append({"delete": {"element": {**self._ref(one.name),
                                                            "elem": [value]}}})
                if op.put:
                    attrs: Json = {"val": value}
                    if op.timeout is not None:
                        attrs["timeout"] = op.timeout
                    if op.comment is not None:
                        attrs["comment"] = op.comment
                    commands.append({"add": {"element": {**self._ref(one.name),
                                                         "elem": [{"elem": attrs}]}}})
                present[where] = op.put
        return commands

    def _has_key(self, name: str, key: bytes) -> bool:
        try:
            return self._netlink.element(self.table, name, key) is not None
        except OSError as exc:
            raise FirewallError(str(exc)) from exc

    def proven(self, addr: str, proto: str, port: int) -> Element | None:
        """The proven element of ADDR's PROTO PORT, if there (one netlink GET)."""
        op = _check(Put("proven", f"{addr} {proto} {port}"))
        try:
            found = self._netlink.element(self.table, op.name, _pair_key(op))
        except OSError as exc:
            raise FirewallError(str(exc)) from exc
        if found is None:
            return None
        return Element("proven", f"{op.addr_text()} {proto} {port}", found.timeout,
                       found.expires, found.comment)

    def set_sip_ports(self, ports: Iterable[int]) -> None:
        """The ports a sipjail closes (both protocols), replacing the old ones."""
        wanted = sorted({int(p) for p in ports if 0 < int(p) < 65536})
        commands: list[Json] = [{"flush": {"set": self._ref(SIP_PORTS)}}]
        if wanted:
            commands.append({"add": {"element": {**self._ref(SIP_PORTS), "elem": wanted}}})
        self._run(commands)

    def sip_ports(self) -> list[int]:
        items = self._run([{"list": {"set": self._ref(SIP_PORTS)}}])
        elems = next(i["set"] for i in items if "set" in i).get("elem", [])
        ports: list[int] = []
        for e in elems:
            if isinstance(e, int):
                ports.append(e)
            elif isinstance(e, dict) and "range" in e:
                ports += range(e["range"][0], e["range"][1] + 1)
        return ports

    def _interval_commands(self, ops: list[_Op]) -> list[Json]:
        deletes: list[Json] = []
        adds: list[Json] = []
        for name in dict.fromkeys(o.name for o in ops if o.base in LIST_SETS):
            version = int(name[-1])
            before = self._pieces(name)
            after = _plan(before, [o for o in ops if o.name == name])
            gone = [_value(version, p.lo, p.hi) for p in before if p not in after]
            new = [_elem(version, p) for p in after if p not in before]
            if gone:
                deletes.append({"delete": {"element": {**self._ref(name), "elem": gone}}})
            if new:
                adds.append({"add": {"element": {**self._ref(name), "elem": new}}})
        # Deletes first: auto-merge would otherwise fold the new pieces into the old.
        return deletes + adds

    def _pieces(self, name: str) -> list[_Piece]:
        pieces: list[_Piece] = []
        for item in self._list(name):
            element = _element(name[:-1], item)
            span = _span(element.addr)
            pieces.append(_Piece(span.lo, span.hi, element.comment))
        return sorted(pieces, key=lambda p: p.lo)
