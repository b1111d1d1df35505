"""autoban's rules, pure: what one security event from an address means, given
what the kernel's sets say about that address now. The clock is a parameter.

- watch: the event times of the last `watchtime` seconds (a sliding window);
  the (maxcount+1)-th event inside it jails the address for `jailtime`.
- jail: packets dropped for the sentence; parole starts with the jailing and
  lasts until `watchtime` after release (one kernel element, no timer needed).
- an event while on parole: jailed again at once for the last sentence ×
  `repeatmult`, capped at `max_sentence`.
- whitelisted, trusted and exempt addresses are never jailed.
- scope by proof (docs/autoban.md, "Forged sources"): an event that proves its
  source (TCP/TLS: a handshake) jails everything from it (`jail`); one that
  does not (UDP: the source may be forged) jails its SIP only (`sipjail`), and
  such an unproven offence never makes a sentence grow.

The seed's PHP autoban jailed at the maxcount-th event and re-armed one
window on every event; here it is "more than maxcount within any watchtime"."""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

COMMENT_MAX = 120   # below nftables' element-comment limit
MAX_MAXCOUNT = 25   # the window's times must fit in one element comment


@dataclass(frozen=True)
class Settings:
    maxcount: int = 10
    watchtime: int = 1200
    jailtime: int = 1200
    repeatmult: float = 6
    max_sentence: int = 365 * 86400

    def __post_init__(self) -> None:
        if not 1 <= self.maxcount <= MAX_MAXCOUNT:
            raise ValueError(f"maxcount must be 1..{MAX_MAXCOUNT}, not {self.maxcount}")
        if self.watchtime < 1 or self.jailtime < 1:
            raise ValueError("watchtime and jailtime must be at least 1s")
        if self.repeatmult < 1:
            raise ValueError(f"repeatmult must be at least 1, not {self.repeatmult}")
        # A full window must fit in one element comment; deltas within it sum to < watchtime.
        step = self.watchtime // self.maxcount
        encode_times(tuple(10**10 + i * step for i in range(self.maxcount)))


class Standing(NamedTuple):
    """What the kernel's sets hold for one address."""
    times: tuple[int, ...] = ()      # watch: event times (epoch seconds), oldest first
    jailed: bool = False             # jail: everything dropped
    sipjailed: bool = False          # sipjail: its SIP dropped
    sentence: int | None = None      # parole: the sentence of the last jailing
    whitelisted: bool = False
    trusted: bool = False


class Action(Enum):
    IGNORE = "ignore"
    WATCH = "watch"
    JAIL = "jail"


class Scope(Enum):
    ALL = "jail"        # the set that holds it
    SIP = "sipjail"


class Verdict(NamedTuple):
    action: Action
    reason: str
    times: tuple[int, ...] = ()  # WATCH: the window to store
    sentence: int = 0            # JAIL: seconds
    scope: Scope = Scope.ALL     # JAIL: everything, or its SIP only
    record: int = 0              # JAIL: the sentence parole remembers (grows only when proven)


def on_event(settings: Settings, standing: Standing, now: int,
             proven: bool = True) -> Verdict:
    """PROVEN: the event's source address is proven (a TCP/TLS connection)."""
    if standing.whitelisted:
        return Verdict(Action.IGNORE, "whitelisted")
    if standing.trusted:
        return Verdict(Action.IGNORE, "trusted after a successful login")
    if standing.jailed or (standing.sipjailed and not proven):
        return Verdict(Action.IGNORE, "already jailed")  # a packet that was in flight
    scope = Scope.ALL if proven else Scope.SIP
    if standing.sentence is not None or standing.sipjailed:
        last = standing.sentence or settings.jailtime
        if not proven:  # a forger could aim this at anyone: no growth
            sentence = min(settings.jailtime, settings.max_sentence)
            return Verdict(Action.JAIL, "offended on parole", sentence=sentence, scope=scope,
                           record=max(last, sentence))
        sentence = min(int(last * settings.repeatmult), settings.max_sentence)
        return Verdict(Action.JAIL, "offended on parole", sentence=sentence, scope=scope,
                       record=sentence)
    # a time ahead of now (the clock stepped back since it was stored) counts as now
    cutoff = now - settings.watchtime
    window = (*[min(t, now) for t in standing.times if t > cutoff], now)
    if len(window) > settings.maxcount:
        sentence = min(settings.jailtime, settings.max_sentence)
        return Verdict(Action.JAIL, f"{len(window)} events within {settings.watchtime}s",
                       sentence=sentence, scope=scope, record=sentence)
    return Verdict(Action.WATCH, f"{len(window)} of {settings.maxcount} events",
                   times=window[-settings.maxcount:])


# The kernel element comments that carry the policy's data, readable in `nft list ruleset`.

# Cached: a flood's addresses share their event times, so their comments too.
@functools.lru_cache(maxsize=4096)
def encode_times(times: tuple[int, ...]) -> str:
    """`events 1795675185 +0 +3 +5`: the first time, then deltas."""
    parts = [str(times[0])] + [f"+{b - a}" for a, b in itertools.pairwise(times)]
    text = "events " + " ".join(parts)
    if len(text) > COMMENT_MAX:
        raise ValueError(f"{len(times)} event times do not fit in an element comment")
    return text


@functools.lru_cache(maxsize=4096)
def decode_times(comment: str | None) -> tuple[int, ...]:
    """The inverse of encode_times; an unreadable comment counts as no events."""
    if not comment or not re.fullmatch(r"events \d+( \+\d+)*", comment):
        return ()
    first, *deltas = comment.split()[1:]
    times = [int(first)]
    for delta in deltas:
        times.append(times[-1] + int(delta))
    return tuple(times)


def encode_sentence(sentence: int) -> str:
    return f"sentence {sentence}"


def decode_sentence(comment: str | None) -> int | None:
    match = re.fullmatch(r"sentence (\d+)", comment or "")
    return int(match.group(1)) if match else None



# Batching (docs/autoban.md, "Throughput"): watch counts wait in memory at most
# FLUSH_INTERVAL before they are written; a jailing never waits for the window.

FLUSH_INTERVAL = 0.1  # seconds: what a kill -9 may lose of the watch counts


def flush_due(first_pending: float | None, now: float,
              interval: float = FLUSH_INTERVAL) -> bool:
    """Whether the pending watch counts (the oldest unwritten since FIRST_PENDING,
    a monotonic time; None: nothing pending) must be written now."""
    return first_pending is not None and now - first_pending >= interval


def flush_delay(first_pending: float, now: float, interval: float = FLUSH_INTERVAL) -> float:
    """Seconds until the pending counts are due (0 when already due)."""
    return max(0.0, first_pending + interval - now)
