"""autoban against a real Asterisk 22: sipp attackers in their own namespaces,
the daemon and the CLI in the PBX's, real nftables. A ban counts as proven only
when the attacker is in the jail set, the drop counter rose, and the same
REGISTER succeeds again after `autoban del all = ADDR`."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pbxhost.autoban.firewall import CHAIN
from testbed.configs import TRANSPORTS, manager_conf, pjsip_user
from testbed.daemon import Daemon
from testbed.netns import Host
from testbed.sip import Baresip, sipp_register
from testbed.wait import poll

JANE_PASSWORD = "Jane-pass-8812"
TCP_TRANSPORT = "[transport-tcp]\ntype = transport\nprotocol = tcp\nbind = 0.0.0.0:5060\n\n"
PJSIP = TRANSPORTS + TCP_TRANSPORT + pjsip_user("jane", JANE_PASSWORD)
AMI_SECRET = "autoban-test-secret"
MANAGER = manager_conf("autoban", AMI_SECRET, read="security")
ATTACKS = ("InvalidAccountID", "InvalidPassword", "ChallengeResponseFailed", "FailedACL")


class Bed:
    """A PBX with Asterisk and autoband, an attacker, a phone."""

    def __init__(self, net, start_asterisk, tmp_path: Path) -> None:
        self.tmp, self.net = tmp_path, net
        self.pbx_host = net.host("pbx", 10)
        self.attacker = net.host("attacker", 66)
        self.phone_host = net.host("phone", 30)
        self.pbx = start_asterisk(self.pbx_host, {"pjsip.conf": PJSIP, "manager.conf": MANAGER})
        self.confdir = tmp_path / "autoban-etc"
        self.confdir.mkdir()
        self.statefile = tmp_path / "state/state.json"
        self.runner = Daemon(self.pbx_host, "pbxhost.autoban.daemon",
                             self.confdir / "autoban.conf", tmp_path, "autoband")
        self.phones: list[Baresip] = []

    def write_conf(self, maxcount=3, watchtime="20m", jailtime="20m", repeatmult=6,
                   extra="", secret=AMI_SECRET) -> Path:
        path = self.confdir / "autoban.conf"
        path.write_text(
            f"[asmanager]\nserver = 127.0.0.1\nport = 5038\nusername = autoban\n"
            f"secret = {secret}\n\n[autoban]\nmaxcount = {maxcount}\nwatchtime = {watchtime}\n"
            f"jailtime = {jailtime}\nrepeatmult = {repeatmult}\nstatefile = {self.statefile}\n"
            f"{extra}")
        return path

    @property
    def daemon(self) -> subprocess.Popen | None:
        return self.runner.proc

    @property
    def log(self) -> str:
        return self.runner.text()

    def start_daemon(self, wait: str | None = "AMI connected") -> None:
        self.runner.start({"SYSLOG_LEVEL": "8", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                           "PYTHONPATH": str(Path(__file__).parents[2])})
        if wait:
            self.wait_log(wait)

    def stop_daemon(self, sig: int = signal.SIGTERM) -> int:
        return self.runner.stop(sig)

    def wait_log(self, text: str, timeout: float = 15) -> str:
        """A line of the current run's log (a restarted daemon must say it again)."""
        return self.runner.wait_log(text, timeout, current=True)

    def cli(self, *words: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.pbx_host.run(sys.executable, "-m", "pbxhost.autoban.cli", "-c",
                                 str(self.confdir / "autoban.conf"), *words, check=check,
                                 env={"PYTHONPATH": str(Path(__file__).parents[2]),
                                      "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})

    def members(self, name: str) -> dict[str, dict]:
        out = self.cli("--json", "list", name).stdout
        return {e["addr"]: e for e in json.loads(out)}

    def drops(self) -> dict[str, int]:
        out = self.pbx_host.run("nft", "list", "chain", "inet", "autoban", CHAIN).stdout
        counts: dict[str, int] = {}
        for line in out.splitlines():
            m = re.search(r"@(\w+) counter packets (\d+)", line)
            if m:
                counts[m.group(1)] = int(m.group(2))
        return counts

    def addr(self, host: Host, family: str) -> str:
        return host.v4 if family == "ipv4" else host.v6

    def attack_events(self, source: str) -> list:
        return [e for e in self.pbx.ami.events
                if e["Event"] in ATTACKS and f"/{source}/" in e.get("RemoteAddress", "")]

    def register(self, host: Host, family: str, user="jane", password="wrong", calls=1,
                 rate=10, expect=401, port=5070, timeout=20, transport="u1"):
        target = self.pbx_host.v4 if family == "ipv4" else self.pbx_host.v6
        return sipp_register(host, target, user, password, self.tmp, expect=expect, calls=calls,
                             rate=rate, local_port=port, timeout=timeout, transport=transport)


@pytest.fixture
def bed(net, start_asterisk, tmp_path):
    b = Bed(net, start_asterisk, tmp_path)
    yield b
    b.runner.kill()


def assert_banned_then_released(bed: Bed, family: str, before: dict[str, int]) -> None:
    """The three proofs: in jail, drop counter rose, and after `del all` REGISTER works."""
    source = bed.addr(bed.attacker, family)
    assert source in bed.members("sipjail")
    suffix = "4" if family == "ipv4" else "6"
    assert bed.drops()[f"sipjail{suffix}"] > before.get(f"sipjail{suffix}", 0)
    blocked = bed.register(bed.attacker, family, password=JANE_PASSWORD, expect=200,
                           port=5090, timeout=3)
    assert blocked.returncode != 0  # dropped: no answer at all
    bed.cli("del", "all", "=", source)
    assert source not in bed.members("sipjail")
    ok = bed.register(bed.attacker, family, password=JANE_PASSWORD, expect=200, port=5092)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr


@pytest.mark.parametrize(("family", "user"), [("ipv4", "jane"), ("ipv4", "nobody"),
                                              ("ipv6", "jane"), ("ipv6", "nobody")])
def test_attacker_is_jailed_phone_keeps_working(bed, start_phone, family, user):
    maxcount = 3
    bed.write_conf(maxcount=maxcount)
    bed.start_daemon()
    phone = start_phone(bed.phone_host, "jane", JANE_PASSWORD,
                        bed.pbx_host.v4 if family == "ipv4" else bed.pbx_host.v6)
    phone.wait_registered()
    source = bed.addr(bed.attacker, family)
    before = bed.drops()
    bed.register(bed.attacker, family, user=user, calls=10, rate=20, timeout=8)
    line = bed.wait_log(f"jailed {source}")
    assert "for 20m" in line and f"{maxcount + 1} events within 1200s" in line
    # the leak: events Asterisk still emitted for the attacker after the threshold
    leak = len(bed.attack_events(source)) - (maxcount + 1)
    print(f"leak after jailing ({family}, {user}): {leak} events")
    assert 0 <= leak <= 3
    assert bed.phone_host.v4 not in {**bed.members("jail"), **bed.members("sipjail")}
    phone2 = start_phone(bed.phone_host, "jane", JANE_PASSWORD,
                         bed.pbx_host.v4 if family == "ipv4" else bed.pbx_host.v6, port=5072)
    phone2.wait_registered()  # a phone in another namespace still registers
    assert_banned_then_released(bed, family, before)


def test_legitimate_registrations_create_no_watch_entry(bed):
    bed.write_conf(maxcount=3)
    bed.start_daemon()
    result = bed.register(bed.attacker, "ipv4", password=JANE_PASSWORD, expect=200, calls=50,
                          rate=50)
    assert result.returncode == 0
    bed.pbx.ami.wait_event(lambda e: e["Event"] == "SuccessfulAuth"
                           and bed.attacker.v4 in e.get("RemoteAddress", ""))
    poll(lambda: sum(1 for e in bed.pbx.ami.events if e["Event"] == "ChallengeSent") >= 50,
         10, "50 ChallengeSent events")
    assert bed.members("watch") == {} and bed.members("sipjail") == {}


def test_whitelisted_attacker_is_never_jailed(bed):
    bed.write_conf(maxcount=2, extra=f"whitelist = {bed.attacker.v4}/32\n")
    bed.start_daemon()
    bed.register(bed.attacker, "ipv4", calls=8, rate=20)
    poll(lambda: len(bed.attack_events(bed.attacker.v4)) >= 8, 10, "8 events")
    assert bed.members("sipjail") == {} and bed.members("watch") == {}
    assert f"{bed.attacker.v4}/32" in bed.members("whitelist") or \
        bed.attacker.v4 in bed.members("whitelist")


def test_blacklisted_address_is_dropped_from_the_first_packet(bed):
    bed.write_conf(extra=f"blacklist = {bed.attacker.v4}-{bed.attacker.v4}\n")
    bed.start_daemon()
    result = bed.register(bed.attacker, "ipv4", password=JANE_PASSWORD, expect=200, timeout=3)
    assert result.returncode != 0
    assert bed.drops()["blacklist4"] >= 1
    assert bed.attack_events(bed.attacker.v4) == []
    assert not [e for e in bed.pbx.ami.events if bed.attacker.v4 in e.get("RemoteAddress", "")]


def test_kill_9_mid_attack_loses_nothing(bed):
    bed.write_conf(maxcount=3)
    bed.start_daemon()
    bed.register(bed.attacker, "ipv4", calls=3)  # maxcount events: watched, not jailed
    watch = poll(lambda: bed.members("watch").get(bed.attacker.v4), 10, "watch entry")
    assert "events" in watch["comment"] and len(watch["comment"].split()) == 4
    bed.stop_daemon(signal.SIGKILL)
    bed.start_daemon()
    bed.register(bed.attacker, "ipv4", calls=1, port=5074)
    bed.wait_log(f"jailed {bed.attacker.v4}")
    assert bed.attacker.v4 in bed.members("sipjail")


def test_table_deleted_by_hand_comes_back_with_its_elements(bed):
    bed.write_conf(maxcount=1)
    bed.start_daemon()
    bed.register(bed.attacker, "ipv4", calls=2)
    bed.wait_log(f"jailed {bed.attacker.v4}")
    poll(lambda: bed.statefile.exists() and bed.attacker.v4 in bed.statefile.read_text(),
                  3, "state file")
    bed.pbx_host.run("nft", "flush", "ruleset")
    start = time.monotonic()
    poll(lambda: bed.pbx_host.run("nft", "list", "table", "inet", "autoban",
                                           check=False).returncode == 0, 3, "table rebuilt")
    assert time.monotonic() - start < 2.5
    assert bed.attacker.v4 in bed.members("sipjail")


def test_reboot_restores_jail_with_remaining_time(bed):
    bed.write_conf(maxcount=1, jailtime="10m")
    bed.start_daemon()
    bed.register(bed.attacker, "ipv4", calls=2)
    bed.wait_log(f"jailed {bed.attacker.v4}")
    poll(lambda: bed.statefile.exists() and bed.attacker.v4 in bed.statefile.read_text(),
                  3, "state file")
    before, t0 = bed.members("sipjail")[bed.attacker.v4]["expires"], time.monotonic()
    bed.stop_daemon(signal.SIGKILL)
    bed.pbx_host.run("nft", "delete", "table", "inet", "autoban")  # what a reboot does
    time.sleep(1.5)  # let real time pass, so "remaining" is really checked
    bed.start_daemon()
    after, t1 = bed.members("sipjail")[bed.attacker.v4]["expires"], time.monotonic()
    assert abs((before - (t1 - t0)) - after) <= 2, (before, after, t1 - t0)
    assert bed.members("parole")[bed.attacker.v4]["comment"] == "sentence 600"


def test_release_parole_and_rejail_with_multiplied_sentence(bed):
    # over TCP: the source is proven, so the sentence grows (unproven ones do not)
    bed.write_conf(maxcount=1, watchtime="6s", jailtime="2s", repeatmult=3)
    bed.start_daemon()
    bed.register(bed.attacker, "ipv4", calls=2, transport="t1")
    bed.wait_log(f"jailed {bed.attacker.v4} for 2s:")
    poll(lambda: bed.attacker.v4 not in bed.members("jail"), 5, "release")
    assert bed.attacker.v4 in bed.members("parole")  # released, on parole
    bed.register(bed.attacker, "ipv4", calls=1, port=5076, transport="t1")  # one event on parole
    line = bed.wait_log(f"jailed {bed.attacker.v4} for 6s:")
    assert "offended on parole" in line
    # silence through parole → forgotten
    poll(lambda: bed.attacker.v4 not in bed.members("parole"), 15, "parole over")
    assert bed.attacker.v4 not in bed.members("jail")


def test_asterisk_restart_daemon_reconnects_and_keeps_banning(bed, start_asterisk):
    bed.write_conf(maxcount=2)
    bed.start_daemon()
    bed.pbx.stop()
    bed.pbx = start_asterisk(bed.pbx_host, {"pjsip.conf": PJSIP, "manager.conf": MANAGER})
    poll(lambda: bed.log.count("AMI connected") >= 2, 40, "AMI reconnect")
    bed.register(bed.attacker, "ipv4", calls=4)
    bed.wait_log(f"jailed {bed.attacker.v4}")


def test_disabled_idles_without_touching_the_firewall(bed):
    path = bed.write_conf()
    path.write_text(path.read_text() + "enabled = no\n")
    bed.start_daemon(wait="idling without touching the firewall")
    time.sleep(0.5)  # nothing to await: we check that something does NOT happen
    assert bed.daemon.poll() is None
    assert bed.pbx_host.run("nft", "list", "tables").stdout.strip() == ""
    assert bed.stop_daemon() == 0


def test_wrong_ami_secret_is_logged_and_retried(bed):
    bed.write_conf(secret="not-the-secret")
    bed.start_daemon(wait="refused")
    poll(lambda: bed.log.count("refused") >= 2, 10, "a second login attempt")
    assert bed.daemon.poll() is None


def test_broken_config_is_a_clear_error(bed):
    path = bed.write_conf()
    path.write_text(path.read_text() + "jailtime = forever\n")
    bed.start_daemon(wait=None)
    assert bed.daemon.wait(10) == 78
    assert f"{path}:" in bed.log and "jailtime" in bed.log


def test_cli_against_kernel_sets(bed):
    bed.write_conf()
    bed.start_daemon()
    a, b, net6 = "198.51.100.7", "198.51.100.8", "2001:db8:99::/48"
    assert bed.cli("add", "jail", "=", a, b).returncode == 0
    assert set(bed.members("jail")) == {a, b}
    assert bed.members("parole")[a]["comment"] == "sentence 1200"
    bed.cli("add", "blacklist", "=", "jail", net6)
    # neighbours merge into one range, as nft's auto-merge does
    assert set(bed.members("blacklist")) == {f"{a}-{b}", net6}
    bed.cli("add", "whitelist", "=", "203.0.113.1-203.0.113.20")
    assert bed.members("whitelist")
    bed.cli("del", "all", "=", a)
    assert a not in bed.members("jail")
    assert set(bed.members("blacklist")) == {b, net6}  # a hole punched into the range
    show = bed.cli("show").stdout
    assert f"jail (1), 0 packets dropped:\n  {b}, expires in" in show
    listing = bed.cli("list", "jail", "parole").stdout
    assert "sentence 20m" in listing
    bad = bed.cli("add", "jail", "=", "198.51.100.300", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    bad = bed.cli("add", "jail", "=", "192.0.2.0/24", check=False)  # a prefix in a timed set
    assert bad.returncode == 2
    assert set(bed.members("jail")) == {b}  # nothing changed by the refused commands
    assert bed.cli("help").stdout.startswith("`autoban`")
    state = json.loads(bed.statefile.read_text())
    assert any(e["addr"] == b and e["set"] == "jail" for e in state["elements"])


SEED_TABLE = """\
table ip autoban {
	set watch { type ipv4_addr; flags timeout; }
	set jail { type ipv4_addr; flags timeout; }
	set parole { type ipv4_addr; flags timeout; }
	set blacklist { type ipv4_addr; }
	set whitelist { type ipv4_addr; }
	chain incoming {
		type filter hook input priority security; policy accept;
		ip saddr @whitelist accept
		ip saddr @blacklist drop
		ip saddr @jail drop
	}
}
add element ip autoban jail { 198.51.100.20 timeout 2h }
add element ip autoban parole { 198.51.100.20 timeout 2h20m }
add element ip autoban watch { 198.51.100.21 timeout 20m3s }
add element ip autoban blacklist { 198.51.100.22 }
"""


def test_seed_era_table_is_imported_and_removed(bed):
    (bed.tmp / "seed.nft").write_text(SEED_TABLE)
    bed.pbx_host.run("nft", "-f", str(bed.tmp / "seed.nft"))
    bed.write_conf()
    bed.start_daemon(wait="imported 4 elements from the seed's table ip autoban")
    jail = bed.members("jail")["198.51.100.20"]
    assert jail["comment"] == "sentence 7200" and 7100 < jail["expires"] <= 7200
    assert bed.members("watch")["198.51.100.21"]["comment"].count("+0") == 2  # count 3
    assert "198.51.100.22" in bed.members("blacklist")
    tables = bed.pbx_host.run("nft", "list", "tables").stdout
    assert "table ip autoban" not in tables and "table inet autoban" in tables


def test_seed_era_state_file_is_imported_once(bed):
    # what the seed's container saved on exit: `nft --stateless list table autoban`
    seedfile = bed.tmp / "nftables/autoban.nft"
    seedfile.parent.mkdir()
    seedfile.write_text((Path(__file__).parents[1] / "fixtures/autoban/seed-autoban.nft")
                        .read_text())
    bed.write_conf(extra=f"seedfile = {seedfile}\n")
    bed.start_daemon(wait="imported 6 of 6 elements from the seed's")
    jail = bed.members("jail")["198.51.100.20"]
    assert jail["comment"] == "sentence 7200" and 7100 < jail["expires"] <= 7200
    assert bed.members("parole")["198.51.100.20"]["comment"] == "sentence 7200"
    assert 10700 - 60 < bed.members("jail")["198.51.100.23"]["expires"] <= 10800
    assert {"198.51.100.22", "203.0.113.7"} <= set(bed.members("blacklist"))
    assert "198.51.100.21" in bed.members("watch")
    assert not seedfile.exists() and seedfile.with_name("autoban.nft.imported").exists()
    assert "table ip autoban" not in bed.pbx_host.run("nft", "list", "tables").stdout
    bed.stop_daemon()
    bed.start_daemon()
    assert bed.log.count("autoban started") == 2 and bed.log.count("from the seed's") == 1


def test_trust_after_successful_login_keeps_an_office_in(bed, start_phone):
    bed.write_conf(maxcount=2, extra="trusttime = 10m\n")
    bed.start_daemon()
    phone = start_phone(bed.phone_host, "jane", JANE_PASSWORD, bed.pbx_host.v4)
    phone.wait_registered()
    poll(lambda: bed.phone_host.v4 in bed.members("trust"), 10, "trust entry")
    # a misconfigured phone behind the same address fails again and again
    bed.register(bed.phone_host, "ipv4", calls=6, port=5080)
    poll(lambda: len(bed.attack_events(bed.phone_host.v4)) >= 6, 10, "6 events")
    assert bed.phone_host.v4 not in bed.members("sipjail")
    assert "trusted after a successful login" in bed.log
    # trust never overrides the blacklist
    bed.cli("add", "blacklist", "=", bed.phone_host.v4)
    blocked = bed.register(bed.phone_host, "ipv4", password=JANE_PASSWORD, expect=200,
                           port=5082, timeout=3)
    assert blocked.returncode != 0 and bed.drops()["blacklist4"] >= 1


def test_config_made_list_entries_follow_the_config_cli_made_ones_stay(bed):
    bed.write_conf(extra="whitelist = 203.0.113.1, 203.0.113.50\nblacklist = 198.51.100.9\n")
    bed.start_daemon()
    bed.cli("add", "whitelist", "=", "203.0.113.99")
    bed.cli("add", "blacklist", "=", "198.51.100.77")
    assert set(bed.members("whitelist")) == {"203.0.113.1", "203.0.113.50", "203.0.113.99"}
    bed.stop_daemon()
    # 203.0.113.50 and the blacklist line leave autoban.conf; then a restart, then a reboot
    bed.write_conf(extra="whitelist = 203.0.113.1\n")
    for reboot in (False, True):
        if reboot:
            bed.stop_daemon()
            bed.pbx_host.run("nft", "delete", "table", "inet", "autoban")
        bed.start_daemon()
        assert set(bed.members("whitelist")) == {"203.0.113.1", "203.0.113.99"}
        assert set(bed.members("blacklist")) == {"198.51.100.77"}
    assert "whitelist 203.0.113.50: no longer in" in bed.log or reboot


PREVIOUS_RELEASE_TABLE = """\
table inet autoban {
  set jail4 { type ipv4_addr; flags timeout; }
  set parole4 { type ipv4_addr; flags timeout; }
  set whitelist4 { type ipv4_addr; flags interval; auto-merge; }
  chain input { type filter hook input priority -10; policy accept;
    ip saddr @jail4 counter drop
  }
}
add element inet autoban jail4 { 198.51.100.30 timeout 1h comment "sentence 3600" }
add element inet autoban parole4 { 198.51.100.30 timeout 1h20m comment "sentence 3600" }
add element inet autoban whitelist4 { 203.0.113.0/28 }
"""


def test_table_of_the_previous_release_is_rebuilt_keeping_its_elements(bed):
    (bed.tmp / "old.nft").write_text(PREVIOUS_RELEASE_TABLE)
    bed.pbx_host.run("nft", "-f", str(bed.tmp / "old.nft"))
    bed.write_conf()
    bed.start_daemon(wait="rebuilt for this version; 3 of 3 elements kept")
    jail = bed.members("jail")["198.51.100.30"]
    assert jail["comment"] == "sentence 3600" and 3500 < jail["expires"] <= 3600
    assert "203.0.113.0/28" in bed.members("whitelist")
    chain = bed.pbx_host.run("nft", "list", "chain", "inet", "autoban", CHAIN).stdout
    assert "hook prerouting priority raw" in chain


def test_many_addresses_of_one_ipv6_prefix_end_as_one_jail_element(bed, start_phone):
    """The attacker gets a /64 of its own (the test bed puts every host in
    2001:db8:1::/64, which holds the PBX's own address: never jailed whole)."""
    bed.write_conf(maxcount=3)
    bed.start_daemon()
    bed.pbx_host.run("ip", "-6", "route", "add", "2001:db8:66::/64", "dev", "eth0")
    sources = [f"2001:db8:66::{n:x}" for n in range(1, 9)]
    for source in sources:
        bed.attacker.run("ip", "addr", "add", f"{source}/64", "dev", "eth0", "nodad")
    phone = start_phone(bed.phone_host, "jane", JANE_PASSWORD, bed.pbx_host.v6)
    phone.wait_registered()
    # one wrong-password REGISTER (one counted event) from each address in turn
    for n, source in enumerate(sources):
        walker = Host(bed.attacker.ns, "attacker", bed.attacker.v4, source)
        result = bed.register(walker, "ipv6", calls=1, timeout=3 if n >= 4 else 20,
                              port=5070 + n)
        if n < 4:
            assert result.returncode == 0, result.stdout[-1500:]
    bed.wait_log("jailed 2001:db8:66::/64 (2001:db8:66::4) for 20m, SIP only (UDP: the source "
                 "is not proven): 4 events")
    assert set(bed.members("sipjail")) == {"2001:db8:66::/64"}
    assert bed.members("watch") == {}
    assert len(bed.attack_events("2001:db8:66::")) == 0  # (no event names the prefix itself)
    assert sum(len(bed.attack_events(s)) for s in sources) == 4  # addresses 5..8: dropped
    assert bed.drops()["sipjailnet6"] >= 4  # the prefix's rule
    # the phone in the PBX's own /64 is untouched; the CLI shows and frees the prefix
    assert "2001:db8:66::/64, expires in" in bed.cli("show").stdout
    phone2 = start_phone(bed.phone_host, "jane", JANE_PASSWORD, bed.pbx_host.v6, port=5072)
    phone2.wait_registered()
    bed.cli("del", "all", "=", "2001:db8:66::77")
    assert bed.members("sipjail") == {}
    bed.cli("add", "jail", "=", "2001:db8:66::/64")
    assert bed.members("parole")["2001:db8:66::/64"]["comment"] == "sentence 1200"


def test_trunk_names_are_resolved_again_and_outlive_a_dead_resolver(bed):
    # `ip netns exec` (how the daemon is started) mounts /etc/netns/NS/hosts on /etc/hosts
    etc = Path("/etc/netns") / bed.pbx_host.ns
    etc.mkdir(parents=True)
    try:
        hosts = etc / "hosts"
        hosts.write_text("127.0.0.1 localhost\n192.0.2.200 itsp.test\n")
        (bed.confdir / "pjsip_wizard.conf").write_text(
            "[itsp]\ntype = wizard\nremote_hosts = itsp.test:5060\n")
        bed.write_conf(maxcount=1, extra="trunk_refresh = 1s\n")
        bed.start_daemon()
        bed.wait_log("trunk itsp.test resolves to 192.0.2.200/32")
        bed.register(bed.attacker, "ipv4", calls=2)
        bed.wait_log(f"jailed {bed.attacker.v4}")
        # the ITSP moves to the attacker's address (the file keeps its inode: the
        # daemon's bind mount sees the change)
        hosts.write_text(f"127.0.0.1 localhost\n{bed.attacker.v4} itsp.test\n")
        bed.wait_log(f"released {bed.attacker.v4}/32: it is the trunk's address now")
        assert bed.members("sipjail") == {} and bed.members("parole") == {}
        bed.register(bed.attacker, "ipv4", calls=3, port=5074)
        poll(lambda: bed.log.count("exempt, not counted") >= 3, 10, "3 exempt events")
        poll(lambda: bed.attacker.v4 in bed.statefile.read_text(), 5, "trunk in the state file")
        # a reboot with the resolver down: the state file's addresses protect the trunk
        bed.stop_daemon()
        bed.pbx_host.run("nft", "delete", "table", "inet", "autoban")
        hosts.write_text("127.0.0.1 localhost\n")
        bed.start_daemon()
        bed.wait_log(f"trunk itsp.test: keeping its last addresses {bed.attacker.v4}/32")
        before = len(bed.attack_events(bed.attacker.v4))
        bed.register(bed.attacker, "ipv4", calls=3, port=5076)
        poll(lambda: len(bed.attack_events(bed.attacker.v4)) >= before + 3, 10, "3 events")
        bed.wait_log(f"from {bed.attacker.v4} (account jane): exempt, not counted")
        assert bed.members("sipjail") == {} and bed.members("watch") == {}
    finally:
        for path in etc.iterdir():
            path.unlink()
        etc.rmdir()


FORGE = r"""
import os, socket, sys
pbx, claim, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
DIGEST = ('Authorization: Digest username="jane", realm="asterisk", '
          'nonce="1764170000/0123456789abcdef0123456789abcdef", uri="sip:{pbx}", '
          'response="0123456789abcdef0123456789abcdef", algorithm=MD5\r\n')
def register(user, port, auth):
    tag = os.urandom(6).hex()
    return (f"REGISTER sip:{pbx} SIP/2.0\r\nVia: SIP/2.0/UDP {claim}:{port};branch=z9hG4bK{tag}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{user}@{pbx}>;tag={tag}\r\nTo: <sip:{user}@{pbx}>\r\n"
            f"Call-ID: {tag}@{claim}\r\nCSeq: 1 REGISTER\r\n"
            f"Contact: <sip:{user}@{claim}:{port}>\r\n"
            f"{auth}Expires: 60\r\nContent-Length: 0\r\n\r\n").encode()
for port, user, auth in ((5999, "jane", DIGEST.format(pbx=pbx)), (6001, "nobody", "")):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((claim, port))
        for _ in range(count):
            s.sendto(register(user, port, auth), (pbx, 5060))
"""


def forger_claiming(bed: Bed, claim: str) -> Host:
    """A host that sends from CLAIM (another host's address) and never gets a reply:
    it answers no ARP (the PBX keeps replying to the real owner) and drops all input."""
    forger = bed.net.host("forger", 77)
    mac = json.loads(bed.pbx_host.run("ip", "-j", "link", "show", "eth0").stdout)[0]["address"]
    forger.run("ip", "link", "set", "eth0", "arp", "off")
    forger.run("ip", "addr", "add", f"{claim}/24", "dev", "eth0")
    forger.run("ip", "neigh", "replace", bed.pbx_host.v4, "lladdr", mac, "dev", "eth0",
               "nud", "permanent")
    forger.run("nft", "add table inet blind; add chain inet blind in "
               "{ type filter hook input priority 0; policy drop; }")
    return forger


def test_forged_flood_leaves_the_phones_at_that_address_working(bed, start_phone):
    bed.write_conf(maxcount=3)
    bed.start_daemon()
    a = bed.phone_host.v4
    phone = start_phone(bed.phone_host, "jane", JANE_PASSWORD, bed.pbx_host.v4, port=5070,
                        trace=True)
    phone.wait_registered()
    poll(lambda: f"{a} udp 5070" in bed.members("proven"), 10, "the phone's proven pair")
    forger = forger_claiming(bed, a)
    # forged REGISTERs claiming A: a made-up digest for jane, and an unknown user
    forger.run(sys.executable, "-c", FORGE, bed.pbx_host.v4, a, "20")
    line = bed.wait_log(f"jailed {a} for 20m, SIP only (UDP: the source is not proven)")
    assert a in bed.members("sipjail") and a not in bed.members("jail")
    # the registered phone keeps working: a MESSAGE reaches it ...
    bed.pbx.ami.action("MessageSend", Destination="pjsip:jane", From="sip:pbx@example",
                       Body="still here")
    assert phone.wait_messages(1)[0].body == b"still here"
    # ... A reaches the host outside SIP ...
    assert bed.phone_host.run("ping", "-c1", "-W2", bed.pbx_host.v4, check=False).returncode == 0
    # ... and re-registers from its address and port
    phone.stop()
    ok = bed.register(bed.phone_host, "ipv4", password=JANE_PASSWORD, expect=200, port=5070)
    assert ok.returncode == 0, ok.stdout[-1500:]
    # what the forger still achieves: SIP from a port of A not yet proven is shut out
    blocked = bed.register(bed.phone_host, "ipv4", password=JANE_PASSWORD, expect=200,
                           port=5090, timeout=3)
    assert blocked.returncode != 0
    # and it cannot make the sentence grow: another flood on parole, still 20m, SIP only
    bed.cli("del", "sipjail", "=", a)
    forger.run(sys.executable, "-c", FORGE, bed.pbx_host.v4, a, "3")
    again = bed.wait_log("offended on parole")
    assert f"jailed {a} for 20m, SIP only" in again and line != again


def test_guesser_behind_an_office_nat_is_stopped_the_phones_stay(bed, start_phone):
    bed.write_conf(maxcount=3)
    bed.start_daemon()
    office = bed.phone_host.v4
    phone = start_phone(bed.phone_host, "jane", JANE_PASSWORD, bed.pbx_host.v4, port=5070,
                        trace=True)
    phone.wait_registered()
    poll(lambda: f"{office} udp 5070" in bed.members("proven"), 10, "proven pair")
    # a colleague's misconfigured phone (or a guesser) at the same address, other port
    bed.register(bed.phone_host, "ipv4", calls=10, rate=20, port=5080, timeout=8)
    bed.wait_log(f"jailed {office} for 20m, SIP only")
    assert len(bed.attack_events(office)) <= 4 + 3  # stopped at the same event as ever
    bed.pbx.ami.action("MessageSend", Destination="pjsip:jane", From="sip:pbx@example",
                       Body="office")
    assert phone.wait_messages(1)[0].body == b"office"


def test_tcp_guesser_is_jailed_whole(bed):
    bed.write_conf(maxcount=3)
    bed.start_daemon()
    assert bed.attacker.run("ping", "-c1", "-W2", bed.pbx_host.v4, check=False).returncode == 0
    bed.register(bed.attacker, "ipv4", calls=6, rate=20, timeout=8, transport="t1")
    line = bed.wait_log(f"jailed {bed.attacker.v4} for 20m:")
    assert "SIP only" not in line
    assert bed.attacker.v4 in bed.members("jail")
    assert bed.attacker.run("ping", "-c1", "-W1", bed.pbx_host.v4, check=False).returncode != 0
    assert bed.drops()["jail4"] >= 1


def test_cli_set_to_set_copies_as_the_seed_had_them(bed):
    bed.write_conf()
    bed.start_daemon()
    bed.cli("add", "watch", "=", "198.51.100.7", "2001:db8:99::7")
    bed.cli("add", "jail", "parole", "=", "watch")
    assert set(bed.members("jail")) == set(bed.members("parole")) == {"198.51.100.7",
                                                                     "2001:db8:99::7"}
    bed.cli("add", "blacklist", "=", "jail")
    assert set(bed.members("blacklist")) == {"198.51.100.7", "2001:db8:99::7"}
    bed.cli("del", "all", "=", "all")
    assert all(bed.members(name) == {} for name in ("watch", "jail", "parole", "blacklist"))
