"""durable.atomic_writer: the new content or the old, never half, never a temp file left."""

from __future__ import annotations

import os

import pytest

from pbxhost.durable import atomic_writer


def test_replaces_with_mode(tmp_path):
    path = tmp_path / "sub/state.json"
    with atomic_writer(path, 0o640) as f:
        f.write("new")
    assert path.read_text() == "new"
    assert oct(path.stat().st_mode & 0o777) == "0o640"


def test_error_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_writer(path) as f:
        f.write("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_write_durably_bytes_mode_hook_and_lock(tmp_path):
    import fcntl

    from pbxhost.durable import write_durably
    path, seen = tmp_path / "rec.json", []
    assert write_durably(path, b"\x00data", 0o660, before_rename=seen.append) is None
    assert path.read_bytes() == b"\x00data" and oct(path.stat().st_mode & 0o777) == "0o660"
    assert len(seen) == 1 and seen[0].parent == tmp_path and not seen[0].exists()
    fd = write_durably(path, b"locked", lock=True)
    assert fd is not None
    try:
        other = os.open(path, os.O_RDONLY)
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(other)
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.json"]


def test_write_durably_temp_file_in_tmpdir_and_gone_on_error(tmp_path):
    from pbxhost.durable import write_durably
    (tmp_path / "tmp").mkdir()
    path = tmp_path / "rec.json"
    path.write_bytes(b"old")

    def refuse(tmp):
        assert tmp.parent == tmp_path / "tmp"
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError):
        write_durably(path, b"new", tmpdir=tmp_path / "tmp", before_rename=refuse)
    assert path.read_bytes() == b"old" and list((tmp_path / "tmp").iterdir()) == []
