"""autoban's state file: every element of the kernel sets with its remaining
time, written atomically, so a reboot (tables gone) loses nothing.

Format (version 2; version 1, the previous release's, is read too):

    {"version": 2, "saved_at": 1795675185, "boot_id": "…", "boottime": 812.5,
     "config": {"whitelist": [...], "blacklist": [...]},
     "trunks": {"sip.itsp.example": ["198.51.100.5"]},
     "elements": [{"set": "jail", "addr": "192.0.2.9", "comment": "sentence 1200",
                   "timeout": 1200, "remaining": 600, "expires_at": 1795675785}, ...]}

Restoring subtracts the time that passed since the save from each element's
`remaining`, never adds to it: a sentence never comes back longer than it was.
The time that passed is measured, in order of trust, by CLOCK_BOOTTIME when
the file was written in this boot (a daemon restart: immune to clock steps),
else by the wall clock when both ends are plausible (saved after
PLAUSIBLE_SINCE and not in the future), else taken as zero: a file written by
a clock far behind (no RTC, 1970) or far ahead keeps its remaining times
instead of being dropped or stretched. `config` lists the whitelist/blacklist
entries that came from autoban.conf at the last start, so an entry removed
from the file is removed from the set (entries added with the CLI stay);
`trunks` the addresses the trunk's host names last resolved to (trunks.py)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pbxhost.autoban.firewall import Element, Put
from pbxhost.durable import atomic_writer

log = logging.getLogger("pbxhost.autoban")
VERSION = 2
READS = (1, 2)
PLAUSIBLE_SINCE = 1_735_689_600  # 2025-01-01: no state file of autoban is older
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class Clocks:
    """The three clocks a save is stamped with and a load compares against."""
    wall: float
    boot_id: str | None = None
    boottime: float | None = None

    @classmethod
    def now(cls, wall: float | None = None) -> Clocks:
        """The real clocks; with WALL (an injected clock, tests) the wall clock only."""
        if wall is not None:
            return cls(wall)
        try:
            boot_id: str | None = _BOOT_ID.read_text().strip()
        except OSError:
            boot_id = None
        return cls(time.time(), boot_id, time.clock_gettime(time.CLOCK_BOOTTIME))


@dataclass(frozen=True)
class Saved:
    puts: list[Put] = field(default_factory=list)
    config: dict[str, list[str]] | None = None  # None: not recorded (version 1)
    version: int | None = None
    trunks: dict[str, list[str]] = field(default_factory=dict)  # name → last addresses


def save(path: Path, elements: Iterable[Element], now: float | Clocks | None = None,
         config: dict[str, list[str]] | None = None,
         trunks: dict[str, list[str]] | None = None) -> None:
    clocks = now if isinstance(now, Clocks) else Clocks.now(now)
    head: dict[str, Any] = {"version": VERSION, "saved_at": round(clocks.wall),
                            "boot_id": clocks.boot_id, "boottime": clocks.boottime,
                            "config": config, "trunks": trunks or {}}
    # atomic: the file is the old or the new state, never half
    with atomic_writer(path, 0o600) as f:
        # one element a line, written as we go: readable, and no second copy in memory
        f.write(json.dumps(head)[:-1] + ', "elements": [')
        wall, sep = round(clocks.wall), "\n "
        for e in elements:
            # by hand, not json.dumps per row (a third of the time with 100k elements);
            # set and addr come validated from the kernel, the comment is escaped
            f.write(f'{sep}{{"set": "{e.set}", "addr": "{e.addr}", '
                    f'"comment": {json.dumps(e.comment)}, "timeout": {_num(e.timeout)}, '
                    f'"remaining": {_num(e.expires)}, "expires_at": '
                    f'{_num(None if e.expires is None else wall + e.expires)}}}')
            sep = ",\n "
        f.write("\n]}\n")


def _num(value: int | None) -> str:
    return "null" if value is None else str(int(value))


def elapsed(data: dict[str, Any], clocks: Clocks) -> float:
    """Seconds that passed since DATA was saved, by the clock we can trust (module doc)."""
    saved_boot, saved_bt = data.get("boot_id"), data.get("boottime")
    if (clocks.boot_id and saved_boot == clocks.boot_id and isinstance(saved_bt, int | float)
            and clocks.boottime is not None and clocks.boottime >= saved_bt):
        return clocks.boottime - saved_bt
    saved_at = data.get("saved_at")
    if isinstance(saved_at, int | float) and PLAUSIBLE_SINCE <= saved_at <= clocks.wall:
        return clocks.wall - saved_at
    return 0.0


def load(path: Path, now: float | Clocks | None = None) -> Saved:
    """Elements still alive, with their remaining time; nothing for a missing or
    broken file (logged)."""
    clocks = now if isinstance(now, Clocks) else Clocks.now(now)
    try:
        data, rows = _read(path)
        version = data.get("version", 1)
        if version not in READS:
            raise ValueError(f"version {version!r} is newer than this autoban reads {READS}")
        return _saved(path, data, rows, clocks, version)
    except FileNotFoundError:
        return Saved()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("state file %s unreadable, starting empty: %s", path, exc)
        return Saved()


def records(path: Path) -> Saved:
    """Only the file's records (config, trunks), not its elements: what the CLI
    keeps when it rewrites the file (the head is the first line, as save() writes
    it; another layout is read whole)."""
    try:
        data, _ = _read(path)
    except FileNotFoundError:
        return Saved()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("state file %s unreadable: %s", path, exc)
        return Saved()
    return Saved([], _config(data.get("config")), data.get("version", 1),
                 _trunks(data.get("trunks")))


def _read(path: Path) -> tuple[dict[str, Any], Iterator[Any]]:
    """The head and the element rows. save() writes one row a line (and so did
    version 1): those are parsed a line at a time, so 100k rows never exist as
    JSON objects at once; any other layout is parsed whole."""
    with path.open() as f:
        first = f.readline()
        if first.rstrip().endswith('"elements": ['):
            head = json.loads(first.rstrip() + "]}")
            return head, _rows(path.open())
        data = json.loads(first + f.read())
    if not isinstance(data, dict):
        raise TypeError("not an object")
    if not isinstance(data["elements"], list):
        raise TypeError("elements is not a list")
    return data, iter(data["elements"])


def _rows(f: IO[str]) -> Iterator[Any]:
    with f:
        f.readline()
        for line in f:
            line = line.strip().removesuffix(",")
            if line == "]}":
                return
            yield json.loads(line)
    raise ValueError("the element list does not end")


def _saved(path: Path, data: dict[str, Any], rows: Iterator[Any], clocks: Clocks,
           version: int) -> Saved:
    passed = elapsed(data, clocks)
    puts = []
    comments: dict[str, str] = {}  # one copy of each comment ("sentence 1200" x 50 000)
    for row in rows:
        try:
            left = _remaining(row, data.get("saved_at"))
            comment = row.get("comment")
            if isinstance(comment, str):
                comment = comments.setdefault(comment, comment)
            if left is None:
                puts.append(Put(str(row["set"]), str(row["addr"]), None, comment))
                continue
            # up: the kernel reported whole seconds, rounded down
            remaining = math.ceil(left - passed)
            if remaining > 0:
                puts.append(Put(str(row["set"]), str(row["addr"]), remaining, comment))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("state file %s: bad element %r skipped: %s", path, row, exc)
    return Saved(puts, _config(data.get("config")), version, _trunks(data.get("trunks")))


def _trunks(value: Any) -> dict[str, list[str]]:
    if not isinstance(value, dict):
        return {}
    return {str(k): [str(a) for a in v] for k, v in value.items() if isinstance(v, list)}


def _remaining(row: dict[str, Any], saved_at: Any) -> float | None:
    """The element's remaining seconds when the file was saved (None: permanent),
    never more than its full timeout."""
    if "remaining" in row:  # version 2
        left = row["remaining"]
    elif row["expires_at"] is None:
        left = None
    else:  # version 1: absolute expiry, and the same clock's saved_at
        left = float(row["expires_at"]) - float(saved_at)
    if left is None:
        return None
    left = float(left)
    timeout = row.get("timeout")
    return min(left, float(timeout)) if isinstance(timeout, int | float) else left


def _config(value: Any) -> dict[str, list[str]] | None:
    if not isinstance(value, dict):
        return None
    return {name: [str(e) for e in value.get(name) or [] if isinstance(e, str)]
            for name in ("whitelist", "blacklist")}
