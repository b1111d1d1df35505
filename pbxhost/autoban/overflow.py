"""Where the daemon counts an address's events when the kernel's watch set is
full (docs/autoban.md, "Full sets"): in memory, bounded, lost on restart.

Two least-recently-used tiers: addresses seen once, and addresses seen more
than once. A flood of one event per address (forged sources, or an IPv6
attacker walking its prefixes) churns only the first tier, so a guesser with
a few events already counted is not pushed out by it."""

from __future__ import annotations

from collections import OrderedDict

DEFAULT_SIZE = 10_000  # per tier; about 2 MB of Python objects when both are full


class Overflow:
    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self._once: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._more: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._once) + len(self._more)

    def get(self, addr: str) -> tuple[int, ...]:
        return self._once.get(addr) or self._more.get(addr) or ()

    def put(self, addr: str, times: tuple[int, ...]) -> None:
        self.pop(addr)
        tier = self._once if len(times) <= 1 else self._more
        tier[addr] = times
        if len(tier) > self.size:
            tier.popitem(last=False)  # the least recently counted of its tier

    def pop(self, addr: str) -> None:
        self._once.pop(addr, None)
        self._more.pop(addr, None)
