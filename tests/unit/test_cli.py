"""Every command: --help, -c/--config, one-line usage errors with exit 2; the
config lookup order of the contracts."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from pbxhost import cli

COMMANDS = {
    "autoban": "pbxhost.autoban.cli",
    "autoband": "pbxhost.autoban.daemon",
    "websms": "pbxhost.websms.cli",
    "websmsd": "pbxhost.websms.webhook",
    "minivm-send": "pbxhost.voicemail",
    "pbxhost": "pbxhost.host.cli",
}


def run(module: str, argv: list[str]) -> int:
    try:
        return importlib.import_module(module).main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


@pytest.mark.parametrize("name", COMMANDS)
def test_help_mentions_config_option(name, capsys):
    assert run(COMMANDS[name], ["--help"]) == 0
    out = capsys.readouterr().out
    assert "-c PATH, --config PATH" in out


@pytest.mark.parametrize("name", COMMANDS)
def test_bad_usage_is_one_line_and_exit_2(name, capsys):
    assert run(COMMANDS[name], ["--no-such-option"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and name in err


def test_config_lookup_prefers_explicit_path(tmp_path):
    explicit = tmp_path / "x.conf"
    assert cli.find_config("autoban.conf", explicit, {"PBXHOST_CONFDIR": "/nope"}) == explicit


def test_config_lookup_env_then_srv_then_etc(tmp_path, monkeypatch):
    env = {"PBXHOST_CONFDIR": str(tmp_path)}
    assert cli.find_config("autoban.conf", None, env) == tmp_path / "autoban.conf"
    srv = tmp_path / "srv"
    monkeypatch.setattr(cli, "SRV_CONFDIR", srv)
    assert cli.find_config("autoban.conf", None, {}) == Path("/etc/asterisk/autoban.conf")
    srv.mkdir()
    assert cli.find_config("autoban.conf", None, {}) == srv / "autoban.conf"
