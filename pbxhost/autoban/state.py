"""autoban's state file: every element of the kernel sets with its absolute
expiry time, written atomically, so a reboot (tables gone) loses nothing."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from pbxhost.autoban.firewall import Element, Put
from pbxhost.durable import atomic_writer

log = logging.getLogger("pbxhost.autoban")
VERSION = 1


def save(path: Path, elements: list[Element], now: float | None = None) -> None:
    now = time.time() if now is None else now
    # atomic: the file is the old or the new state, never half
    with atomic_writer(path, 0o600) as f:
        # one element a line, written as we go: readable, and no second copy in memory
        f.write(f'{{"version": {VERSION}, "saved_at": {round(now)}, "elements": [')
        for i, e in enumerate(elements):
            row = {"set": e.set, "addr": e.addr, "comment": e.comment,
                   "expires_at": None if e.expires is None else round(now + e.expires, 3)}
            f.write(("\n " if i == 0 else ",\n ") + json.dumps(row))
        f.write("\n]}\n")


def load(path: Path, now: float | None = None) -> list[Put]:
    """Elements still alive, with their remaining time; [] for a missing or broken file."""
    now = time.time() if now is None else now
    try:
        data = json.loads(path.read_text())
        rows = data["elements"]
        if not isinstance(rows, list):
            raise TypeError("elements is not a list")
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("state file %s unreadable, starting empty: %s", path, exc)
        return []
    puts = []
    for row in rows:
        try:
            expires_at = row["expires_at"]
            # up: the kernel reported whole seconds, rounded down
            remaining = None if expires_at is None else math.ceil(expires_at - now)
            if remaining is not None and remaining <= 0:
                continue
            puts.append(Put(str(row["set"]), str(row["addr"]), remaining, row.get("comment")))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("state file %s: bad element %r skipped: %s", path, row, exc)
    return puts
