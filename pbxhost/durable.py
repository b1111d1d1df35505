"""Files that survive a crash or a power loss: the one way every spool, state
and seeded file of pbxhost is made durable (write_durably; atomic_writer is
its text-mode front)."""

from __future__ import annotations

import contextlib
import fcntl
import io
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


def write_durably(path: Path, data: bytes, mode: int = 0o600, *, tmpdir: Path | None = None,
                  before_rename: Callable[[Path], None] | None = None,
                  lock: bool = False) -> int | None:
    """PATH holds DATA, durably, or is left as it was. The steps, each needed:
    a temp file in TMPDIR (default: PATH's directory; the same file system, so
    the rename is atomic) with MODE, all bytes, fsync (the contents), the
    caller's BEFORE_RENAME(tmp) (owner, say), rename over PATH, fsync of PATH's
    directory (the name). On an error the temp file is removed. LOCK: the file
    is flock()ed before it appears, and its fd returned (the caller closes it)."""
    folder = tmpdir or path.parent
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".part")
    try:
        if lock:
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.fchmod(fd, mode)
        write_all(fd, data)
        os.fsync(fd)
        if before_rename is not None:
            before_rename(Path(tmp))
        os.replace(tmp, path)
        fsync_dir(path.parent)
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
def atomic_writer(path: Path, mode: int = 0o600) -> Iterator[IO[str]]:
    """Text written to the yielded file becomes PATH's content through
    write_durably once the block ends; on an error PATH is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    yield buffer
    write_durably(path, buffer.getvalue().encode("utf-8"), mode)
