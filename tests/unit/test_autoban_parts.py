"""autoban's pure parts: AMI addresses, autoban.conf, verdict → kernel ops, CLI grammar."""

from __future__ import annotations

import asyncio
import ipaddress
import json
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
    ("IPV6/UDP/2001:0DB8:0000:0000:0000:0000:0000:0009/5060", "2001:db8::9"),
    ("IPV6/UDP/[2001:db8:0:0:1::1]/5060", "2001:db8:0:0:1::1"),
    ("IPV6/UDP/::0.0.0.1/5060", "::1"),
])
def test_remote_address_forms(raw, addr):
    from pbxhost.autoban.events import parse_remote

    assert parse_remote_address(raw) == ipaddress.ip_address(addr)
    # the text every set and log line uses is what ipaddress writes, whatever the form
    assert parse_remote(raw).text == str(ipaddress.ip_address(addr))


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
T0 = 1_790_000_000  # 2026-09: a plausible wall clock


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
     ("del", ["watch", "jail", "sipjail", "parole", "trust", "proven", "whitelist", "blacklist"],
      ["45.143.220.72"])),
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
    state.save(path, elements, now=T0)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert state.load(path, now=T0 + 100).puts == [
        Put("jail", "192.0.2.9", 500, "sentence 1200"),
        Put("blacklist", "198.51.100.0/24", None, None)]  # the watch entry has expired


@pytest.mark.parametrize("text", ["", "{", '{"elements": 3}', '{"elements": [{"set": 1}]}'])
def test_broken_state_file_starts_empty_without_crashing(tmp_path, text):
    from pbxhost.autoban import state

    path = tmp_path / "state.json"
    path.write_text(text)
    assert state.load(path, now=0).puts == []


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

    cfg = config.AutobanConfig(path=Path("x"), proventime=0)
    ab = Autoban(cfg, NoFirewall(), exempt=[])  # type: ignore[arg-type]
    for name in ("ChallengeSent", "SuccessfulAuth", "FullyBooted"):
        ab.handle(Message({"Event": name, "RemoteAddress": "IPV4/UDP/192.0.2.1/5060",
                           "UsingPassword": "1"}))


# ---- edge cases of issue 16 -------------------------------------------------------

@pytest.mark.parametrize("raw", [
    "Event: InvalidAccountID\r\nRemoteAddress: IPV6/UDP/fe80::1%eth0/5060",
    "Event: InvalidAccountID\r\nRemoteAddress: IPV6/UDP/[fe80::1%25eth0]/5060",
    "Event: ChallengeResponseFailed\r\nRemoteAddress: IPV4/UDP/192.0.2.1/5060\r\n"
    "RemoteAddress: IPV4/UDP/192.0.2.2/5060",
])
def test_zone_id_or_doubled_address_is_one_warning_not_a_traceback(raw, caplog):
    from panoramisk.message import Message

    from pbxhost.autoban.daemon import Autoban

    event = Message.from_line(raw + "\r\n")
    cfg = config.AutobanConfig(path=Path("x"), enabled=True)
    Autoban(cfg, NoFirewall(), exempt=[]).handle(event)  # type: ignore[arg-type]
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "event skipped" in caplog.text and not caplog.records[0].exc_info


def test_state_file_is_versioned_and_reads_the_previous_release(tmp_path):
    from pbxhost.autoban import state

    path = tmp_path / "state.json"
    state.save(path, [Element("jail", "192.0.2.9", 1200, 600, "sentence 1200")], now=T0,
               config={"whitelist": ["192.0.2.0/24"], "blacklist": []})
    data = json.loads(path.read_text())
    assert data["version"] == state.VERSION == 2
    assert data["elements"][0]["remaining"] == 600
    # version 1 (the previous release): absolute expiry only, no config record
    path.write_text(json.dumps({"version": 1, "saved_at": T0, "elements": [
        {"set": "jail", "addr": "192.0.2.9", "comment": "sentence 1200", "expires_at": T0 + 600.2},
        {"set": "whitelist", "addr": "192.0.2.0/24", "comment": None, "expires_at": None}]}))
    saved = state.load(path, now=T0 + 100)
    assert saved.version == 1 and saved.config is None
    assert saved.puts == [Put("jail", "192.0.2.9", 501, "sentence 1200"),
                          Put("whitelist", "192.0.2.0/24")]


def test_state_file_of_a_newer_version_is_refused_loudly(tmp_path, caplog):
    from pbxhost.autoban import state

    path = tmp_path / "state.json"
    path.write_text('{"version": 99, "elements": []}')
    assert state.load(path, now=T0).puts == []
    assert "version 99" in caplog.text


JAIL = Element("jail", "192.0.2.9", 7200, 3600, "sentence 7200")


@pytest.mark.parametrize(("saved_at", "loaded_at", "remaining"), [
    (T0, T0 + 600, 3000),                  # an ordinary reboot: time passed is subtracted
    (T0, T0 + 4000, None),                 # ... and an expired jail is gone
    (T0 + 10 * 365 * 86400, T0, 3600),     # saved by a clock far ahead: not longer
    (T0, T0 - 86400, 3600),                # loaded by a clock behind: not longer
    (86400, T0, 3600),                     # saved by a clock at 1970: not dropped
    (946_684_800, T0, 3600),               # ... or at 2000 (no RTC)
])
def test_state_file_across_clock_steps(tmp_path, saved_at, loaded_at, remaining):
    from pbxhost.autoban import state

    path = tmp_path / "state.json"
    state.save(path, [JAIL], now=saved_at)
    puts = state.load(path, now=loaded_at).puts
    assert puts == ([] if remaining is None else [Put("jail", "192.0.2.9", remaining,
                                                      "sentence 7200")])
    assert all(p.timeout is not None and p.timeout <= JAIL.expires for p in puts)


def test_state_file_in_the_same_boot_measures_with_boottime(tmp_path):
    from pbxhost.autoban import state

    path = tmp_path / "state.json"
    state.save(path, [JAIL], now=state.Clocks(T0, "boot-a", 100.0))
    # the wall clock jumped a year ahead, 50 s passed by the boot clock: 50 s counted
    later = state.Clocks(T0 + 365 * 86400, "boot-a", 150.0)
    assert state.load(path, now=later).puts == [Put("jail", "192.0.2.9", 3550, "sentence 7200")]
    # another boot: the wall clock decides
    other = state.Clocks(T0 + 60, "boot-b", 5.0)
    assert state.load(path, now=other).puts == [Put("jail", "192.0.2.9", 3540, "sentence 7200")]


def test_remaining_is_never_more_than_the_timeout(tmp_path):
    from pbxhost.autoban import state

    path = tmp_path / "state.json"
    path.write_text(json.dumps({"version": 2, "saved_at": T0, "elements": [
        {"set": "jail", "addr": "192.0.2.9", "comment": None, "timeout": 60,
         "remaining": 10**9, "expires_at": None}]}))
    assert state.load(path, now=T0).puts == [Put("jail", "192.0.2.9", 60, None)]


def test_watch_times_from_a_clock_ahead_count_as_now():
    s = policy.Settings(maxcount=3, watchtime=60, jailtime=100)
    verdict = policy.on_event(s, policy.Standing(times=(10**10,)), now=1000)
    assert verdict.action is policy.Action.WATCH and verdict.times == (1000, 1000)


class FakeFirewall:
    """Kernel sets as dicts, with sizes: for the daemon's full-set decisions."""

    def __init__(self, sizes: dict[str, int] | None = None) -> None:
        from pbxhost.autoban.firewall import DEFAULT_SIZES, SETS

        self.sizes = {**DEFAULT_SIZES, **(sizes or {})}
        self.sets: dict[str, dict[str, Element]] = {name: {} for name in SETS}
        self.log: list[Put | Delete] = []

    def exists(self) -> bool:
        return True

    def lookup(self, addr: str) -> dict[str, Element]:
        """The element that covers ADDR in each set (prefixes included)."""
        ip = ipaddress.ip_address(addr)
        return {name: e
                for name, found in self.sets.items()
                for e in ([found[addr]] if addr in found else
                          [e for e in found.values() if "/" in e.addr
                           and ip in ipaddress.ip_network(e.addr)][:1])}

    def lookup_many(self, addrs: list[str]) -> list[dict[str, Element]]:
        return [self.lookup(addr) for addr in addrs]

    def iter_elements(self, sets=None):
        return iter([e for name, found in self.sets.items() if sets is None or name in sets
                     for e in found.values()])

    def apply(self, ops, fresh: bool = False) -> None:
        from pbxhost.autoban.firewall import SetFullError

        added: dict[str, set[str]] = {}
        for op in ops:  # all or nothing, as the kernel
            if isinstance(op, Put) and op.addr not in self.sets[op.set]:
                new = added.setdefault(op.set, set())
                new.add(op.addr)
                if len(self.sets[op.set]) + len(new) > self.sizes[op.set]:
                    raise SetFullError(f"set {op.set} full")
        for op in ops:
            self.log.append(op)
            if isinstance(op, Put):
                self.sets[op.set][op.addr] = Element(op.set, op.addr, op.timeout, op.timeout,
                                                     op.comment)
            else:
                self.sets[op.set].pop(op.addr, None)

    def elements(self, sets=None) -> list[Element]:
        return [e for found in self.sets.values() for e in found.values()]


def attack(ab, addr: str, name: str = "ChallengeResponseFailed", transport: str = "TCP") -> None:
    from panoramisk.message import Message

    ab.handle(Message({"Event": name, "RemoteAddress": f"IPV4/{transport}/{addr}/5060"}))


def test_a_full_watch_set_neither_evicts_jails_nor_stops_new_jails(caplog, monkeypatch):
    from pbxhost.autoban import daemon

    monkeypatch.setattr(daemon.Autoban, "changed", lambda self: None)
    fw = FakeFirewall({"watch": 100})
    cfg = config.AutobanConfig(path=Path("x"), enabled=True,
                               policy=policy.Settings(maxcount=3, watchtime=60, jailtime=100))
    ab = daemon.Autoban(cfg, fw, exempt=[], clock=lambda: T0)  # type: ignore[arg-type]
    for _ in range(4):
        attack(ab, "198.51.100.1")
    assert "198.51.100.1" in fw.sets["jail"]
    # a forged flood: one event from each of 30 000 addresses fills watch and the memory
    for i in range(30_000):
        attack(ab, f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")
    assert len(fw.sets["watch"]) == 100 and len(ab.overflow) <= 2 * ab.overflow.size
    assert "198.51.100.1" in fw.sets["jail"]          # nothing evicted a jail
    # a guesser during the flood: jailed at the same event as ever
    for n in range(4):
        attack(ab, "203.0.113.7")
        attack(ab, f"10.200.0.{n}")                   # the flood goes on in between
        assert ("203.0.113.7" in fw.sets["jail"]) == (n == 3)
    assert caplog.text.count("set watch is full") == 1  # one warning, not one per event


def test_overflow_keeps_repeat_offenders_over_one_event_floods():
    from pbxhost.autoban.overflow import Overflow

    memo = Overflow(size=3)
    memo.put("guesser", (1, 2))
    for i in range(100):
        memo.put(f"forged{i}", (5,))
    assert memo.get("guesser") == (1, 2) and len(memo) == 4
    memo.pop("guesser")
    assert memo.get("guesser") == ()


def test_config_made_entries_follow_the_config_cli_made_ones_stay(monkeypatch):
    from pbxhost.autoban import daemon

    fw = FakeFirewall()
    cfg = config.AutobanConfig(path=Path("autoban.conf"), enabled=True,
                               whitelist=("192.0.2.1",), blacklist=("198.51.100.0/24",))
    ab = daemon.Autoban(cfg, fw, exempt=[], clock=lambda: T0)  # type: ignore[arg-type]
    fw.apply([Put("whitelist", "192.0.2.50"), Put("whitelist", "192.0.2.99"),  # CLI-made
              Put("blacklist", "203.0.113.5")])
    # the previous start took 192.0.2.99 and 203.0.113.5 from autoban.conf; now gone from it
    ab.sync_config_lists({"whitelist": ["192.0.2.99"], "blacklist": ["203.0.113.5"]})
    assert set(fw.sets["whitelist"]) == {"192.0.2.1", "192.0.2.50"}
    assert set(fw.sets["blacklist"]) == {"198.51.100.0/24"}
    # a state file of the previous release records no config: nothing is deleted
    ab.sync_config_lists(None)
    assert set(fw.sets["whitelist"]) == {"192.0.2.1", "192.0.2.50"}


def test_state_file_in_any_json_layout_is_read(tmp_path):
    from pbxhost.autoban import state

    path = tmp_path / "state.json"
    path.write_text(json.dumps({"version": 2, "saved_at": T0, "elements": [
        {"set": "jail", "addr": "192.0.2.9", "comment": "sentence 60", "timeout": 60,
         "remaining": 30}]}, indent=3))
    assert state.load(path, now=T0 + 10).puts == [Put("jail", "192.0.2.9", 20, "sentence 60")]


def test_state_file_cut_short_is_refused_whole(tmp_path, caplog):
    from pbxhost.autoban import state

    path = tmp_path / "state.json"
    state.save(path, [JAIL, JAIL], now=T0)
    path.write_text(path.read_text()[:-4])
    assert state.load(path, now=T0).puts == []
    assert "unreadable" in caplog.text


def test_kernel_keys_are_written_as_ipaddress_writes_them():
    from hypothesis import given
    from hypothesis import strategies as st

    from pbxhost.autoban.events import address_text

    @given(st.integers(0, 2**32 - 1), st.integers(0, 2**128 - 1),
           st.lists(st.integers(0, 7), max_size=8))
    def check(v4, v6, zeros):
        for z in zeros:  # runs of zero groups, where :: compression happens
            v6 &= ~(0xFFFF << (16 * z))
        assert address_text(4, v4) == str(ipaddress.IPv4Address(v4))
        assert address_text(6, v6) == str(ipaddress.IPv6Address(v6))
        assert address_text(6, v6 >> 64) == str(ipaddress.IPv6Address(v6 >> 64))

    check()


def v6_attack(ab, addr: str) -> None:
    from panoramisk.message import Message

    ab.handle(Message({"Event": "InvalidAccountID", "RemoteAddress": f"IPV6/TCP/{addr}/5060"}))


def prefix_bed(prefix6: int = 64, exempt=(), trusttime: int = 0):
    from pbxhost.autoban import daemon

    fw = FakeFirewall()
    cfg = config.AutobanConfig(path=Path("x"), enabled=True, prefix6=prefix6, trusttime=trusttime,
                               policy=policy.Settings(maxcount=10, watchtime=1200, jailtime=1200))
    ab = daemon.Autoban(cfg, fw, exempt=[ipaddress.ip_network(n) for n in exempt],
                        clock=lambda: T0)  # type: ignore[arg-type]
    ab.changed = lambda: None  # type: ignore[method-assign]
    return ab, fw


def test_thousands_of_addresses_of_one_prefix_end_as_one_jail_element(caplog):
    ab, fw = prefix_bed()
    caplog.set_level("NOTICE")
    for i in range(3000):
        v6_attack(ab, f"2001:db8:66::{i + 1:x}")
    assert list(fw.sets["jail"]) == ["2001:db8:66::/64"] and fw.sets["watch"] == {}
    assert list(fw.sets["parole"]) == ["2001:db8:66::/64"]
    assert "jailed 2001:db8:66::/64 (2001:db8:66::b) for 20m: 11 events" in caplog.text


@pytest.mark.parametrize(("prefix6", "exempt", "whitelist", "trust", "element"), [
    (128, [], [], [], "2001:db8:66::5"),                     # today's behaviour
    (64, ["2001:db8:66::10/128"], [], [], "2001:db8:66::5"),  # an own / trunk address in it
    (64, [], ["2001:db8:66::9"], [], "2001:db8:66::5"),      # a whitelisted one (the CLI's too)
    (64, [], ["2001:db8:66:0:8000::/65"], [], "2001:db8:66::5"),
    (64, [], [], ["2001:db8:66::7"], "2001:db8:66::5"),      # a phone that logged in
    (64, [], ["2001:db8:67::1"], [], "2001:db8:66::/64"),    # elsewhere: no matter
    (48, [], [], [], "2001:db8:66::/48"),
])
def test_a_prefix_holding_a_protected_address_jails_the_address_alone(
        prefix6, exempt, whitelist, trust, element):
    ab, fw = prefix_bed(prefix6, exempt, trusttime=600)
    fw.apply([Put("whitelist", w) for w in whitelist] + [Put("trust", t, 600) for t in trust])
    for _ in range(11):
        v6_attack(ab, "2001:db8:66::5")
    assert list(fw.sets["jail"]) == [element]


def test_ipv4_is_never_grouped():
    ab, fw = prefix_bed(prefix6=32)
    for i in range(11):
        attack(ab, f"198.51.100.{i + 1}")
    assert fw.sets["jail"] == {} and len(fw.sets["watch"]) == 11


@pytest.mark.parametrize(("line", "ok"), [("prefix6 = 56", 56), ("", 64), ("prefix6 = 128", 128),
                                          ("prefix6 = 16", None), ("prefix6 = 129", None),
                                          ("prefix6 = x", None)])
def test_prefix6_in_autoban_conf(tmp_path, line, ok):
    path = write(tmp_path, SEED + line + "\n")
    if ok is None:
        with pytest.raises(conf.ConfigError, match="prefix6"):
            config.load(path)
    else:
        assert config.load(path).prefix6 == ok


def test_trunk_names_keep_their_last_addresses_when_resolution_fails(caplog):
    from pbxhost.autoban.trunks import Trunks

    answers = {"itsp.example": [ipaddress.ip_network("198.51.100.5/32")]}
    trunks = Trunks(["itsp.example"], {"itsp.example": ["198.51.100.4"]})
    assert [str(n) for n in trunks.networks()] == ["198.51.100.4/32"]  # from the state file
    assert [str(n) for n in trunks.refresh(answers.get)] == ["198.51.100.5/32"]
    assert trunks.saved() == {"itsp.example": ["198.51.100.5/32"]}
    for down in (lambda name: None, lambda name: []):  # resolver down, or an empty answer
        assert trunks.refresh(down) == []
        assert [str(n) for n in trunks.networks()] == ["198.51.100.5/32"]
    assert "keeping its last addresses 198.51.100.5/32" in caplog.text


def test_trunk_host_names_and_literals_are_told_apart(tmp_path):
    (tmp_path / "pjsip_wizard.conf").write_text(
        "[itsp]\ntype = wizard\nremote_hosts = sip.itsp.example:5060, 198.51.100.5\n")
    assert config.trunk_hosts(tmp_path) == ["sip.itsp.example", "198.51.100.5"]
    assert [config.is_name(h) for h in config.trunk_hosts(tmp_path)] == [True, False]
    assert config.resolve_host("name.invalid") is None
    assert config.resolve_host("a" * 70 + ".example") is None  # idna refuses: no traceback


def test_state_file_keeps_trunk_addresses(tmp_path):
    from pbxhost.autoban import state

    path = tmp_path / "state.json"
    state.save(path, [], now=T0, trunks={"sip.itsp.example": ["198.51.100.5/32"]})
    assert state.load(path, now=T0).trunks == {"sip.itsp.example": ["198.51.100.5/32"]}


def test_a_new_trunk_address_is_released_and_never_counted(caplog):
    from pbxhost.autoban.trunks import Trunks

    ab, fw = prefix_bed()
    caplog.set_level("NOTICE")
    for _ in range(11):
        attack(ab, "198.51.100.5")
    assert "198.51.100.5" in fw.sets["jail"]
    ab.trunks = Trunks(["itsp.example"])
    new = ab.trunks.refresh(lambda name: [ipaddress.ip_network("198.51.100.5/32")])
    ab.exempt = [*ab.fixed_exempt, *ab.trunks.networks()]
    ab.release_trunk(new)
    assert fw.sets["jail"] == {} and fw.sets["parole"] == {}
    attack(ab, "198.51.100.5")
    assert fw.sets["watch"] == {}
    assert "released 198.51.100.5/32: it is the trunk's address now" in caplog.text


@pytest.mark.parametrize(("raw", "transport", "port", "proven"), [
    ("IPV4/UDP/203.0.113.9/5060", "UDP", 5060, False),
    ("IPV4/TCP/203.0.113.9/41892", "TCP", 41892, True),
    ("IPV6/TLS/[2001:db8::9]/5061", "TLS", 5061, True),
    ("IPV4/203.0.113.9/5060", "", 5060, False),
    ("IPV4/UDP/203.0.113.9/0", "UDP", None, False),
])
def test_remote_transport_and_port(raw, transport, port, proven):
    from pbxhost.autoban.events import parse_remote

    remote = parse_remote(raw)
    assert (remote.transport, remote.port, remote.proven) == (transport, port, proven)


def test_udp_evidence_sipjails_tcp_evidence_jails():
    ab, fw = prefix_bed()
    for _ in range(11):
        attack(ab, "198.51.100.1", transport="UDP")
    assert list(fw.sets["sipjail"]) == ["198.51.100.1"] and fw.sets["jail"] == {}
    assert fw.sets["parole"]["198.51.100.1"].comment == "sentence 1200"
    attack(ab, "198.51.100.1", transport="UDP")  # in flight: nothing changes
    assert fw.sets["jail"] == {}
    attack(ab, "198.51.100.1", transport="TCP")  # proven now: the whole address, grown
    assert fw.sets["jail"]["198.51.100.1"].comment == "sentence 7200"


def success(ab, remote: str, using_password: str = "1") -> None:
    from panoramisk.message import Message

    ab.handle(Message({"Event": "SuccessfulAuth", "RemoteAddress": remote,
                       "UsingPassword": using_password, "AccountID": "jane"}))


class ProvenFirewall(FakeFirewall):
    def proven(self, addr: str, proto: str, port: int):
        return self.sets["proven"].get(f"{addr} {proto} {port}")


def test_successful_login_proves_its_address_and_port(caplog):
    ab, _ = prefix_bed()
    ab.fw = fw = ProvenFirewall()
    success(ab, "IPV4/UDP/192.0.2.30/5062")
    success(ab, "IPV6/TCP/[2001:db8::30]/40000")
    success(ab, "IPV4/UDP/192.0.2.31/5062", using_password="0")  # no digest: no proof
    assert set(fw.sets["proven"]) == {"192.0.2.30 udp 5062", "2001:db8::30 tcp 40000"}
    assert fw.sets["proven"]["192.0.2.30 udp 5062"].timeout == 7200
    puts = len(fw.log)
    success(ab, "IPV4/UDP/192.0.2.30/5062")  # renewed at half time only
    assert len(fw.log) == puts


SEED_NFT = (Path(__file__).parents[1] / "fixtures/autoban/seed-autoban.nft").read_text()


def test_seed_file_is_parsed_with_times_counted_from_the_file():
    elements = legacy.parse_seed_file(SEED_NFT, age=100)
    assert [(e.set, e.addr, e.timeout, e.expires) for e in elements] == [
        ("watch", "198.51.100.21", 1203, 1103),
        ("jail", "198.51.100.20", 7200, 7100),
        ("jail", "198.51.100.23", 86400, 10700),       # an `expires` wins over the timeout
        ("parole", "198.51.100.20", 8400, 8300),
        ("blacklist", "198.51.100.22", None, None),
        ("blacklist", "203.0.113.7", None, None)]
    assert legacy.duration("1d2h3m4s500ms") == 93784
    with pytest.raises(ValueError):
        legacy.duration("soon")
    assert legacy.parse_seed_file("garbage", 0) == []


def test_state_file_records_are_read_without_the_elements(tmp_path):
    from pbxhost.autoban import state

    path = tmp_path / "state.json"
    lists = {"whitelist": ["192.0.2.1"], "blacklist": []}
    state.save(path, [JAIL] * 3, now=T0, config=lists, trunks={"itsp": ["198.51.100.5/32"]})
    got = state.records(path)
    assert (got.puts, got.config, got.trunks) == ([], lists, {"itsp": ["198.51.100.5/32"]})
    assert state.records(tmp_path / "absent.json").config is None


# ---- throughput: the batching window (docs/autoban.md, "Throughput") ----------------

def test_flush_is_due_a_window_after_the_first_pending_count():
    assert not policy.flush_due(None, 100.0)
    assert not policy.flush_due(100.0, 100.0 + policy.FLUSH_INTERVAL / 2)
    assert policy.flush_due(0.0, policy.FLUSH_INTERVAL)
    assert policy.flush_due(100.0, 100.0 + 2 * policy.FLUSH_INTERVAL)
    assert policy.flush_delay(100.0, 100.03) == pytest.approx(policy.FLUSH_INTERVAL - 0.03)
    assert policy.flush_delay(100.0, 105.0) == 0.0
    assert policy.FLUSH_INTERVAL <= 0.1  # what a kill -9 may lose, as documented


class CountingFirewall(FakeFirewall):
    """FakeFirewall that counts the reads and writes the daemon makes."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = self.writes = 0

    def lookup_many(self, addrs):
        self.reads += 1
        return super().lookup_many(addrs)

    def apply(self, ops, fresh: bool = False) -> None:
        self.writes += 1
        super().apply(ops, fresh)


def batch_bed(maxcount: int = 3):
    from pbxhost.autoban import daemon

    fw = CountingFirewall()
    cfg = config.AutobanConfig(path=Path("x"), enabled=True,
                               policy=policy.Settings(maxcount=maxcount, watchtime=60,
                                                      jailtime=100))
    ab = daemon.Autoban(cfg, fw, exempt=[], clock=lambda: T0)  # type: ignore[arg-type]
    ab.changed = lambda: None  # type: ignore[method-assign]
    return ab, fw


def test_a_chunk_of_events_is_one_read_and_its_counts_wait_for_the_window():
    ab, fw = batch_bed()

    async def chunk() -> None:
        loop = asyncio.get_running_loop()
        for i in range(200):  # what one AMI read hands over: 100 addresses, 2 events each
            attack(ab, f"198.51.100.{i % 100}")
        await asyncio.sleep(0)  # the drain runs once the chunk is parsed
        assert fw.reads == 1 and fw.writes == 0 and fw.sets["watch"] == {}
        assert ab._flush_timer is not None
        assert ab._flush_timer.when() - loop.time() <= policy.FLUSH_INTERVAL
        ab.flush()  # what the timer does
        assert fw.writes == 1 and len(fw.sets["watch"]) == 100
        assert policy.decode_times(fw.sets["watch"]["198.51.100.7"].comment) == (T0, T0)

    asyncio.run(chunk())


def test_the_event_that_crosses_maxcount_jails_before_the_next_chunk_is_read():
    ab, fw = batch_bed(maxcount=3)

    async def chunks() -> None:
        for n in range(4):
            attack(ab, "203.0.113.7")
            attack(ab, f"10.0.0.{n}")  # other addresses in the same chunks
            await asyncio.sleep(0)
            assert ("203.0.113.7" in fw.sets["jail"]) == (n == 3)
        # the jailing wrote the pending counts with it; its watch element is gone
        assert "203.0.113.7" not in fw.sets["watch"] and "10.0.0.2" in fw.sets["watch"]
        attack(ab, "203.0.113.7")  # in flight while jailed: same window, no second jailing
        await asyncio.sleep(0)
        assert sum(isinstance(op, Put) and op.set == "jail" for op in fw.log) == 1

    asyncio.run(chunks())


def test_counts_in_memory_add_to_the_kernels_across_chunks_of_one_window():
    ab, fw = batch_bed(maxcount=3)
    fw.apply([Put("watch", "192.0.2.5", 60, policy.encode_times((T0 - 5, T0 - 4)))])

    async def chunks() -> None:
        attack(ab, "192.0.2.5")       # 3 of 3: pending in memory
        await asyncio.sleep(0)
        assert policy.decode_times(fw.sets["watch"]["192.0.2.5"].comment) == (T0 - 5, T0 - 4)
        attack(ab, "192.0.2.5")       # the 4th, read from memory, not the stale kernel
        await asyncio.sleep(0)
        assert "192.0.2.5" in fw.sets["jail"]

    asyncio.run(chunks())


def test_a_full_watch_set_at_the_flush_keeps_the_refused_counts_in_memory(caplog):
    from pbxhost.autoban import daemon

    fw = FakeFirewall({"watch": 2})
    cfg = config.AutobanConfig(path=Path("x"), enabled=True,
                               policy=policy.Settings(maxcount=3, watchtime=60, jailtime=100))
    ab = daemon.Autoban(cfg, fw, exempt=[], clock=lambda: T0)  # type: ignore[arg-type]
    ab.changed = lambda: None  # type: ignore[method-assign]

    async def flood() -> None:
        for i in range(5):
            attack(ab, f"10.1.0.{i}")
        await asyncio.sleep(0)
        ab.flush()
        assert len(fw.sets["watch"]) == 2 and len(ab.overflow) == 3
        for _ in range(3):  # a refused one still jails at its 4th event
            attack(ab, "10.1.0.4")
        await asyncio.sleep(0)
        assert "10.1.0.4" in fw.sets["jail"]

    asyncio.run(flood())
    assert "set watch is full" in caplog.text


def test_a_batch_that_fails_is_logged_and_the_next_one_is_decided(caplog):
    ab, fw = batch_bed()
    real = fw.lookup_many
    fw.lookup_many = lambda addrs: 1 / 0  # type: ignore[method-assign]

    async def chunks() -> None:
        attack(ab, "192.0.2.8")
        await asyncio.sleep(0)
        fw.lookup_many = real  # type: ignore[method-assign]
        for _ in range(4):
            attack(ab, "192.0.2.9")
        await asyncio.sleep(0)
        assert "192.0.2.9" in fw.sets["jail"]

    asyncio.run(chunks())
    assert "1 AMI events not handled; session kept" in caplog.text
