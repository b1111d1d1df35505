"""Migrations of seeded files at every boot (pbxhost.host.migrate, run by
`pbxhost seed`): the seed-era [sub_sender] (the sending user after the FIRST
`<` of MESSAGE(from)) is replaced where it is verbatim, left with a warning
where it was edited, and a current file is not touched."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from pbxhost import service
from pbxhost.host import cli, migrate, seed

SUITE = Path(__file__).parents[2] / "etc/asterisk"
M = migrate.SENDER_AFTER_LAST_LT


def shipped() -> str:
    return (SUITE / "extensions.conf").read_text()


def seed_era() -> str:
    """The shipped extensions.conf with [sub_sender] as the earlier release seeded it."""
    text = shipped()
    new, old = "".join(f"{line}\n" for line in M.new), "".join(f"{line}\n" for line in M.old)
    assert text.count(new) == 1  # the migration writes exactly what is shipped now
    return text.replace(new, old)


def seeded(tmp_path: Path, extensions: str) -> Path:
    seed.seed(tmp_path, SUITE, {})
    path = tmp_path / "extensions.conf"
    path.write_text(extensions)
    os.chmod(path, 0o640)
    return path


def records(caplog) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "pbxhost.seed"]


def test_the_seed_era_sender_line_is_migrated_at_the_next_boot(tmp_path, caplog):
    path = seeded(tmp_path, seed_era())
    before = path.stat()
    with caplog.at_level(logging.INFO, "pbxhost.seed"):
        result = seed.seed(tmp_path, SUITE, {})  # the boot's run: already seeded
    assert "already seeded" in result.skipped
    text = path.read_text()
    assert text == shipped()
    assert "CUT(MESSAGE(from),<,2)" not in text and "FIELDQTY(from,<)" in text
    after = path.stat()
    assert stat.S_IMODE(after.st_mode) == 0o640
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert after.st_ino != before.st_ino  # replaced by a rename (durable.write_durably)
    logged = records(caplog)
    assert len(logged) == 1 and logged[0][0] == service.NOTICE
    assert str(path) in logged[0][1] and "after the last `<`" in logged[0][1]
    assert not list(tmp_path.glob(".tmp-*"))
    caplog.clear()  # the next boot: nothing left to do
    seed.seed(tmp_path, SUITE, {})
    assert path.read_text() == shipped() and records(caplog) == []


def test_a_current_extensions_conf_is_not_touched(tmp_path, caplog):
    path = seeded(tmp_path, shipped())
    before = path.stat()
    with caplog.at_level(logging.INFO, "pbxhost.seed"):
        seed.seed(tmp_path, SUITE, {})
    assert path.read_text() == shipped() and path.stat().st_ino == before.st_ino
    assert records(caplog) == []


def test_an_edited_seed_era_sender_is_left_with_a_warning(tmp_path, caplog):
    # the admin changed a line of the block (a label), the flaw is still there
    edited = seed_era().replace(" same => n(parse),Set(sender=",
                                " same => n(parse),NoOp(mine)\n same => n,Set(sender=")
    path = seeded(tmp_path, edited)
    before = path.stat()
    with caplog.at_level(logging.INFO, "pbxhost.seed"):
        seed.seed(tmp_path, SUITE, {})
    assert path.read_text() == edited and path.stat().st_ino == before.st_ino
    logged = records(caplog)
    assert len(logged) == 1 and logged[0][0] == logging.WARNING
    assert str(path) in logged[0][1] and "LAST `<`" in logged[0][1]
    assert "CUT(MESSAGE(from),<,2)" in logged[0][1]  # what to look for


def test_plan_is_pure_and_keeps_the_line_ends():
    crlf = seed_era().replace("\n", "\r\n")
    p = migrate.plan(M, crlf)
    assert p.warning is None and p.text == shipped().replace("\n", "\r\n")
    assert migrate.plan(M, shipped()) == migrate.Plan()
    # the old block twice: not ours to choose which; the admin is told
    twice = seed_era() + "\n[copy]\n" + "".join(f"{line}\n" for line in M.old)
    assert migrate.plan(M, twice).text is None and migrate.plan(M, twice).warning
    # the flaw in a comment is no flaw
    assert migrate.plan(M, shipped() + "; was ${CUT(MESSAGE(from),<,2)}\n") == migrate.Plan()


def test_a_read_only_file_is_reported_not_half_written(tmp_path, caplog, monkeypatch):
    path = seeded(tmp_path, seed_era())

    def refuse(*args, **kw):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(migrate, "write_durably", refuse)
    with caplog.at_level(logging.INFO, "pbxhost.seed"):
        warnings = migrate.apply(tmp_path)
    assert path.read_text() == seed_era()
    assert len(warnings) == 1 and "not migrated (Permission denied)" in warnings[0]
    assert [lvl for lvl, _ in records(caplog)] == [logging.WARNING]


def test_pbxhost_seed_logs_the_migration_even_with_a_bad_syslog_level(tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.delenv("FORCE_CONFIG", raising=False)
    monkeypatch.delenv("HOSTNAME", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("PBXHOST_LOG", raising=False)
    path = seeded(tmp_path, seed_era())
    monkeypatch.setenv("SYSLOG_LEVEL", "loud")  # the daemons refuse it; seeding goes on
    try:
        assert cli.main(["seed", "--dest", str(tmp_path)]) == 0
    finally:
        logging.getLogger().handlers.clear()  # setup_logging's, bound to this test's stderr
    assert path.read_text() == shipped()
    captured = capsys.readouterr()
    assert "already seeded" in captured.out
    assert f"NOTICE pbxhost.seed: {path} migrated: [sub_sender]" in captured.err
