"""Leak and time-to-ban of autoban and of fail2ban against a real Asterisk 22.

sipp floods failed REGISTERs (a known user, a wrong password) from an attacker
namespace at each rate; each tool in turn guards the PBX namespace, started
fresh for each trial, with the same threshold and window. Measured per trial:

- leak: failure events (InvalidAccountID, InvalidPassword,
  ChallengeResponseFailed, FailedACL naming the attacker) Asterisk emitted
  after the trigger event, as counted by the test bed's AMI observer. The
  trigger is the event at which the tool's own rule bans: for autoban the
  (maxcount+1)-th ("more than maxcount"), for fail2ban the maxretry-th
  (fail2ban bans when the count reaches maxretry); it is not counted.
- time-to-ban: from the moment the observer receives the trigger event to the
  moment the attacker's address is in the ban set, polled through nf_tables
  netlink (pbxhost.autoban.nfnetlink) from a socket opened in the PBX namespace:
  autoban's `sipjail4` of table inet autoban (UDP evidence); fail2ban's `addr-set-asterisk-udp`
  of table inet f2b-table (the stock asterisk jail bans through two actions,
  tcp and udp; the udp one is the one that stops this flood).

fail2ban (Debian's package) runs in the foreground in the PBX namespace with a
config dir of its own (a copy of /etc/fail2ban without jail.d), its stock
`asterisk` filter and jail, banaction nftables-allports, backend pyinotify
when installed (else polling), reading the file Asterisk's logger writes
SECURITY lines to (`[%F %T.%3q]` dates). Only SECURITY lines: Asterisk also
logs a NOTICE line per failed REGISTER that the filter matches too, which
would count every attempt twice. The nftables action's table is created at
start (actionstart_on_demand = false), as on a server that has banned before.

Run as root: `.venv/bin/python bench/autoban_leak.py` (see --help)."""

from __future__ import annotations

import argparse
import ipaddress
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import benchlib  # first: puts tests/ (testbed) and the repository on sys.path

from pbxhost.autoban.nfnetlink import Netlink
from testbed import rootfs
from testbed.amiclient import AmiClient, Message
from testbed.asterisk import LOGGER_CONF, Asterisk
from testbed.configs import TRANSPORTS, manager_conf, pjsip_user
from testbed.netns import Host, Network, in_netns, sweep_stale
from testbed.sip import sipp_register

ATTACKS = ("InvalidAccountID", "InvalidPassword", "ChallengeResponseFailed", "FailedACL")
PASSWORD = "Jane-pass-8812"
AMI_SECRET = "autoban-bench-secret"
PJSIP = TRANSPORTS + pjsip_user("jane", PASSWORD)
MANAGER = manager_conf("autoban", AMI_SECRET, read="security")
# The test bed's logger plus the file fail2ban reads: SECURITY lines only.
LOGGER = LOGGER_CONF + "security => security\n"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(benchlib.ROOT)}


# ---- the observer ------------------------------------------------------------

def is_attack(event: Message, source: str) -> bool:
    return event.get("Event") in ATTACKS and f"/{source}/" in event.get("RemoteAddress", "")


class Recorder(list):
    """Replaces the observer's event list: also timestamps, as they arrive, the
    failure events that name the current attacker, and arms the ban pollers
    when the event before the trigger has come."""

    def __init__(self, events: list[Message]) -> None:
        super().__init__(events)
        self.source = ""
        self.times: list[float] = []
        self.arm_at = 0
        self.armed = threading.Event()

    def append(self, event: Message) -> None:
        super().append(event)
        if self.source and is_attack(event, self.source):
            self.times.append(time.perf_counter())
            if len(self.times) >= self.arm_at:
                self.armed.set()


def install_recorder(ami: AmiClient) -> Recorder:
    with ami._cond:  # the reader thread appends under this lock
        recorder = Recorder(ami.events)
        ami.events = recorder
    return recorder


def watch(ami: AmiClient, recorder: Recorder, source: str, arm_at: int) -> None:
    with ami._cond:
        recorder.source, recorder.times, recorder.arm_at = source, [], max(arm_at, 1)
        recorder.armed = threading.Event()


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None,
             log: Path | None = None) -> None:
    """Poll PREDICATE every 10 ms until true; fail if PROC dies or time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        dead = proc is not None and proc.poll() is not None
        if dead or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            state = f"exited {proc.returncode}" if dead and proc else f"{timeout}s passed"
            raise RuntimeError(f"{what}: not ready ({state})\n{tail}")
        time.sleep(0.01)


# ---- the ban poller ----------------------------------------------------------

class BanPoller:
    """Polls one set for one address through nf_tables netlink, from a socket
    opened in the PBX namespace: every 2 ms until armed, then every INTERVAL."""

    def __init__(self, host: Host, table: str, name: str, addr: str,
                 armed: threading.Event, interval: float) -> None:
        self.netlink = in_netns(host.ns, Netlink)
        self.table, self.name, self.armed, self.interval = table, name, armed, interval
        self.key = ipaddress.ip_address(addr).packed
        self.found_at: float | None = None
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.polls += 1
            if self.netlink.element(self.table, self.name, self.key) is not None:
                self.found_at = time.perf_counter()
                return
            if not self.armed.is_set():
                self.armed.wait(0.002)
            elif self.interval:
                time.sleep(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# ---- the tools -----------------------------------------------------------------

class Tool(Protocol):
    name: str
    table: str
    set_name: str
    trigger: int  # the failure event, counted from 1, at which the tool's rule bans
    note: str

    def start(self, trial: int) -> None: ...
    def stop(self) -> None: ...


@dataclass
class Limits:
    maxcount: int
    watchtime: int
    jailtime: int


class Autoban:
    # sipp's guesser speaks UDP: autoban jails its SIP (sipjail4; docs/autoban.md)
    name, table, set_name = "autoban", "autoban", "sipjail4"

    def __init__(self, pbx: Asterisk, recorder: Recorder, workdir: Path, limits: Limits,
                 syslog_level: int) -> None:
        self.pbx, self.recorder, self.workdir = pbx, recorder, workdir
        self.limits, self.syslog_level = limits, syslog_level
        self.trigger = limits.maxcount + 1
        self.note = f" (SYSLOG_LEVEL {syslog_level})"
        self.proc: subprocess.Popen | None = None
        self.log: Path | None = None

    def write_conf(self, trial: int) -> Path:
        lim = self.limits
        conf = self.workdir / "autoban.conf"
        conf.write_text(
            "[asmanager]\nserver = 127.0.0.1\nport = 5038\nusername = autoban\n"
            f"secret = {AMI_SECRET}\n\n[autoban]\nmaxcount = {lim.maxcount}\n"
            f"watchtime = {lim.watchtime}\njailtime = {lim.jailtime}\n"
            f"statefile = {self.workdir / f'state-{trial}.json'}\n")
        return conf

    def start(self, trial: int) -> None:
        host = self.pbx.host
        host.run("nft", "delete", "table", "inet", self.table, check=False)
        conf = self.write_conf(trial)
        mark = len(self.recorder)
        self.log = self.workdir / f"autoband-{trial}.log"
        with open(self.log, "wb") as out:
            self.proc = host.popen(sys.executable, "-m", "pbxhost.autoban.daemon", "-c",
                                   str(conf), stdout=out, stderr=subprocess.STDOUT,
                                   env={**ENV, "SYSLOG_LEVEL": str(self.syslog_level)})

        def logged_in() -> bool:  # its AMI login, seen by the observer
            return any(e.get("Event") == "SuccessfulAuth" and e.get("AccountID") == "autoban"
                       for e in self.recorder[mark:])
        wait_for(logged_in, 20, "autoband", self.proc, self.log)
        time.sleep(0.2)  # the Login response follows the SuccessfulAuth event

    def stop(self) -> None:
        benchlib.stop(self.proc)
        self.proc = None
        self.pbx.host.run("nft", "delete", "table", "inet", self.table, check=False)


JAIL_LOCAL = """\
[DEFAULT]
banaction = nftables-allports
banaction_allports = nftables-allports
backend = {backend}

[asterisk]
enabled = true
logpath = {logpath} tail
maxretry = {maxretry}
findtime = {findtime}
bantime = {bantime}
"""
FAIL2BAN_LOCAL = """\
[DEFAULT]
loglevel = INFO
logtarget = {workdir}/fail2ban.log
socket = {workdir}/fail2ban.sock
pidfile = {workdir}/fail2ban.pid
dbfile = {workdir}/fail2ban.sqlite3
"""
# The action's table and set at start instead of at the first ban.
NFTABLES_LOCAL = "[Definition]\nactionstart_on_demand = false\n"


def fail2ban_backend() -> str:
    """pyinotify (the fastest file backend) if fail2ban's Python has it, else polling."""
    found = subprocess.run(["/usr/bin/python3", "-c", "import pyinotify"],
                           capture_output=True, check=False).returncode == 0
    return "pyinotify" if found else "polling"


def _local_jails(directory: str, names: list[str]) -> list[str]:
    """copytree's filter: jail.d/ and fail2ban.d/ come over empty (Debian's jail.d
    enables sshd)."""
    return names if Path(directory).name in ("jail.d", "fail2ban.d") else []


class Fail2ban:
    name, table, set_name = "fail2ban", "f2b-table", "addr-set-asterisk-udp"

    def __init__(self, pbx: Asterisk, workdir: Path, limits: Limits, maxretry: int) -> None:
        self.pbx, self.workdir = pbx, workdir
        self.trigger = maxretry
        self.backend = fail2ban_backend()
        self.note = f" (backend {self.backend})"
        self.conf = workdir / "etc"
        self.log = workdir / "fail2ban.log"
        self.proc: subprocess.Popen | None = None
        self._configure(limits, maxretry)

    def _configure(self, limits: Limits, maxretry: int) -> None:
        shutil.copytree("/etc/fail2ban", self.conf, ignore=_local_jails)
        (self.conf / "fail2ban.local").write_text(FAIL2BAN_LOCAL.format(workdir=self.workdir))
        (self.conf / "jail.local").write_text(JAIL_LOCAL.format(
            backend=self.backend, logpath=self.pbx.var / "log/asterisk/security",
            maxretry=maxretry, findtime=limits.watchtime, bantime=limits.jailtime))
        (self.conf / "action.d/nftables-common.local").write_text(NFTABLES_LOCAL)

    def start(self, trial: int) -> None:
        host = self.pbx.host
        host.run("nft", "delete", "table", "inet", self.table, check=False)
        (self.workdir / "fail2ban.sqlite3").unlink(missing_ok=True)  # no bans restored
        mark = self.log.stat().st_size if self.log.exists() else 0
        self.proc = host.popen("fail2ban-server", "-f", "-x", "-c", str(self.conf),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT, env=ENV)

        def started() -> bool:
            text = self.log.read_bytes()[mark:] if self.log.exists() else b""
            return b"Jail 'asterisk' started" in text and host.run(
                "nft", "list", "set", "inet", self.table, self.set_name,
                check=False).returncode == 0
        wait_for(started, 30, "fail2ban-server", self.proc, self.log)

    def stop(self) -> None:
        benchlib.stop(self.proc, 20)
        self.proc = None
        self.pbx.host.run("nft", "delete", "table", "inet", self.table, check=False)


# ---- one trial -----------------------------------------------------------------

@dataclass
class Result:
    tool: str
    rate: int
    run: int
    events: int             # failure events from the attacker, all
    trigger: int
    ttb_ms: float | None    # time-to-ban

    @property
    def leak(self) -> int:
        return max(self.events - self.trigger, 0)


@dataclass
class Bench:
    net: Network
    pbx: Asterisk
    recorder: Recorder
    workdir: Path
    duration: float
    settle: float
    interval: float
    attackers: int = 0

    def attacker(self) -> Host:
        self.attackers += 1
        return self.net.host(f"a{self.attackers}", 100 + self.attackers)

    def trial(self, tool: Tool, rate: int, run: int) -> Result:
        attacker = self.attacker()
        tool.start(self.attackers)
        try:
            watch(self.pbx.ami, self.recorder, attacker.v4, tool.trigger - 1)
            poller = BanPoller(self.pbx.host, tool.table, tool.set_name, attacker.v4,
                               self.recorder.armed, self.interval)
            try:
                sipp_register(attacker, self.pbx.host.v4, "jane", "wrong", self.workdir,
                              expect=401, calls=max(int(rate * self.duration), tool.trigger + 1),
                              rate=rate, timeout=self.duration + 2)
                time.sleep(self.settle)  # what was in flight reaches the observer
            finally:
                poller.stop()
        finally:
            tool.stop()
        return self.result(tool, rate, run, poller)

    def result(self, tool: Tool, rate: int, run: int, poller: BanPoller) -> Result:
        times, k = list(self.recorder.times), tool.trigger
        ttb = None
        if poller.found_at is not None and len(times) >= k:
            ttb = (poller.found_at - times[k - 1]) * 1000
        return Result(tool.name, rate, run, len(times), k, ttb)


# ---- report --------------------------------------------------------------------

def fmt(value: float | None, digits: int = 2) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def summary(results: list[Result], tools: list[str], rates: list[int]) -> str:
    rows, medians = [], {}
    for rate in rates:
        for tool in tools:
            mine = [r for r in results if r.tool == tool and r.rate == rate]
            leaks = sorted(r.leak for r in mine)
            ttbs = [r.ttb_ms for r in mine if r.ttb_ms is not None]
            med = (benchlib.median(leaks), benchlib.median(ttbs))
            medians[tool, rate] = med
            missed = len(mine) - len(ttbs)
            rows.append([tool, rate, mine[0].trigger if mine else None,
                         fmt(med[0], 1), f"{leaks[0]}..{leaks[-1]}" if leaks else None,
                         fmt(med[1]), f"{fmt(min(ttbs))}..{fmt(max(ttbs))}" if ttbs else None,
                         missed or ""])
    out = benchlib.table(["tool", "rate/s", "trigger", "leak (median)", "leak range",
                          "time-to-ban ms (median)", "ttb range", "no ban"], rows)
    if {"autoban", "fail2ban"} <= set(tools):
        ratio_rows = [[rate, benchlib.ratio(medians["autoban", rate][0],
                                            medians["fail2ban", rate][0]),
                       benchlib.ratio(medians["autoban", rate][1],
                                      medians["fail2ban", rate][1])] for rate in rates]
        out += "\n\nautoban / fail2ban\n" + benchlib.table(
            ["rate/s", "leak ratio", "time-to-ban ratio"], ratio_rows)
    return out


def per_trial(results: list[Result]) -> str:
    return benchlib.table(
        ["run", "tool", "rate/s", "events", "trigger", "leak", "time-to-ban ms"],
        [[r.run, r.tool, r.rate, r.events, r.trigger, r.leak,
          fmt(r.ttb_ms)] for r in results])


# ---- main ------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="autoban_leak", description="Leak and time-to-ban of autoban and fail2ban: "
        "sipp floods failed REGISTERs at a real Asterisk 22 in network namespaces.",
        epilog="Needs root, the test bed's sid tree (built on first use, ~45 s), sipp "
        "(sip-tester) and, for fail2ban, `apt-get install fail2ban python3-pyinotify`.")
    p.add_argument("--rates", default="50,500", help="REGISTER attempts/s (default 50,500)")
    p.add_argument("--runs", type=int, default=3, help="trials per tool and rate (default 3)")
    p.add_argument("--tools", default="autoban,fail2ban", help="default autoban,fail2ban")
    p.add_argument("--duration", type=float, default=3.0,
                   help="seconds of flood per trial (default 3)")
    p.add_argument("--maxcount", type=int, default=3,
                   help="autoban maxcount; fail2ban maxretry unless --maxretry (default 3)")
    p.add_argument("--maxretry", type=int, help="fail2ban maxretry (default: maxcount)")
    p.add_argument("--watchtime", type=int, default=1200,
                   help="autoban watchtime = fail2ban findtime, seconds (default 1200)")
    p.add_argument("--jailtime", type=int, default=1200,
                   help="autoban jailtime = fail2ban bantime, seconds (default 1200)")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds to wait after the flood before counting (default 1)")
    p.add_argument("--poll-interval", type=float, default=0.0001,
                   help="seconds between netlink polls once armed (default 0.0001)")
    p.add_argument("--syslog-level", type=int, default=6,
                   help="autoband's SYSLOG_LEVEL (default 6, as installed; 8 logs "
                   "'handled in N ms' per event)")
    p.add_argument("--workdir", type=Path, help="keep logs here (default: a temp dir, removed)")
    args = p.parse_args(argv)
    args.rates = [int(r) for r in args.rates.split(",")]
    args.tools = args.tools.split(",")
    if not set(args.tools) <= {"autoban", "fail2ban"}:
        p.error("--tools: autoban and/or fail2ban")
    return args


def make_tools(args: argparse.Namespace, pbx: Asterisk, recorder: Recorder,
               workdir: Path) -> list[Tool]:
    limits = Limits(args.maxcount, args.watchtime, args.jailtime)
    tools: list[Tool] = []
    for name in args.tools:
        sub = workdir / name
        sub.mkdir(exist_ok=True)
        if name == "autoban":
            tools.append(Autoban(pbx, recorder, sub, limits, args.syslog_level))
        else:
            tools.append(Fail2ban(pbx, sub, limits, args.maxretry or args.maxcount))
    return tools


def run(args: argparse.Namespace, workdir: Path) -> list[Result]:
    tree = rootfs.ensure_rootfs()
    results: list[Result] = []
    with Network() as net:
        pbx = Asterisk(tree, net.host("pbx", 10), workdir / "asterisk",
                       {"pjsip.conf": PJSIP, "manager.conf": MANAGER, "logger.conf": LOGGER})
        try:
            pbx.start()
            assert pbx.ami is not None
            recorder = install_recorder(pbx.ami)
            tools = make_tools(args, pbx, recorder, workdir)
            bench = Bench(net, pbx, recorder, workdir, args.duration, args.settle,
                          args.poll_interval)
            print(f"asterisk {rootfs.versions(tree)['asterisk']}; "
                  + "; ".join(f"{t.name} bans at failure event #{t.trigger}{t.note}"
                              for t in tools), flush=True)
            for n in range(1, args.runs + 1):
                for rate in args.rates:
                    for tool in tools:  # interleaved, so drift hits both alike
                        result = bench.trial(tool, rate, n)
                        results.append(result)
                        print(f"  run {n} {tool.name:8} {rate:4}/s: {result.events} events, "
                              f"leak {result.leak}, time-to-ban {fmt(result.ttb_ms)} ms",
                              flush=True)
        finally:
            pbx.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    benchlib.require(["sipp", "nft", "ip", *(["fail2ban-server"] if "fail2ban" in args.tools
                                           else [])],
                     "apt-get install sip-tester nftables fail2ban python3-pyinotify")
    benchlib.sigterm_raises()
    sys.setswitchinterval(0.0005)  # the observer and the poller share the GIL
    sweep_stale()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pbxhost-bench-leak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M")
    try:
        results = run(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nautoban_leak {started}, {benchlib.machine()}")
    print(f"maxcount {args.maxcount}, watchtime/findtime {args.watchtime}s, "
          f"{args.duration:g}s of flood per trial\n")
    print(per_trial(results))
    print()
    print(summary(results, args.tools, args.rates))
    return 0


if __name__ == "__main__":
    raise SystemExit(benchlib.run_main(main))
