"""What may go out through the ITSP at the owner's cost: pure decisions, the
clock injected (RateLimit keeps the rate's times in memory; ratestore, in
files). The toll classes are the dialplan's (sub_toll_class, asked over
AGI); TOLL_ALLOW is read as dp_call_trunk reads it for calls."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

TOLL_FREE_CLASSES = ("domestic",)


def toll_refusal(toll_class: str, allow: str) -> str | None:
    """Why an SMS to a number of TOLL_CLASS is refused for a user whose
    TOLL_ALLOW is ALLOW; None when it may go. As dp_call_trunk for calls:
    anything but domestic needs its class named in TOLL_ALLOW (a substring,
    as the dialplan's `=~`). An unknown class ("") is not decided here."""
    if not toll_class or toll_class in TOLL_FREE_CLASSES or toll_class in allow:
        return None
    return f"{toll_class} numbers are not allowed (TOLL_ALLOW)"


def rate_decision(times: Sequence[float], now: float, limit: int, window: float
                  ) -> tuple[bool, list[float]]:
    """The per-user rate rule, for FastAGI (RateLimit, in memory) and the plain
    AGI fallback (ratestore, in files): may one more event go at NOW, given the
    TIMES of the earlier ones, with at most LIMIT per WINDOW seconds (a sliding
    window; LIMIT 0: no limit)? Returns that and the times to keep: those still
    in the window, plus NOW when it may go. A time further ahead than a window
    (a clock set back) is forgotten, so that it cannot block a user for long."""
    if limit <= 0:
        return True, []
    kept = [t for t in times if now - window < t <= now + window]
    if len(kept) >= limit:
        return False, kept
    return True, [*kept, now]


class Limiter(Protocol):
    """Where a rate is counted (RateLimit, ratestore.SharedRateLimit)."""

    def take(self, key: str) -> bool: ...


class RateLimit:
    """rate_decision per key, the times in memory (websmsd). Memory: the times
    of each key seen within the window."""

    def __init__(self, limit: int, window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._seen: dict[str, list[float]] = {}

    def take(self, key: str) -> bool:
        """Count one event for KEY; False (and nothing counted) when over the limit."""
        if self.limit <= 0:
            return True
        now = self.clock()
        if len(self._seen) > 1000:  # forget keys idle for a whole window
            self._seen = {k: q for k, q in self._seen.items() if q and q[-1] > now - self.window}
        allowed, self._seen[key] = rate_decision(self._seen.get(key, ()), now, self.limit,
                                                 self.window)
        return allowed
