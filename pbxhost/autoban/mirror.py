"""A copy in memory of the sets of autoban's table, kept by nf_tables' change
notifications: what lets autoband decide a flood's events without a system
call per address (docs/autoban.md, "Throughput").

The kernel stays the state (what survives a crash, what the CLI and `nft`
change); this is a read cache that cannot go stale unnoticed:
- it is read whole (one netlink dump per set) at first use, and again whenever
  the notifications may have missed something: their socket overflowed, or
  the table or a set was created or deleted (`nft flush ruleset`, a rebuild);
- every read first takes in what was notified since the last one, and the
  kernel notifies during the commit, so a change made by anyone is seen by the
  next read after the writer's call returned;
- the kernel does not notify expiries: each timed element keeps its deadline.
  Around a deadline (within MARGIN) `present` answers "unsure", and the caller
  asks the kernel.

Exact-key sets (watch4, jailnet6, ...) map a key to its element; interval sets
(whitelist, blacklist) keep their start and end elements as the kernel does,
so a lookup finds the interval covering an address."""

from __future__ import annotations

import bisect
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pbxhost.autoban.nfnetlink import Change, Found, Monitor, Write

MARGIN = 2.0          # seconds around a deadline where the kernel is asked instead
SWEEP_INTERVAL = 60.0  # seconds between two sweeps of expired elements

# key → (deadline on the monotonic clock or None, timeout, comment)
Entry = tuple[float | None, int | None, str | None]


@dataclass
class _Intervals:
    """An interval set: start elements by key, and the end keys (one past)."""
    starts: dict[int, Found] = field(default_factory=dict)
    ends: set[int] = field(default_factory=set)
    _sorted: tuple[list[int], list[int]] | None = None

    def change(self, change: Change) -> None:
        key = change.element.key
        if change.end:
            (self.ends.add if change.added else self.ends.discard)(key)
        elif change.added:
            self.starts[key] = change.element
        else:
            self.starts.pop(key, None)
        self._sorted = None

    def covering(self, key: int, top: int) -> tuple[Found, int] | None:
        """The start element of the interval holding KEY and the interval's last key."""
        if not self.starts:  # the usual whitelist and blacklist: empty
            return None
        if self._sorted is None:
            self._sorted = (sorted(self.starts), sorted(self.ends))
        starts, ends = self._sorted
        i = bisect.bisect_right(starts, key) - 1
        if i < 0:
            return None
        start = starts[i]
        j = bisect.bisect_right(ends, start)  # the first end after the start
        last = ends[j] - 1 if j < len(ends) else top
        return (self.starts[start], last) if key <= last else None


class Mirror:
    """The sets NAMES (exact-key) and INTERVALS of one table, loaded with LOAD
    (every element of one set, kernel order; an interval set's ends flagged)."""

    def __init__(self, monitor: Monitor, names: Iterable[str], intervals: Iterable[str],
                 load: Callable[[str], Iterable[Change]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._monitor, self._load, self._clock = monitor, load, clock
        self._names, self._interval_names = tuple(names), tuple(intervals)
        self._exact: dict[str, dict[int, Entry]] = {}
        self._intervals: dict[str, _Intervals] = {}
        self._loaded = False
        self._swept = clock()

    # -- keeping up
    def fileno(self) -> int:
        return self._monitor.fileno()

    def refresh(self) -> None:
        """Take in what was notified; read everything again if something may be
        missing. The load's errors (the table is gone) propagate, and the next
        refresh loads again."""
        changes, lost = self._monitor.read()
        if lost or not self._loaded:
            self._loaded = False
            changes, lost = self._reload()
        for change in changes:
            self._take(change)
        self._loaded = not lost  # else read again at the next refresh
        if self._clock() - self._swept >= SWEEP_INTERVAL:
            self._sweep()

    def wrote(self, writes: Iterable[Write]) -> None:
        """Our own commit (the Monitor's OWN socket), taken in as written: its
        notifications are skipped, so its deadlines count from now."""
        if not self._loaded:
            return  # the next refresh reads everything, this write included
        now = self._clock()
        for w in writes:
            exact, key = self._exact[w.set], int.from_bytes(w.key, "big")
            if w.added:
                exact[key] = (None if w.timeout is None else now + w.timeout, w.timeout,
                              w.comment)
            else:
                exact.pop(key, None)
        self._monitor.wrote()

    def _reload(self) -> tuple[list[Change], bool]:
        """Every set read again; then what was notified meanwhile, to be taken
        in on top (a change the dump already holds is the same change again)."""
        self._exact = {name: {} for name in self._names}
        self._intervals = {name: _Intervals() for name in self._interval_names}
        for name in (*self._names, *self._interval_names):
            for change in self._load(name):
                self._take(change)
        self._swept = self._clock()
        return self._monitor.read()

    def _take(self, change: Change) -> None:
        exact = self._exact.get(change.set)
        if exact is None:
            if (intervals := self._intervals.get(change.set)) is not None:
                intervals.change(change)
            return
        found = change.element
        if not change.added:
            exact.pop(found.key, None)
            return
        deadline = None if found.expires is None else self._clock() + found.expires
        # jails and paroles share a few sentences: one string each, not 100k copies
        comment = None if found.comment is None else sys.intern(found.comment)
        exact[found.key] = (deadline, found.timeout, comment)

    def _sweep(self) -> None:
        """Forget what expired (more than MARGIN ago): a flood's one-off watch
        elements would otherwise stay in memory after the kernel dropped them."""
        gone = self._clock() - MARGIN
        for exact in self._exact.values():
            for key in [k for k, (deadline, _, _) in exact.items()
                        if deadline is not None and deadline < gone]:
                del exact[key]
        self._swept = self._clock()

    # -- reading (after refresh)
    def holding(self, names: Iterable[str], key: int) -> dict[str, Found]:
        """The live elements KEY has in the exact-key sets NAMES, by set, with
        their remaining times now (one call: a flood reads five sets an address)."""
        found: dict[str, Found] = {}
        now = None
        for name in names:
            entry = self._exact[name].get(key)
            if entry is None:
                continue
            deadline, timeout, comment = entry
            if deadline is None:
                found[name] = Found(key, timeout, None, comment)
                continue
            if now is None:
                now = self._clock()
            if (left := deadline - now) > 0:
                found[name] = Found(key, timeout, int(left), comment)
        return found

    def present(self, name: str, key: int) -> bool | None:
        """Whether the kernel holds KEY in NAME; None when it is too close to its
        deadline to say (the kernel's clock and expiry are its own)."""
        entry = self._exact[name].get(key)
        if entry is None:
            return False
        deadline = entry[0]
        if deadline is None:
            return True
        left = deadline - self._clock()
        return None if abs(left) < MARGIN else left > 0

    def interval(self, name: str, key: int, top: int) -> tuple[Found, int] | None:
        """The element of interval set NAME covering KEY, and its last key."""
        return self._intervals[name].covering(key, top)
