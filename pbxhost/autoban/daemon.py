"""`autoband`: AMI security events → policy → nftables.

The events of one AMI read are decided as one batch before Asterisk's socket
is read again, so a flood is throttled by TCP instead of piling up in memory:
standings are read from a copy of the sets kept by the kernel's change
notifications (mirror.py), a jailing is written at the end of its batch, and
watch counts are written within policy.FLUSH_INTERVAL (docs/autoban.md,
"Throughput"). The kernel's sets are the only state; the state file is a copy
for reboots, written half a second after a change, or later under a flood with
large sets (see changed)."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from panoramisk.message import Message

from pbxhost import cli, conf, service
from pbxhost.ami import AmiClient, header
from pbxhost.autoban import config, gateway, legacy, policy, state
from pbxhost.autoban.events import ATTACK_EVENTS, Address, Remote, address_text, parse_remote
from pbxhost.autoban.firewall import (
    DEFAULT_SIP_PORTS,
    LIST_SETS,
    Delete,
    Element,
    Firewall,
    FirewallError,
    Put,
    SetFullError,
)
from pbxhost.autoban.overflow import Overflow
from pbxhost.autoban.trunks import Trunks

log = logging.getLogger("pbxhost.autoban")
GUARD_INTERVAL = 1.0
SAVE_DELAY = 0.5
SAVE_SHARE = 20  # a save waits at least 20 times what the last one took
RESTORE_BATCH = 250
FULL_WARNING_INTERVAL = 60.0  # seconds between two "set full" warnings
GC_THRESHOLD = 10_000  # allocations between two young collections (Python's: 700)
WHITELIST_CACHE = 5.0  # seconds a copy of the IPv6 whitelist serves the watch decisions


def human(seconds: int) -> str:
    """1d2h3m4s, the way autoban.conf writes durations."""
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not out):
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out


def ranges(nets: Iterable[config.Network]) -> list[tuple[int, int]]:
    """Networks as (first, last) integers: tests without ipaddress's objects."""
    return [(int(n.network_address), int(n.broadcast_address)) for n in nets]


def standing_of(found: dict[str, Element]) -> policy.Standing:
    """The policy's view of what the kernel holds for one address."""
    return policy.Standing(
        times=policy.decode_times(found["watch"].comment) if "watch" in found else (),
        jailed="jail" in found,
        sipjailed="sipjail" in found,
        sentence=policy.decode_sentence(found["parole"].comment) if "parole" in found else None,
        whitelisted="whitelist" in found,
        trusted="trust" in found,
    )


def ops_for(verdict: policy.Verdict, addr: str, settings: policy.Settings,
            jail_addr: str | None = None, parole_left: int | None = None) -> list[Put | Delete]:
    """The kernel operations of a verdict. ADDR is the watch element (an address
    or an IPv6 prefix); JAIL_ADDR the jail and parole element when it differs
    (a prefix watched, but one address jailed: see Autoban.element_for);
    PAROLE_LEFT what is left of a parole that must not get shorter."""
    if verdict.action is policy.Action.WATCH:
        return [Put("watch", addr, settings.watchtime, policy.encode_times(verdict.times))]
    if verdict.action is policy.Action.JAIL:
        jail_addr = jail_addr or addr
        record = verdict.record or verdict.sentence
        # parole covers the jail time and `watchtime` after it: no timer needed at release
        parole = max(verdict.sentence + settings.watchtime, parole_left or 0)
        return [Put(verdict.scope.value, jail_addr, verdict.sentence,
                    policy.encode_sentence(verdict.sentence)),
                Put("parole", jail_addr, parole, policy.encode_sentence(record)),
                Delete("watch", addr)]
    return []


def policy_sets() -> tuple[str, ...]:
    """The sets a window's writes touch (watch counts and jailings)."""
    return ("watch", "jail", "sipjail", "parole")


@dataclass(frozen=True)
class Jailing:
    """A jailing decided in a batch, written at the batch's end, logged once written."""
    verdict: policy.Verdict
    key: str
    ops: list[Put | Delete]
    addr: str
    message: tuple[Any, ...]
    fields: dict[str, Any]


class Autoban:
    def __init__(self, cfg: config.AutobanConfig, firewall: Firewall,
                 exempt: list[config.Network], clock: Callable[[], float] = time.time,
                 trunks: Trunks | None = None, sip_ports: list[int] | None = None) -> None:
        self.cfg, self.fw, self.clock = cfg, firewall, clock
        self.sip_ports = sip_ports or list(DEFAULT_SIP_PORTS)
        self.fixed_exempt = exempt
        self.trunks = trunks or Trunks([])
        self.exempt = [*exempt, *self.trunks.networks()]
        self.settings = cfg.policy
        self._save_pending: asyncio.TimerHandle | None = None
        self._save_cost = 0.0  # seconds the last save took
        self.gateway = gateway.GatewayWatch(gateway.read_gateways())
        self.overflow = Overflow()
        self._full_warned: dict[str, float] = {}
        self._whitelist6: tuple[float, list[tuple[int, int]]] = (-WHITELIST_CACHE, [])
        # the batching window (docs/autoban.md, "Throughput")
        self._queue: list[tuple[Remote, str, str]] = []
        self._drain_scheduled = False
        self._window: float | None = None           # monotonic start of the window
        self._flush_timer: asyncio.TimerHandle | None = None
        self._seen: dict[str, dict[str, Element]] = {}  # kernel reads of this window
        self._written: dict[tuple[str, str], Element | None] = {}  # this window's writes
        self._written_keys: set[str] = set()  # the elements they touch
        # watch counts not yet written: the verdict and its operations, by element
        self._pending: dict[str, tuple[policy.Verdict, list[Put | Delete]]] = {}

    def _clocks(self) -> state.Clocks:
        # the real clocks (boot time included) unless a test injected one
        return state.Clocks.now(None if self.clock is time.time else self.clock())

    # -- the kernel table ---------------------------------------------------
    def ensure_table(self, saved: state.Saved | None = None) -> bool:
        """Create the table when it is missing (first start, reboot, `nft flush
        ruleset`) and refill it from the state file. True if it was rebuilt."""
        if self.fw.exists():
            return False
        self.fw.ensure()
        self.fw.set_sip_ports(self.sip_ports)
        if saved is None:
            saved = state.load(self.cfg.statefile, self._clocks())
        applied = self._apply_each_valid([*saved.puts, *self._config_lists()], fresh=True)
        log.log(service.NOTICE, "table inet %s built; %d elements restored from %s",
                self.cfg.table, applied, self.cfg.statefile)
        return True

    def upgrade_table(self) -> None:
        """A table of an older release (unbounded sets, chain input) is rebuilt as
        this one builds it, keeping its elements and their remaining times."""
        if not self.fw.exists() or self.fw.current():
            return
        keep = [Put(e.set, e.addr, e.expires, e.comment) for e in self.fw.salvage()
                if e.expires is None or e.expires > 0]
        self.fw.ensure()
        self.fw.set_sip_ports(self.sip_ports)
        applied = self._apply_each_valid(keep, fresh=True)
        log.log(service.NOTICE, "table inet %s rebuilt for this version; %d of %d "
                "elements kept", self.cfg.table, applied, len(keep))

    def config_lists(self) -> dict[str, list[str]]:
        return {name: list(getattr(self.cfg, name)) for name in LIST_SETS}

    def sync_config_lists(self, previous: dict[str, list[str]] | None) -> None:
        """autoban.conf's whitelist/blacklist into the sets; entries the previous
        start took from autoban.conf and that are gone from it now are deleted
        (entries added with the CLI were never in `previous`, so they stay)."""
        current = self.config_lists()
        gone = [Delete(name, entry) for name in LIST_SETS
                for entry in (previous or {}).get(name, []) if entry not in current[name]]
        for op in gone:
            try:
                self.fw.apply([op])
                log.log(service.NOTICE, "%s %s: no longer in %s, deleted from the set",
                        op.set, op.addr, self.cfg.path)
            except (ValueError, FirewallError) as exc:
                log.warning("%s %s not deleted: %s", op.set, op.addr, exc)
        self._apply_each_valid(self._config_lists())

    def _config_lists(self) -> list[Put]:
        return [Put(name, entry) for name in ("whitelist", "blacklist")
                for entry in getattr(self.cfg, name)]

    def _apply_each_valid(self, puts: list[Put], fresh: bool = False) -> int:
        """Apply PUTS (FRESH: into a table just built); the number applied."""
        # Batches of RESTORE_BATCH: one batch of 10k elements makes libnftables peak at 165 MB.
        return sum(self._apply_batch(puts[i:i + RESTORE_BATCH], fresh)
                   for i in range(0, len(puts), RESTORE_BATCH))

    def _apply_batch(self, puts: list[Put], fresh: bool) -> int:
        try:
            self.fw.apply(puts, fresh)
            return len(puts)
        except (ValueError, FirewallError):
            pass  # one bad element fails a batch: apply the good ones one by one
        applied = 0
        for put in puts:
            try:
                self.fw.apply([put], fresh)
                applied += 1
            except (ValueError, FirewallError) as exc:
                log.warning("element %s in %s not restored: %s", put.addr, put.set, exc)
        return applied

    def import_legacy(self) -> None:
        """Take over the seed's `table ip autoban`, if there is one, and remove it."""
        elements = self.fw.legacy_elements()
        if elements is None:
            return
        puts = legacy.convert(elements, self.settings, int(self.clock()))
        applied = self._apply_each_valid(puts)
        self.fw.remove("ip")
        log.log(service.NOTICE, "imported %d elements from the seed's table ip %s and "
                "removed it", applied, self.cfg.table)

    def import_seed_file(self) -> None:
        """The seed's /srv/var/lib/nftables/autoban.nft, once: its jail, parole,
        watch, whitelist and blacklist; the file is renamed *.imported after."""
        path = self.cfg.seedfile
        if not path.is_file():
            return
        try:
            age = max(0, int(self.clock() - path.stat().st_mtime))
            elements = legacy.parse_seed_file(path.read_text(), age)
        except (OSError, ValueError, UnicodeError) as exc:
            log.error("the seed's %s not imported: %s", path, exc)
            return
        puts = legacy.convert(elements, self.settings, int(self.clock()))
        applied = self._apply_each_valid(puts)
        done = path.with_name(path.name + ".imported")
        try:
            path.rename(done)
        except OSError as exc:
            log.error("the seed's %s imported but not renamed (it will be imported "
                      "again): %s", path, exc)
            return
        log.log(service.NOTICE, "imported %d of %d elements from the seed's %s (remaining "
                "times counted from the file's time, %s ago); renamed it %s", applied,
                len(elements), path, human(age), done.name)

    # -- events ---------------------------------------------------------------
    def handle(self, event: Message) -> None:
        name = header(event, "Event")
        if name in ATTACK_EVENTS:
            self.on_attack(event)
        elif (name == "SuccessfulAuth" and header(event, "UsingPassword") == "1"
              and (self.cfg.trusttime or self.cfg.proventime)):
            self.on_success(event)

    def _remote(self, event: Message) -> Remote | None:
        try:
            return parse_remote(header(event, "RemoteAddress"))
        except ValueError as exc:
            log.warning("%s event skipped: %s", header(event, "Event"), exc)
            return None

    def _address(self, event: Message) -> Address | None:
        remote = self._remote(event)
        return None if remote is None else remote.addr

    @property
    def exempt(self) -> list[config.Network]:
        """Never jailed: loopback, this host's own and the trunk's addresses."""
        return self._exempt

    @exempt.setter
    def exempt(self, nets: list[config.Network]) -> None:
        self._exempt = nets
        # as integer ranges per family: one test per network and event, without
        # ipaddress's comparisons (a flood's hot path)
        self._exempt_ranges = {v: ranges(n for n in nets if n.version == v) for v in (4, 6)}

    def _is_exempt(self, addr: Address) -> bool:
        value = int(addr)
        return any(lo <= value <= hi for lo, hi in self._exempt_ranges[addr.version])

    def on_attack(self, event: Message) -> None:
        """Queue the event; the queue is drained once the AMI chunk that carried it
        has been parsed (see drain), or at once when no event loop runs (tests)."""
        remote = self._remote(event)
        if remote is None:
            return
        if warning := self.gateway.observe(remote.addr):
            log.warning(warning, extra={"ADDRESS": remote.text})
        name, account = header(event, "Event"), header(event, "AccountID")
        if self._is_exempt(remote.addr):
            log.info("%s from %s (account %s): exempt, not counted", name, remote.addr, account)
            return
        self._queue.append((remote, name, account))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.drain()
            self.flush()
            return
        if not self._drain_scheduled:
            self._drain_scheduled = True
            loop.call_soon(self.drain)

    def drain(self) -> None:
        """Decide every queued event: the kernel is read once per address (all
        reads of the batch pipelined) and the jailings of the batch written in
        one libnftables call before the next AMI chunk is read; watch counts wait
        in memory for flush(), at most policy.FLUSH_INTERVAL."""
        self._drain_scheduled = False
        queue, self._queue = self._queue, []
        if not queue:
            return
        try:
            self._decide_all(queue)
        except Exception:  # as AmiClient.dispatch did for one event: the session goes on
            log.exception("%d AMI events not handled; session kept", len(queue))

    def _decide_all(self, queue: list[tuple[Remote, str, str]]) -> None:
        started = time.perf_counter()
        if self._window is None:
            self._window = time.monotonic()
        self._prefetch(list(dict.fromkeys(r.text for r, _, _ in queue
                                          if r.text not in self._seen)))
        jailings: list[Jailing] = []
        for remote, name, account in queue:
            self._decide(remote, name, account, jailings)
        if jailings:
            self._carry_out(jailings)
        if policy.flush_due(self._window, time.monotonic()):
            self.flush()
        else:
            self._schedule_flush()
        log.debug("%d events handled in %.2f ms", len(queue),
                  (time.perf_counter() - started) * 1000)

    def _prefetch(self, addrs: list[str]) -> None:
        if not addrs:
            return
        try:
            answers = self.fw.lookup_many(addrs)
        except FirewallError:
            self.ensure_table()
            answers = self.fw.lookup_many(addrs)
        self._seen.update(zip(addrs, answers, strict=True))

    def _found(self, remote: Remote) -> dict[str, Element]:
        """What the kernel held for REMOTE's address at its read in this window,
        with what this window wrote (or will write at the flush) laid over it."""
        text = remote.text
        if text not in self._seen:  # read again after a failed jailing
            self._seen[text] = self._lookup(text)
        keys = [text] if (prefix := self._prefix(remote)) is None else [text, prefix]
        if not any(key in self._written_keys for key in keys):
            return self._seen[text]
        found = dict(self._seen[text])
        for base in policy_sets():
            for key in keys:  # the address's own element before its prefix's
                if (base, key) in self._written:
                    element = self._written[base, key]
                    if element is not None:
                        found[base] = element
                        break
                    if base in found and found[base].addr == key:
                        del found[base]
                elif base in found and found[base].addr == key:
                    break
        return found

    def _decide(self, remote: Remote, name: str, account: str,
                jailings: list[Jailing]) -> None:
        text = remote.text
        found = self._found(remote)
        # the element this event counts in: the one that covers the address, else
        # its IPv6 prefix (unless that holds someone never to be jailed), else itself
        key = found["watch"].addr if "watch" in found else self.element_for(remote)
        standing = standing_of(found)
        if "watch" not in found and (counted := self.overflow.get(key)):
            standing = standing._replace(times=counted)
        verdict = policy.on_event(self.settings, standing, int(self.clock()), remote.proven)
        jail_key = None
        if verdict.action is policy.Action.JAIL:
            jail_key = (found["parole"].addr if "parole" in found
                        else self.element_for(remote, jailing=True))
        parole_left = found["parole"].expires if "parole" in found else None
        ops = ops_for(verdict, key, self.settings, jail_key, parole_left)
        if verdict.action is policy.Action.WATCH:
            self._pending[key] = (verdict, ops)
            self._write(ops)
            if not log.isEnabledFor(logging.INFO):  # a flood's usual case: no line to make
                return
        elif verdict.action is policy.Action.JAIL:
            self._pending.pop(key, None)  # the jailing deletes the watch element
            self._write(ops)
        element = jail_key or key
        shown = element if element == text else f"{element} ({text})"
        fields = {"ADDRESS": text, "ELEMENT": element, "EVENT": name, "ACCOUNT": account,
                  "VERDICT": verdict.action.value}
        if verdict.action is policy.Action.JAIL:
            scope = ("" if verdict.scope is policy.Scope.ALL else
                     f", SIP only ({remote.transport or 'UDP'}: the source is not proven)")
            jailings.append(Jailing(verdict, key, ops, text, (
                "jailed %s for %s%s: %s (event %s, account %s)", shown,
                human(verdict.sentence), scope, verdict.reason, name, account),
                {**fields, "SENTENCE": verdict.sentence, "SCOPE": verdict.scope.value}))
            return
        log.info("%s from %s (account %s): %s: %s", name, shown, account,
                 verdict.action.value, verdict.reason, extra=fields)

    def _write(self, ops: list[Put | Delete]) -> None:
        for op in ops:
            self._written_keys.add(op.addr)
            self._written[op.set, op.addr] = (
                Element(op.set, op.addr, op.timeout, op.timeout, op.comment)
                if isinstance(op, Put) else None)

    def _carry_out(self, jailings: list[Jailing]) -> None:
        """The batch's jailings and every pending watch count, one libnftables call;
        when that fails, each on its own (a full set fails only its own part)."""
        ops = [op for j in jailings for op in j.ops]
        try:
            self._apply([*self._watch_ops(), *ops])
        except FirewallError:
            self._flush_each()
            done = [j for j in jailings if self._jail_alone(j)]
        else:
            self._settle(list(self._pending))
            self._pending = {}
            done = jailings
        for j in jailings:
            self.overflow.pop(j.key)
        for j in done:
            log.log(service.NOTICE, *j.message, extra=j.fields)

    def _jail_alone(self, j: Jailing) -> bool:
        try:
            if self._apply_verdict(j.verdict, j.key, j.ops):
                return True
        except FirewallError as exc:
            log.error("%s not jailed: %s", j.key, exc, extra={"ADDRESS": j.addr})
        for op in j.ops:  # not written: forget it, read the kernel again
            self._written.pop((op.set, op.addr), None)
        self._seen.pop(j.addr, None)
        return False

    def _watch_ops(self) -> list[Put | Delete]:
        return [op for _, ops in self._pending.values() for op in ops]

    def _settle(self, keys: list[str]) -> None:
        for key in keys:  # counted in the kernel now, no longer in memory
            self.overflow.pop(key)

    def flush(self) -> None:
        """Write the pending watch counts (one libnftables call) and end the window:
        the next events read the kernel again."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._pending:
            ops = self._watch_ops()
            try:
                # batches of RESTORE_BATCH: libnftables' memory grows with a batch's size
                for i in range(0, len(ops), RESTORE_BATCH):
                    self._apply(ops[i:i + RESTORE_BATCH])
                self._settle(list(self._pending))
            except FirewallError:
                self._flush_each()  # what was written is written again: same counts
        self._pending, self._window = {}, None
        self._seen.clear()
        self._written.clear()
        self._written_keys.clear()

    def _flush_each(self) -> None:
        """The pending counts one by one: a full watch set keeps the refused ones
        in memory (overflow), as docs/autoban.md's "Full sets" says."""
        for key, (verdict, ops) in self._pending.items():
            try:
                self._apply_verdict(verdict, key, ops)
            except FirewallError as exc:
                log.error("watch %s not written: %s", key, exc, extra={"ADDRESS": key})
        self._pending = {}

    def _schedule_flush(self) -> None:
        if self._flush_timer is not None or self._window is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (tests): on_attack flushes after each drain
        delay = policy.flush_delay(self._window, time.monotonic())
        self._flush_timer = loop.call_later(delay, self.flush)

    def element_for(self, remote: Remote, jailing: bool = False) -> str:
        """REMOTE's element in the timed sets: for IPv6 its /prefix6, unless that
        prefix holds an exempt (loopback, own, trunk, websms) or whitelisted
        address, or, when JAILING, a trusted one: then the address alone."""
        if (prefix := self._prefix(remote)) is None:
            return remote.text
        first = int(remote.addr) >> (128 - self.cfg.prefix6) << (128 - self.cfg.prefix6)
        last = first | ((1 << (128 - self.cfg.prefix6)) - 1)
        protected = [*self._exempt_ranges[6], *self._whitelisted6(fresh=jailing)]
        if jailing and self.cfg.trusttime:
            protected += ranges(n for n in self._networks(["trust"]) if n.version == 6)
        if any(lo <= last and hi >= first for lo, hi in protected):
            return remote.text
        return prefix

    def _prefix(self, remote: Remote) -> str | None:
        """REMOTE's /prefix6 as an element of the timed sets; None for IPv4 or
        when prefix6 is 128."""
        bits = 128 - self.cfg.prefix6
        if remote.addr.version == 4 or bits == 0:
            return None
        return f"{address_text(6, int(remote.addr) >> bits << bits)}/{self.cfg.prefix6}"

    def _whitelisted6(self, fresh: bool) -> list[tuple[int, int]]:
        """The kernel's whitelist6 (CLI entries included) as integer ranges: read
        at each jailing, else a copy at most WHITELIST_CACHE seconds old."""
        taken, found = self._whitelist6
        if fresh or time.monotonic() - taken >= WHITELIST_CACHE:
            found = ranges(n for n in self._networks(["whitelist"]) if n.version == 6)
            self._whitelist6 = (time.monotonic(), found)
        return found

    def _networks(self, sets: list[str]) -> list[config.Network]:
        nets: list[config.Network] = []
        try:
            for e in self.fw.iter_elements(sets):
                first, _, last = e.addr.partition("-")
                if last:
                    nets += ipaddress.summarize_address_range(ipaddress.ip_address(first),
                                                              ipaddress.ip_address(last))
                else:
                    nets.append(ipaddress.ip_network(e.addr))
        except FirewallError as exc:
            log.warning("sets %s not read: %s", ", ".join(sets), exc)
        return nets

    def _apply_verdict(self, verdict: policy.Verdict, key: str,
                       ops: list[Put | Delete]) -> bool:
        """Apply OPS; a full set is handled as docs/autoban.md says. False if the
        verdict could not be carried out."""
        try:
            self._apply(ops)
        except SetFullError:
            if verdict.action is policy.Action.WATCH:
                # watch full: count in memory, so a flood of watched addresses never
                # stops the next jailing
                self.overflow.put(key, verdict.times)
                self._warn_full("watch", "counting new addresses in memory")
                return True
            self._warn_full("jail", f"{key} NOT jailed")
            log.error("jail or parole set full: %s not jailed (%s)", key, verdict.reason,
                      extra={"ADDRESS": key})
            return False
        self.overflow.pop(key)
        return True

    def _warn_full(self, name: str, what: str) -> None:
        now = time.monotonic()
        if now - self._full_warned.get(name, -FULL_WARNING_INTERVAL) >= FULL_WARNING_INTERVAL:
            self._full_warned[name] = now
            log.warning("set %s is full (size %d): %s", name, self.fw.sizes[name], what)

    def on_success(self, event: Message) -> None:
        """A digest login succeeded: the client saw our challenge, so its address
        and port are proven (a round trip); `trusttime` trusts the address too."""
        remote = self._remote(event)
        if remote is None or self._is_exempt(remote.addr):
            return
        addr, account = remote.addr, header(event, "AccountID")
        fields = {"ADDRESS": str(addr), "EVENT": "SuccessfulAuth", "ACCOUNT": account}
        if self.cfg.proventime and remote.port is not None:
            self._prove(remote, fields)
        if not self.cfg.trusttime:
            return
        try:
            self._apply([Put("trust", str(addr), self.cfg.trusttime)])
        except SetFullError:
            self._warn_full("trust", f"{addr} not trusted")
            return
        log.info("%s trusted for %s after a successful login as %s", addr,
                 human(self.cfg.trusttime), account, extra=fields)

    def _prove(self, remote: Remote, fields: dict[str, str]) -> None:
        assert remote.port is not None
        pair = f"{remote.addr} {remote.proto} {remote.port}"
        try:
            known = self.fw.proven(str(remote.addr), remote.proto, remote.port)
            # every authenticated request says it again: renew at half time only
            if known is not None and (known.expires or 0) > self.cfg.proventime // 2:
                return
            self._apply([Put("proven", pair, self.cfg.proventime)])
        except SetFullError:
            self._warn_full("proven", f"{pair} not proven")
            return
        except FirewallError as exc:
            log.error("%s not proven: %s", pair, exc)
            return
        log.info("%s proven for %s by a successful login as %s: accepted before any jail",
                 pair, human(self.cfg.proventime), fields["ACCOUNT"], extra=fields)

    def _lookup(self, addr: str) -> dict[str, Element]:
        try:
            return self.fw.lookup(addr)
        except FirewallError:
            self.ensure_table()
            return self.fw.lookup(addr)

    def _apply(self, ops: list[Put | Delete]) -> None:
        try:
            self.fw.apply(ops)
        except SetFullError:
            raise
        except FirewallError:
            # the table gone, or an element expired between our read and the batch
            self.ensure_table()
            self.fw.apply(ops)
        self.changed()

    # -- persistence ------------------------------------------------------------
    def changed(self) -> None:
        """Schedule one save SAVE_DELAY after the first unsaved change, or later
        when the sets are large: saving never takes more than 1/SAVE_SHARE of the
        time under a flood (the kernel holds the state; the file is for reboots)."""
        if self._save_pending is None:
            self._save_pending = asyncio.get_running_loop().call_later(
                max(SAVE_DELAY, self._save_cost * SAVE_SHARE), self.save)

    def save(self) -> None:
        self._save_pending = None
        started = time.monotonic()
        try:
            state.save(self.cfg.statefile, self.fw.iter_elements(), self._clocks(),
                       config=self.config_lists(), trunks=self.trunks.saved())
        except (OSError, FirewallError) as exc:
            log.error("state not saved to %s: %s", self.cfg.statefile, exc)
        self._save_cost = time.monotonic() - started

    # -- the trunk's names ------------------------------------------------------
    def use_saved_trunks(self, saved: state.Saved) -> None:
        """Until the names resolve, the addresses they had when the state was saved."""
        self.trunks = Trunks(self.trunks.names, saved.trunks)
        self.exempt = [*self.fixed_exempt, *self.trunks.networks()]
        if self.trunks.networks():
            log.info("trunk addresses from %s until the names resolve: %s", self.cfg.statefile,
                     ", ".join(map(str, self.trunks.networks())))

    async def refresh_trunks(self) -> None:
        """Resolve the trunk's names now and every `trunk_refresh` seconds."""
        if not self.trunks.names or not any(config.is_name(n) for n in self.trunks.names):
            return
        while True:
            new = await asyncio.to_thread(self.trunks.refresh)
            self.exempt = [*self.fixed_exempt, *self.trunks.networks()]
            self.release_trunk(new)
            self.changed()
            await asyncio.sleep(self.cfg.trunk_refresh)

    def release_trunk(self, nets: list[config.Network]) -> None:
        """A trunk address newly known is taken out of watch, jail and parole."""
        for net in nets:
            found = self._lookup(str(net.network_address)) if net.num_addresses == 1 else {}
            ops: list[Put | Delete] = [Delete(base, e.addr) for base, e in found.items()
                                       if base in ("watch", "jail", "sipjail", "parole")]
            if not ops:
                continue
            try:
                self._apply(ops)
            except FirewallError as exc:
                log.error("trunk address %s not released: %s", net, exc)
                continue
            log.log(service.NOTICE, "released %s: it is the trunk's address now", net,
                    extra={"ADDRESS": str(net.network_address)})

    def follow_changes(self) -> None:
        """The table changed (the CLI, `nft`, our own writes): the copy of its
        sets takes it in now. A missing table is the guard's to rebuild."""
        try:
            self.fw.follow_changes()
        except FirewallError as exc:
            log.debug("table changes not read: %s", exc)

    async def guard(self) -> None:
        """Rebuild the table within a second or two of it disappearing."""
        while True:
            await asyncio.sleep(GUARD_INTERVAL)
            try:
                if self.ensure_table():
                    log.warning("table inet %s had disappeared; rebuilt", self.cfg.table)
            except FirewallError as exc:
                log.error("cannot rebuild table inet %s: %s", self.cfg.table, exc)

    async def run(self, notifier: service.Notifier) -> None:
        saved = state.load(self.cfg.statefile, self._clocks())
        self.use_saved_trunks(saved)
        self.upgrade_table()
        if not self.ensure_table(saved):
            self.fw.set_sip_ports(self.sip_ports)
        self.sync_config_lists(saved.config)
        self.import_legacy()
        self.import_seed_file()
        self.save()
        if (fd := self.fw.notifications()) is not None:
            asyncio.get_running_loop().add_reader(fd, self.follow_changes)
        client = AmiClient(self.cfg.ami, self.handle, lambda s: notifier.status(
            service.ami_status(s, "watching for attacks")))
        notifier.ready(service.ami_status(
            "connecting", f"to {self.cfg.ami.host}:{self.cfg.ami.port}"))
        log.log(service.NOTICE, "autoban started: maxcount %d, watchtime %s, jailtime %s, "
                "repeatmult %g, prefix6 %d", self.settings.maxcount,
                human(self.settings.watchtime), human(self.settings.jailtime),
                self.settings.repeatmult, self.cfg.prefix6)
        await asyncio.gather(client.run(), self.guard(), self.refresh_trunks(),
                             notifier.watchdog())


async def idle(notifier: service.Notifier, why: str) -> None:
    """Disabled: stay up quietly (no restart loop) without touching the firewall."""
    notifier.ready(why)
    await asyncio.gather(asyncio.Event().wait(), notifier.watchdog())


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("autoband", "autoban daemon: jail addresses that attack Asterisk "
                   "(AMI security events → nftables).", "autoban.conf")
    args = p.parse_args(argv)
    service.setup_logging("autoban")
    path = cli.find_config("autoban.conf", args.config)
    try:
        cfg = config.load(path)
    except conf.ConfigError as exc:
        service.config_error(log, exc)
    notifier = service.Notifier()
    if not cfg.enabled:
        why = "disabled: enabled = no" if path.exists() else f"disabled: no {path}"
        log.log(service.NOTICE, "autoban %s; idling without touching the firewall", why)
        return service.run(idle(notifier, why))
    exempt = config.exempt_networks(Path(path).parent)
    trunks = Trunks([h for h in config.trunk_hosts(Path(path).parent) if config.is_name(h)])
    log.info("never jailed: %s%s", ", ".join(str(n) for n in exempt),
             "".join(f", {name} (trunk, resolved every {human(cfg.trunk_refresh)})"
                     for name in trunks.names))
    ports = config.sip_ports(Path(path).parent)
    firewall = Firewall(cfg.table, prefix6=cfg.prefix6, follow=True)
    # A flood makes a few small records per event, nearly all gone with their
    # batch: the collector's young pass every 10 000 allocations instead of
    # 700, and what was made at start never scanned again (docs/autoban.md)
    gc.set_threshold(GC_THRESHOLD, 10, 10)
    gc.freeze()
    return service.run(Autoban(cfg, firewall, exempt, trunks=trunks, sip_ports=ports).run(notifier))


if __name__ == "__main__":
    raise SystemExit(main())
