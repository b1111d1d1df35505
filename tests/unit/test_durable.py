"""durable.atomic_writer: the new content or the old, never half, never a temp file left."""

from __future__ import annotations

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
