"""The per-user rate limit of the plain AGI fallback (`websms agi`, one
process per SMS while websmsd is down), whose runs share no memory: each
user's recent send times live in a small file of the spool's rate/
directory, read and rewritten under flock(2), so that two SMS of one user
at the same time are counted one after the other. The decision is
guards.rate_decision, the one websmsd's in-memory RateLimit makes for
FastAGI; only where the times are kept differs.

No fsync: the file is a count, not a message; a crash that loses it forgets
one window's sends at most (as a websmsd restart forgets its memory)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from pbxhost.durable import write_all
from pbxhost.websms.guards import rate_decision
from pbxhost.websms.spool import SpoolError

RATE_DIR = "rate"
MAX_BYTES = 64 << 10   # a sane file holds `limit` numbers; more is not ours: ignored


def file_name(key: str) -> str:
    """KEY (an endpoint name, from the dialplan) as a file name: hashed, so no
    name can reach outside the directory or collide with another's."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def parse_times(data: bytes) -> list[float]:
    times = []
    for line in data.split(b"\n"):
        with contextlib.suppress(ValueError):
            t = float(line)
            if t == t:  # not NaN
                times.append(t)
    return times


class SharedRateLimit:
    """At most LIMIT sends per WINDOW seconds per key, counted across processes
    (files in FOLDER); LIMIT 0: no limit. Wall-clock time: the processes share
    no monotonic clock."""

    def __init__(self, folder: Path, limit: int, window: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.folder, self.limit, self.window, self.clock = folder, limit, window, clock

    def take(self, key: str) -> bool:
        """Count one send for KEY; False (and nothing counted) when over the limit.
        SpoolError when the count cannot be kept (then nothing is sent)."""
        if self.limit <= 0:
            return True
        path = self.folder / file_name(key)
        try:
            self.folder.mkdir(mode=0o770, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o660)
        except OSError as exc:
            raise SpoolError(f"cannot keep the rate of {key} in {path}: "
                             f"{exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by close: one process at a time
            data = os.pread(fd, MAX_BYTES, 0)
            allowed, kept = rate_decision(parse_times(data), self.clock(), self.limit,
                                          self.window)
            if allowed or len(kept) != len(parse_times(data)):
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                write_all(fd, "".join(f"{t!r}\n" for t in kept).encode("ascii"))
            return allowed
        except OSError as exc:
            raise SpoolError(f"cannot keep the rate of {key} in {path}: "
                             f"{exc.strerror or exc}") from exc
        finally:
            os.close(fd)
