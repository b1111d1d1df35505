"""Seeding of the configuration suite: only into an empty dir, once (lock),
FORCE_CONFIG copies what is missing, user files are never touched, a seeding
cut short is completed, and no shipped secret is usable."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pbxhost import conf
from pbxhost.host import cli, seed
from pbxhost.settings import SettingError

SUITE = Path(__file__).parents[2] / "etc/asterisk"
# design.md, "The config suite's file names"
CONTRACT_FILES = {
    "asterisk.conf", "acl.conf", "ccss.conf", "cli_aliases.conf", "extensions.conf",
    "features.conf", "indications.conf", "logger.conf", "modules.conf", "musiconhold.conf",
    "pjproject.conf", "rtp.conf",
    "extensions_local.conf", "pjsip.conf", "pjsip_transport.conf", "pjsip_wizard.conf",
    "pjsip_endpoint.conf", "minivm.conf", "manager.conf", "autoban.conf", "websms.conf",
}
USERS = ("john.doe", "jane.doe")


def run(dest: Path, **env: str) -> seed.SeedResult:
    return seed.seed(dest, SUITE, env)


def secret_of(path: Path, section: str, key: str = "secret") -> str:
    return conf.load(path).section(section).get(key) or ""


def password_of(dest: Path, user: str) -> str:
    # pjsip_wizard.conf holds the templates and includes pjsip_endpoint.conf
    return conf.load(dest / "pjsip_wizard.conf").section(user).get("inbound_auth/password")


# ---------------------------------------------------------------- the suite itself

def test_the_suite_has_exactly_the_contracts_file_names():
    assert {p.name for p in SUITE.iterdir()} == CONTRACT_FILES


def test_defaults_are_found_in_the_source_tree_and_else_where_installed():
    assert SUITE.resolve() == seed.DEFAULTS
    assert Path("/usr/share/pbxhost/asterisk") == seed.INSTALLED


def test_shipped_files_carry_no_usable_secret():
    users = (SUITE / "pjsip_endpoint.conf").read_text()
    assert set(seed.empty_option_sections(users, "inbound_auth/password")) == set(USERS)
    for name, section in (("manager.conf", "autoban"), ("manager.conf", "websms"),
                          ("autoban.conf", "asmanager"), ("websms.conf", "asmanager")):
        assert secret_of(SUITE / name, section) == "", (name, section)


# ---------------------------------------------------------------- editing text

TEXT = """\
; a comment that stays
[one]
key = old ; and its comment
other = x

[two]
; secret = (placeholder)
read = all
"""


def test_set_option_replaces_a_key_in_its_section_only():
    out = seed.set_option(TEXT, "one", "key", "new")
    assert "key = new\n" in out and "= old" not in out
    assert out.count("\n") == TEXT.count("\n") and "; a comment that stays" in out


def test_set_option_fills_a_commented_placeholder_or_adds_the_key():
    out = seed.set_option(TEXT, "two", "secret", "s3")
    assert "[two]\nsecret = s3\nread = all\n" in out
    out = seed.set_option(TEXT, "two", "write", "none")
    assert "[two]\nwrite = none\n; secret" in out


def test_set_option_on_a_missing_section_is_an_error():
    with pytest.raises(seed.SeedError, match=r"no section \[three\]"):
        seed.set_option(TEXT, "three", "key", "v")


def test_empty_options_skip_templates_and_set_values():
    text = "[t](!)\npw =\n[a](t)\npw =\n[b](t)\npw = set\n"
    assert seed.empty_option_sections(text, "pw") == ["a"]


def test_hostname_fills_domain_and_external_addresses_not_comments():
    text = "[t](!)\ndomain = example.com\nexternal_media_address =\n;domain = example.com\n"
    out = seed.fill_hostname(text, "pbx.example.org")
    assert out == ("[t](!)\ndomain = pbx.example.org\nexternal_media_address = pbx.example.org\n"
                   ";domain = example.com\n")


def test_a_bad_hostname_seeds_nothing(tmp_path):
    with pytest.raises(SettingError, match="HOSTNAME"):
        run(tmp_path / "etc", HOSTNAME="pbx; rm -rf /")
    assert list((tmp_path / "etc").iterdir()) == []


# ---------------------------------------------------------------- seeding

def test_an_empty_dir_gets_every_file_with_fresh_secrets(tmp_path):
    dest = tmp_path / "etc"
    result = run(dest)
    assert set(result.copied) == CONTRACT_FILES
    assert {p.name for p in dest.iterdir()} == CONTRACT_FILES | {seed.LOCK}
    passwords = {u: password_of(dest, u) for u in USERS}
    assert all(len(p) >= 20 for p in passwords.values()) and len(set(passwords.values())) == 2
    assert result.passwords == passwords
    for user in ("autoban", "websms"):
        secret = secret_of(dest / "manager.conf", user)
        assert len(secret) >= 20 and secret == secret_of(dest / f"{user}.conf", "asmanager")
    assert secret_of(dest / "manager.conf", "autoban") != secret_of(dest / "manager.conf",
                                                                     "websms")
    # every other file is the shipped one, byte for byte
    for name in CONTRACT_FILES - {"pjsip_endpoint.conf", "manager.conf", "autoban.conf",
                                  "websms.conf"}:
        assert (dest / name).read_bytes() == (SUITE / name).read_bytes(), name


def test_secrets_differ_from_one_seeding_to_the_next(tmp_path):
    run(tmp_path / "a")
    run(tmp_path / "b")
    assert password_of(tmp_path / "a", "john.doe") != password_of(tmp_path / "b", "john.doe")
    assert (secret_of(tmp_path / "a/manager.conf", "autoban")
            != secret_of(tmp_path / "b/manager.conf", "autoban"))


def test_files_are_private(tmp_path):
    run(tmp_path)
    for path in tmp_path.glob("*.conf"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if path.name == "autoban.conf" else 0o640), path


def test_the_passwords_go_to_a_root_only_file_never_to_the_report(tmp_path):
    dest = tmp_path / "etc" / "asterisk"
    result = run(dest)
    report = result.report()
    secrets = (tmp_path / "etc" / seed.SECRETS)
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    for user in USERS:
        password = password_of(dest, user)
        assert password not in report
        assert f"{user} = {password}\n" in secrets.read_text()
    assert str(secrets) in report and "root only" in report
    assert "AMI user autoban: secret generated" in report
    assert secret_of(dest / "manager.conf", "autoban") not in report  # stays in the files


def test_the_secrets_file_reads_back_as_written(tmp_path):
    dest = tmp_path / "etc" / "asterisk"
    result = run(dest)
    assert seed.parse_secrets(result.secrets_file.read_text()) == result.passwords
    assert seed.parse_secrets("# a comment = no\n\njohn.doe = a = b\n") == {"john.doe": "a = b"}


def test_the_lock_stops_a_second_seeding(tmp_path):
    run(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    (tmp_path / "rtp.conf").unlink()
    result = run(tmp_path)
    assert result.copied == [] and "already seeded" in result.skipped
    assert not (tmp_path / "rtp.conf").exists()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {
        k: v for k, v in before.items() if k != "rtp.conf"}


def test_a_dir_with_the_users_own_files_is_left_alone(tmp_path):
    (tmp_path / "pjsip.conf").write_text("; mine\n")
    result = run(tmp_path)
    assert result.copied == [] and "not empty" in result.skipped
    assert [p.name for p in tmp_path.iterdir()] == ["pjsip.conf"]


def test_force_config_copies_only_missing_files_and_never_overwrites(tmp_path):
    run(tmp_path)
    mine = "; my own dialplan\n"
    (tmp_path / "extensions.conf").write_text(mine)
    (tmp_path / "rtp.conf").unlink()
    (tmp_path / "features.conf").unlink()
    password = password_of(tmp_path, "john.doe")
    result = run(tmp_path, FORCE_CONFIG="1")
    assert sorted(result.copied) == ["features.conf", "rtp.conf"]
    assert (tmp_path / "extensions.conf").read_text() == mine
    assert (tmp_path / "rtp.conf").read_bytes() == (SUITE / "rtp.conf").read_bytes()
    assert password_of(tmp_path, "john.doe") == password
    assert result.passwords == {}  # pjsip_endpoint.conf was there: nothing generated


def test_an_empty_force_config_forces_nothing(tmp_path):
    (tmp_path / "pjsip.conf").write_text("; mine\n")
    assert run(tmp_path, FORCE_CONFIG="").copied == []


@pytest.mark.parametrize("user", ["autoban", "websms"])
def test_a_missing_half_of_a_secret_pair_gets_the_existing_half(tmp_path, user):
    run(tmp_path)
    secret = secret_of(tmp_path / "manager.conf", user)
    (tmp_path / f"{user}.conf").unlink()
    run(tmp_path, FORCE_CONFIG="yes")
    assert secret_of(tmp_path / f"{user}.conf", "asmanager") == secret
    # and the other way round
    (tmp_path / "manager.conf").unlink()
    run(tmp_path, FORCE_CONFIG="yes")
    assert secret_of(tmp_path / "manager.conf", user) == secret


def test_a_pair_half_without_secret_is_reported_not_invented(tmp_path):
    (tmp_path / "manager.conf").write_text("[general]\nenabled = yes\n")
    result = run(tmp_path, FORCE_CONFIG="1")
    assert secret_of(tmp_path / "autoban.conf", "asmanager") == ""
    assert any("AMI user autoban: no secret in the existing manager.conf" in w
               for w in result.warnings)
    assert result.ami_users == []


def test_hostname_reaches_the_transports(tmp_path):
    run(tmp_path, HOSTNAME="pbx.example.org")
    transports = conf.load(tmp_path / "pjsip_transport.conf")
    template = transports.templates["transport_defaults"]
    for key in seed.HOSTNAME_KEYS:
        assert template.get(key) == "pbx.example.org"
    assert transports.section("transport-udp6").get("domain") == "pbx.example.org"
    assert "example.com" not in (tmp_path / "pjsip_transport.conf").read_text().replace(
        "; ", "")


def test_without_hostname_there_are_no_external_addresses(tmp_path):
    run(tmp_path)
    template = conf.load(tmp_path / "pjsip_transport.conf").templates["transport_defaults"]
    assert template.get("external_signaling_address") == ""
    assert template.get("domain") == "example.com"


# ---------------------------------------------------------------- cut short

class Crash(BaseException):
    """A kill in the middle: nothing of the seeding's own runs after it."""


def crash_after(monkeypatch, name: str, calls: int) -> None:
    real = getattr(os, name)
    count = {"n": 0}

    def fake(*args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise Crash
        return real(*args, **kwargs)
    monkeypatch.setattr(seed.os, name, fake)


def test_a_seeding_killed_while_installing_is_completed_with_the_same_secrets(
        tmp_path, monkeypatch):
    crash_after(monkeypatch, "replace", 5)  # 5 files in place, then killed
    with pytest.raises(Crash):
        run(tmp_path)
    monkeypatch.undo()
    assert not (tmp_path / seed.LOCK).exists()
    installed = {p.name for p in tmp_path.iterdir()} & CONTRACT_FILES
    assert len(installed) == 5
    result = run(tmp_path)
    assert "completed a seeding that was cut short" in result.warnings
    assert set(result.copied) == CONTRACT_FILES - installed
    # the passwords the killed run generated are reported by the one that finished
    assert result.passwords == {u: password_of(tmp_path, u) for u in USERS}
    assert {p.name for p in tmp_path.iterdir()} == CONTRACT_FILES | {seed.LOCK}
    for user in ("autoban", "websms"):  # the halves written before and after the kill agree
        assert (secret_of(tmp_path / "manager.conf", user)
                == secret_of(tmp_path / f"{user}.conf", "asmanager") != "")


def test_a_seeding_killed_while_staging_starts_again(tmp_path, monkeypatch):
    crash_after(monkeypatch, "open", 4)  # killed while writing the staged files
    with pytest.raises(Crash):
        run(tmp_path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == [seed.STAGING]  # nothing installed yet
    result = run(tmp_path)
    assert set(result.copied) == CONTRACT_FILES and result.passwords
    assert not (tmp_path / seed.STAGING).exists()


# ---------------------------------------------------------------- the command

def test_pbxhost_seed_reports_once_then_says_it_is_done(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FORCE_CONFIG", raising=False)
    monkeypatch.delenv("HOSTNAME", raising=False)
    assert cli.main(["seed", "--dest", str(tmp_path)]) == 0
    first = capsys.readouterr().out
    assert f"{tmp_path}: seeded {len(CONTRACT_FILES)} files" in first
    assert password_of(tmp_path, "jane.doe") not in first
    assert str(tmp_path.parent / seed.SECRETS) in first
    assert cli.main(["seed", "--dest", str(tmp_path)]) == 0
    second = capsys.readouterr().out
    assert "already seeded" in second and password_of(tmp_path, "jane.doe") not in second


def test_pbxhost_seed_with_a_bad_hostname_fails_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOSTNAME", "bad host")
    with pytest.raises(SystemExit) as exc:
        cli.main(["seed", "--dest", str(tmp_path)])
    assert exc.value.code == 78
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HOSTNAME" in err
    assert list(tmp_path.iterdir()) == []  # nothing half-done


def test_files_belong_to_their_readers(tmp_path, monkeypatch):
    """The suite: Asterisk's group; websms.conf (the ITSP credentials): websms's
    and root's, not Asterisk's (which is in group websms); autoban.conf: root's."""
    gids = {"asterisk": 4242, "websms": 4343, "root": 0}
    monkeypatch.setattr(seed.grp, "getgrnam",
                        lambda name: type("Group", (), {"gr_gid": gids[name]})())
    monkeypatch.setattr(seed.pwd, "getpwnam",
                        lambda name: type("User", (), {"pw_uid": {"root": 0,
                                                                  "websms": 4343}[name]})())
    run(tmp_path)
    assert (tmp_path / "pjsip.conf").stat()[4:6] == (0, 4242)
    assert (tmp_path / "websms.conf").stat()[4:6] == (4343, 0)
    assert (tmp_path / "autoban.conf").stat()[4:6] == (0, 0)
