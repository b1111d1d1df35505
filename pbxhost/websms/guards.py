"""What may go out through the ITSP at the owner's cost: pure decisions, the
clock injected. The toll classes are the dialplan's (sub_toll_class, asked
over AGI); TOLL_ALLOW is read as dp_call_trunk reads it for calls."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

TOLL_FREE_CLASSES = ("domestic",)


def toll_refusal(toll_class: str, allow: str) -> str | None:
    """Why an SMS to a number of TOLL_CLASS is refused for a user whose
    TOLL_ALLOW is ALLOW; None when it may go. As dp_call_trunk for calls:
    anything but domestic needs its class named in TOLL_ALLOW (a substring,
    as the dialplan's `=~`). An unknown class ("") is not decided here."""
    if not toll_class or toll_class in TOLL_FREE_CLASSES or toll_class in allow:
        return None
    return f"{toll_class} numbers are not allowed (TOLL_ALLOW)"


class RateLimit:
    """At most LIMIT events per WINDOW seconds per key (a sliding window);
    LIMIT 0: no limit. Memory: one deque per key seen within the window."""

    def __init__(self, limit: int, window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._seen: dict[str, deque[float]] = {}

    def take(self, key: str) -> bool:
        """Count one event for KEY; False (and nothing counted) when over the limit."""
        if self.limit <= 0:
            return True
        now = self.clock()
        if len(self._seen) > 1000:  # forget keys idle for a whole window
            self._seen = {k: q for k, q in self._seen.items() if q and q[-1] > now - self.window}
        times = self._seen.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True
