"""autoban's pure parts: AMI addresses, autoban.conf, verdict → kernel ops, CLI grammar."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from pbxhost import conf
from pbxhost.autoban import cli, config, legacy, policy
from pbxhost.autoban.daemon import human, ops_for, standing_of
from pbxhost.autoban.events import parse_remote_address
from pbxhost.autoban.firewall import Delete, Element, Put


@pytest.mark.parametrize(("raw", "addr"), [
    ("IPV4/UDP/203.0.113.9/5060", "203.0.113.9"),
    ("IPV4/203.0.113.9/5060", "203.0.113.9"),
    ("IPV4/TCP/192.0.2.66/41892", "192.0.2.66"),
    ("IPV6/UDP/2001:db8::9/5060", "2001:db8::9"),
    ("IPV6/UDP/[2001:db8::9]/5060", "2001:db8::9"),
    ("IPV6/2001:db8::9/5060", "2001:db8::9"),
    ("IPV6/UDP/::ffff:192.0.2.7/5060", "192.0.2.7"),
])
def test_remote_address_forms(raw, addr):
    assert parse_remote_address(raw) == ipaddress.ip_address(addr)


@pytest.mark.parametrize("raw", ["", "garbage", "IPV4/UDP/999.1.1.1/5060", "IPV5/UDP/1.2.3.4/1",
                                 "IPV4/UDP/2001:db8::1/5060", "IPV6/UDP/1.2.3.4/5060",
                                 "IPV4/UDP/1.2.3.4\nApplication: System/5060"])
def test_bad_remote_addresses_are_refused(raw):
    with pytest.raises(ValueError):
        parse_remote_address(raw)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "autoban.conf"
    path.write_text(text)
    return path


SEED = """\
[asmanager]
server     = 127.0.0.1
port       = 5038
username   = autoban
secret     = 6003.438

[autoban]
enabled    = yes
maxcount   = 10
watchtime  = 20m
jailtime   = 20m
repeatmult = 6
"""


def test_seed_autoban_conf(tmp_path):
    cfg = config.load(write(tmp_path, SEED))
    assert cfg.enabled and cfg.ami.username == "autoban" and cfg.ami.secret == "6003.438"
    assert cfg.ami.events == "security"
    assert cfg.policy == policy.Settings(maxcount=10, watchtime=1200, jailtime=1200, repeatmult=6)
    assert cfg.trusttime == 0


def test_missing_file_means_disabled(tmp_path):
    assert not config.load(tmp_path / "absent.conf").enabled


def test_enabled_defaults_to_yes_and_lists(tmp_path):
    lists = "whitelist = 192.0.2.0/24, 2001:db8::1\nblacklist = 198.51.100.1-198.51.100.9\n"
    cfg = config.load(write(tmp_path, SEED.replace("enabled    = yes\n", "") + lists))
    assert cfg.enabled
    assert cfg.whitelist == ("192.0.2.0/24", "2001:db8::1")
    assert cfg.blacklist == ("198.51.100.1-198.51.100.9",)


@pytest.mark.parametrize(("line", "msg"), [("maxcount = ten", "maxcount"),
                                            ("watchtime = 20x", "watchtime"),
                                            ("maxcount = 0", "maxcount must be"),
                                            ("whitelist = 300.1.1.1", "300.1.1.1")])
def test_broken_config_names_file_and_line(tmp_path, line, msg):
    path = write(tmp_path, SEED + line + "\n")
    with pytest.raises(conf.ConfigError) as err:
        config.load(path)
    assert str(path) in str(err.value) and msg in str(err.value)


def test_trunk_and_websms_addresses_are_exempt(tmp_path):
    (tmp_path / "pjsip_wizard.conf").write_text(
        "[trunk](!)\ntype = wizard\n[itsp](trunk)\n"
        "remote_hosts = 198.51.100.5:5060, [2001:db8::5]\n")
    (tmp_path / "pjsip.conf").write_text(
        "#tryinclude pjsip_endpoint.conf\n[itsp-id]\ntype = identify\nmatch = 203.0.113.0/28\n")
    (tmp_path / "websms.conf").write_text("[websmsd]\nremt_addr = 192.0.2.128/25\n"
                                          "remt_addr [b] = 2001:db8:9::/48\n")
    nets = [str(n) for n in config.trunk_addresses(tmp_path) + config.websms_sources(tmp_path)]
    assert nets == ["203.0.113.0/28", "198.51.100.5/32", "2001:db8::5/128",
                    "192.0.2.128/25", "2001:db8:9::/48"]


def test_human_durations():
    assert [human(s) for s in (0, 59, 1200, 7200, 43200, 259200, 93784)] == [
        "0s", "59s", "20m", "2h", "12h", "3d", "1d2h3m4s"]


S = policy.Settings(maxcount=3, watchtime=60, jailtime=100)


def test_standing_from_kernel_elements():
    found = {"watch": Element("watch", "192.0.2.9", 60, 30, "events 100 +2"),
             "parole": Element("parole", "192.0.2.9", 160, 100, "sentence 100")}
    assert standing_of(found) == policy.Standing(times=(100, 102), sentence=100)
    assert standing_of({}) == policy.Standing()


def test_jail_ops_put_jail_and_parole_and_clear_watch():
    ops = ops_for(policy.Verdict(policy.Action.JAIL, "x", sentence=100), "192.0.2.9", S)
    assert ops == [Put("jail", "192.0.2.9", 100, "sentence 100"),
                   Put("parole", "192.0.2.9", 160, "sentence 100"),
                   Delete("watch", "192.0.2.9")]
    assert ops_for(policy.Verdict(policy.Action.IGNORE, "x"), "192.0.2.9", S) == []


@pytest.mark.parametrize(("words", "parsed"), [
    ([], ("show", [], [])),
    (["list", "jail", "parole"], ("list", ["jail", "parole"], [])),
    (["add", "blacklist", "=", "77.247.110.24", "jail"],
     ("add", ["blacklist"], ["77.247.110.24", "jail"])),
    (["del", "all", "=", "45.143.220.72"],
     ("del", ["watch", "jail", "parole", "trust", "whitelist", "blacklist"], ["45.143.220.72"])),
    (["add", "whitelist", "=", "192.0.2.1-192.0.2.200", "2001:db8::/32"],
     ("add", ["whitelist"], ["192.0.2.1-192.0.2.200", "2001:db8::/32"])),
])
def test_cli_grammar(words, parsed):
    assert cli.parse(words) == parsed


@pytest.mark.parametrize("words", [["bogus"], ["list", "jails"], ["add", "jail", "1.2.3.4"],
                                   ["add", "jail", "=", "1.2.3.999"], ["del", "=", "1.2.3.4"],
                                   ["add", "jail", "=", "x;flush ruleset"], ["show", "x"]])
def test_cli_bad_words(words):
    with pytest.raises(cli.UsageError):
        cli.parse(words)


def test_cli_bad_usage_exits_2_before_touching_anything(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["add", "jail", "=", "not-an-address"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_seed_table_elements_are_converted():
    s = policy.Settings(maxcount=10, watchtime=1200, jailtime=1200)
    seed = [Element("watch", "192.0.2.1", 1203, 900, None),        # seed count 3
            Element("jail", "192.0.2.2", 7200, 5000, None),
            Element("parole", "192.0.2.2", 8400, 6200, None),       # sentence 7200
            Element("parole", "192.0.2.3", 2400, 100, None),        # released, on parole
            Element("blacklist", "198.51.100.1", None, None, None),
            Element("whitelist", "203.0.113.5", None, None, None)]
    assert legacy.convert(seed, s, 1000) == [
        Put("watch", "192.0.2.1", 900, "events 1000 +0 +0"),
        Put("jail", "192.0.2.2", 5000, "sentence 7200"),
        Put("parole", "192.0.2.2", 6200, "sentence 7200"),
        Put("parole", "192.0.2.3", 100, "sentence 1200"),
        Put("blacklist", "198.51.100.1"),
        Put("whitelist", "203.0.113.5")]


def test_state_file_round_trip_keeps_remaining_times(tmp_path):
    from pbxhost.autoban import state

    path = tmp_path / "lib/state.json"
    elements = [Element("jail", "192.0.2.9", 1200, 600, "sentence 1200"),
                Element("blacklist", "198.51.100.0/24", None, None, None),
                Element("watch", "2001:db8::9", 60, 5, "events 100 +2")]
    state.save(path, elements, now=1000.0)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert state.load(path, now=1100.0) == [
        Put("jail", "192.0.2.9", 500, "sentence 1200"),
        Put("blacklist", "198.51.100.0/24", None, None)]  # the watch entry has expired


@pytest.mark.parametrize("text", ["", "{", '{"elements": 3}', '{"elements": [{"set": 1}]}'])
def test_broken_state_file_starts_empty_without_crashing(tmp_path, text):
    from pbxhost.autoban import state

    path = tmp_path / "state.json"
    path.write_text(text)
    assert state.load(path, now=0) == []


class NoFirewall:
    """Garbage must be dropped before the firewall is asked anything."""

    def __getattr__(self, name: str):
        raise AssertionError(f"firewall.{name} used for a garbage event")


@pytest.mark.parametrize("fields", [
    {"Event": "InvalidPassword"},
    {"Event": "InvalidPassword", "RemoteAddress": ""},
    {"Event": "ChallengeResponseFailed", "RemoteAddress": "IPV4/UDP/not-an-ip/5060"},
    {"Event": "InvalidAccountID", "RemoteAddress": "IPV4/UDP/192.0.2.1\r\nAction: x/1"},
    {"Event": "FailedACL", "RemoteAddress": "IPV6/UDP/192.0.2.1/5060"},
])
def test_garbage_events_are_logged_and_skipped(fields, caplog):
    from panoramisk.message import Message

    from pbxhost.autoban.daemon import Autoban

    cfg = config.AutobanConfig(path=Path("x"), enabled=True)
    Autoban(cfg, NoFirewall(), exempt=[]).handle(Message(fields))  # type: ignore[arg-type]
    assert "event skipped" in caplog.text


def test_uncounted_events_never_reach_the_firewall():
    from panoramisk.message import Message

    from pbxhost.autoban.daemon import Autoban

    ab = Autoban(config.AutobanConfig(path=Path("x")), NoFirewall(), exempt=[])  # type: ignore[arg-type]
    for name in ("ChallengeSent", "SuccessfulAuth", "FullyBooted"):
        ab.handle(Message({"Event": name, "RemoteAddress": "IPV4/UDP/192.0.2.1/5060",
                           "UsingPassword": "1"}))
