"""`pbxhost seed --diff`: the user's config dir against the defaults as a
seeding would write them now. A fresh seeding is no difference (generated
secrets and HOSTNAME aside), a changed default and a user's edit show as a
unified diff, missing files on either side are listed, no secret is ever
printed, and nothing is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pbxhost import conf
from pbxhost.host import cli, seed

SUITE = Path(__file__).parents[2] / "etc/asterisk"


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    dest = tmp_path / "etc" / "asterisk"
    seed.seed(dest, SUITE, {})
    return dest


@pytest.fixture
def new_defaults(tmp_path: Path) -> Path:
    """The defaults of a later release, to be changed by a test."""
    return Path(shutil.copytree(SUITE, tmp_path / "new"))


def snapshot(dest: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()}


def secrets_in(dest: Path) -> list[str]:
    users = conf.load(dest / "pjsip_wizard.conf")
    found = [users.section(u).get("inbound_auth/password") for u in ("john.doe", "jane.doe")]
    found += [conf.load(dest / "manager.conf").section(u).get("secret")
              for u in ("autoban", "websms")]
    assert all(found)
    return found


def test_a_fresh_seeding_is_no_difference(seeded):
    result = seed.diff(seeded, SUITE, {})
    assert result.same, result.report()
    assert "the same as the defaults" in result.report()


def test_a_seeding_with_hostname_is_no_difference_without_it(tmp_path):
    dest = tmp_path / "asterisk"
    seed.seed(dest, SUITE, {"HOSTNAME": "pbx.example.net"})
    assert seed.diff(dest, SUITE, {}).same  # a shell has no pbxhost.env
    assert seed.diff(dest, SUITE, {"HOSTNAME": "pbx.example.net"}).same


def test_a_changed_default_shows_as_a_unified_diff(seeded, new_defaults):
    path = new_defaults / "extensions_local.conf"
    path.write_text(path.read_text() + "NEW_GLOBAL = 42\n")
    result = seed.diff(seeded, new_defaults, {})
    assert list(result.changed) == ["extensions_local.conf"]
    patch = result.changed["extensions_local.conf"]
    assert patch.startswith(f"--- {seeded}/extensions_local.conf\n"
                            f"+++ {new_defaults}/extensions_local.conf (default)\n")
    assert "\n+NEW_GLOBAL = 42\n" in patch
    assert not result.only_defaults and not result.only_dest


def test_a_users_edit_shows_and_nothing_is_written(seeded):
    path = seeded / "rtp.conf"
    path.write_text(path.read_text().replace("rtpstart", "; rtpstart", 1))
    before = snapshot(seeded)
    result = seed.diff(seeded, SUITE, {})
    assert list(result.changed) == ["rtp.conf"]
    assert "\n-; rtpstart" in result.changed["rtp.conf"]
    assert snapshot(seeded) == before


def test_files_missing_on_either_side_are_listed(seeded, new_defaults):
    (new_defaults / "new_feature.conf").write_text("[general]\n")
    (seeded / "rtp.conf").unlink()
    (seeded / "my_own.conf").write_text("[mine]\n")
    result = seed.diff(seeded, new_defaults, {})
    assert result.only_defaults == ["new_feature.conf", "rtp.conf"]
    assert result.only_dest == ["my_own.conf"]
    report = result.report()
    assert "only in the defaults: new_feature.conf" in report
    assert f"only in {seeded}: my_own.conf" in report
    assert ".pbxhost-seeded" not in report


def test_no_secret_is_ever_printed(seeded, new_defaults, capsys):
    generated = secrets_in(seeded)
    # the user sets the trunk's password (empty in the defaults) and an ITSP secret
    users = seeded / "pjsip_endpoint.conf"
    users.write_text(users.read_text().replace("outbound_auth/password =",
                                               "outbound_auth/password = trunk-pw-1", 1))
    websms = seeded / "websms.conf"
    websms.write_text(websms.read_text().replace("auth_method = basic",
                                                 "auth_method = basic\nauth_secret = itsp-pw-2"))
    for name in ("manager.conf", "pjsip_endpoint.conf", "websms.conf", "autoban.conf"):
        path = new_defaults / name
        path.write_text(path.read_text() + "; changed\n")  # every secret file in the diff
    assert cli.main(["seed", "--diff", "--dest", str(seeded)]) in (0, 1)
    result = seed.diff(seeded, new_defaults, {})
    out = result.report() + capsys.readouterr().out
    for secret in (*generated, "trunk-pw-1", "itsp-pw-2"):
        assert secret not in out
    assert f"-outbound_auth/password = {seed.MASK}" in result.changed["pjsip_endpoint.conf"]
    assert f"-auth_secret = {seed.MASK}" in result.changed["websms.conf"]
    # generated secrets are no difference
    assert "secret = " not in result.changed["manager.conf"].replace("; secret", "")


@pytest.mark.parametrize(("line", "masked"), [
    ("secret = abc\n", f"secret = {seed.MASK}\n"),
    ("secret=abc ; note\n", f"secret={seed.MASK} ; note\n"),
    ("inbound_auth/password = p4ss\n", f"inbound_auth/password = {seed.MASK}\n"),
    ("auth_secret [api-1] = s3cr3t\n", f"auth_secret [api-1] = {seed.MASK}\n"),
    ("sign_secret => k\n", f"sign_secret => {seed.MASK}\n"),
    ("mailcmd = minivm-send -H mx:587 -u me -p hunter2 -f a@b\n",
     f"mailcmd = minivm-send -H mx:587 -u me -p {seed.MASK} -f a@b\n"),
    ("mailcmd = minivm-send --password=hunter2\n",
     f"mailcmd = minivm-send --password={seed.MASK}\n"),
])
def test_secret_values_are_masked(line, masked):
    assert seed.mask_secrets(line) == masked


@pytest.mark.parametrize("line", [
    "secret =\n", "; secret = (generated by pbxhost seed)\n", "secrets_dir = /x\n",
    "username = websms\n", "[secret]\n", "outbound_auth/password =\n",
])
def test_other_lines_are_kept(line):
    assert seed.mask_secrets(line) == line


def test_cli_exit_status_says_same_or_not(seeded, capsys):
    assert cli.main(["seed", "--diff", "--dest", str(seeded)]) == 0
    (seeded / "rtp.conf").write_text("[general]\n")
    assert cli.main(["seed", "--diff", "--dest", str(seeded)]) == 1
    assert f"--- {seeded}/rtp.conf" in capsys.readouterr().out


def test_cli_without_a_config_dir_fails_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["seed", "--diff", "--dest", str(tmp_path / "missing")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    assert not (tmp_path / "missing").exists()
