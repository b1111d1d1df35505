"""autoban's rules, pure: what one security event from an address means, given
what the kernel's sets say about that address now. The clock is a parameter.

- watch: the event times of the last `watchtime` seconds (a sliding window);
  the (maxcount+1)-th event inside it jails the address for `jailtime`.
- jail: packets dropped for the sentence; parole starts with the jailing and
  lasts until `watchtime` after release (one kernel element, no timer needed).
- an event while on parole: jailed again at once for the last sentence ×
  `repeatmult`, capped at `max_sentence`.
- whitelisted, trusted and exempt addresses are never jailed.

The seed's PHP autoban jailed at the maxcount-th event and re-armed one
window on every event; here it is "more than maxcount within any watchtime"."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from enum import Enum

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


@dataclass(frozen=True)
class Standing:
    """What the kernel's sets hold for one address."""
    times: tuple[int, ...] = ()      # watch: event times (epoch seconds), oldest first
    jailed: bool = False
    sentence: int | None = None      # parole: the sentence of the last jailing
    whitelisted: bool = False
    trusted: bool = False


class Action(Enum):
    IGNORE = "ignore"
    WATCH = "watch"
    JAIL = "jail"


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str
    times: tuple[int, ...] = ()  # WATCH: the window to store
    sentence: int = 0            # JAIL: seconds


def on_event(settings: Settings, standing: Standing, now: int) -> Verdict:
    if standing.whitelisted:
        return Verdict(Action.IGNORE, "whitelisted")
    if standing.trusted:
        return Verdict(Action.IGNORE, "trusted after a successful login")
    if standing.jailed:
        return Verdict(Action.IGNORE, "already jailed")  # a packet that was in flight
    if standing.sentence is not None:
        sentence = min(int(standing.sentence * settings.repeatmult), settings.max_sentence)
        return Verdict(Action.JAIL, "offended on parole", sentence=sentence)
    # a time ahead of now (the clock stepped back since it was stored) counts as now
    times = (min(t, now) for t in standing.times)
    window = (*(t for t in times if t > now - settings.watchtime), now)
    if len(window) > settings.maxcount:
        return Verdict(Action.JAIL, f"{len(window)} events within {settings.watchtime}s",
                       sentence=min(settings.jailtime, settings.max_sentence))
    return Verdict(Action.WATCH, f"{len(window)} of {settings.maxcount} events",
                   times=window[-settings.maxcount:])


# The kernel element comments that carry the policy's data, readable in `nft list ruleset`.

def encode_times(times: tuple[int, ...]) -> str:
    """`events 1795675185 +0 +3 +5`: the first time, then deltas."""
    parts = [str(times[0])] + [f"+{b - a}" for a, b in itertools.pairwise(times)]
    text = "events " + " ".join(parts)
    if len(text) > COMMENT_MAX:
        raise ValueError(f"{len(times)} event times do not fit in an element comment")
    return text


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

