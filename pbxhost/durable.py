"""Files that survive a crash or a power loss: the one way every spool, state
and seeded file of pbxhost is made durable (write_durably; atomic_writer is
its text-mode front)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


def fsync_dir(path: Path) -> None:
    """Make the names in PATH (renames, new files) survive a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Every byte of DATA (os.write may write fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


TEMP_PREFIX, TEMP_SUFFIX = ".tmp-", ".part"
TEMP_GLOB = f"{TEMP_PREFIX}*{TEMP_SUFFIX}"  # what a crash may leave in a directory


def _new_temp(folder: Path, mode: int) -> tuple[int, str]:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
    os.fchmod(fd, mode)  # whatever the umask, before a byte is written
    return fd, tmp


def _finish(fd: int, tmp: str, path: Path,
            before_rename: Callable[[Path], None] | None) -> None:
    """The steps after the bytes, each needed: fsync (the contents), the caller's
    BEFORE_RENAME(tmp) (owner, say), rename over PATH, fsync of PATH's
    directory (the name)."""
    os.fsync(fd)
    if before_rename is not None:
        before_rename(Path(tmp))
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_durably(path: Path, data: bytes, mode: int = 0o600, *, tmpdir: Path | None = None,
                  before_rename: Callable[[Path], None] | None = None,
                  lock: bool = False) -> int | None:
    """PATH holds DATA, durably, or is left as it was: a temp file in TMPDIR
    (default: PATH's directory; the same file system, so the rename is atomic)
    with MODE, all bytes, then _finish's steps. On an error the temp file is
    removed. LOCK: the file is flock()ed before it appears, and its fd returned
    (the caller closes it)."""
    fd, tmp = _new_temp(tmpdir or path.parent, mode)
    try:
        if lock:
            fcntl.flock(fd, fcntl.LOCK_EX)
        write_all(fd, data)
        _finish(fd, tmp, path, before_rename)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if lock:
        return fd
    os.close(fd)
    return None


@contextlib.contextmanager
def atomic_writer(path: Path, mode: int = 0o600,
                  before_rename: Callable[[Path], None] | None = None) -> Iterator[IO[str]]:
    """Text written to the yielded file becomes PATH's content, as write_durably
    makes it, streamed to the temp file rather than held in memory (autoban's
    state of 100 000 elements); on an error PATH is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_temp(path.parent, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", closefd=False) as f:
            yield f
        _finish(fd, tmp, path, before_rename)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)
