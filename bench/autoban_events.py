"""Events/s autoband sustains, and its memory, fed by a fake AMI on loopback.

A fake AMI server (banner, Login, Ping, as tests/unit/test_ami.py's FakeAmi)
streams N ChallengeResponseFailed events as fast as the reader takes them, from
many distinct addresses in 198.18.0.0/15 and 2001:db8:be7c::/48 (benchmarking
and documentation ranges): most addresses send 1..maxcount events (watched),
a share sends maxcount+2 (jailed, then one event while jailed); the order is
shuffled with a fixed seed. The stream ends with maxcount+1 events of a
sentinel address, so the sentinel lands in `sipjail4` when the last event has
been handled: a netlink poll of that set (in the namespace) stops the clock.

Everything runs in a private network namespace (the test bed's Network, no
Asterisk): the fake AMI listens on its loopback, autoband applies its real
nftables table there. Peer, same stream, same namespace, same run: a
consumer that only parses (pbxhost.ami, panoramisk's Message; the handler
counts) — the ceiling any handler can reach with this AMI client.

Run as root: `.venv/bin/python bench/autoban_events.py` (see --help)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import benchlib  # first: puts tests/ (testbed) and the repository on sys.path

from pbxhost.autoban.nfnetlink import Netlink
from testbed.netns import Host, Network, in_netns, sweep_stale

V4_BASE = int(ipaddress.IPv4Address("198.18.0.0"))   # 198.18.0.0/15, RFC 2544
V6_BASE = int(ipaddress.IPv6Address("2001:db8:be7c::"))
SENTINEL = "198.19.255.254"
EVENT = ("Event: ChallengeResponseFailed\r\nPrivilege: security,all\r\n"
         "EventTV: {tv}\r\nSeverity: Error\r\nService: PJSIP\r\nEventVersion: 1\r\n"
         "AccountID: {account}\r\nSessionID: {i}-bench@{addr}\r\n"
         "LocalAddress: IPV4/UDP/192.0.2.10/5060\r\nRemoteAddress: {fam}/UDP/{addr}/5060\r\n"
         "Challenge: 1795676475/5d3b341d8ea2e418cb5575263876c553\r\n"
         "Response: 3cfe6d78aa334c640b833945fa68c1e1\r\nExpectedResponse: \r\n\r\n")
SECRET = "bench-secret"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(benchlib.ROOT)}
CHUNK = 65536


# ---- the event stream ------------------------------------------------------------

def addresses(rng: random.Random, count: int, v6_share: float) -> list[str]:
    """COUNT distinct addresses, about V6_SHARE of them IPv6; never the sentinel."""
    v6 = int(count * v6_share)
    v4 = rng.sample(range(1, (1 << 17) - 2), count - v6)
    out = [str(ipaddress.IPv4Address(V4_BASE + i)) for i in v4]
    out += [str(ipaddress.IPv6Address(V6_BASE + rng.getrandbits(64) + 1)) for _ in range(v6)]
    rng.shuffle(out)
    return out


def plan(n: int, maxcount: int, jail_share: float, v6_share: float, seed: int) -> list[str]:
    """The source address of each of N events (the sentinel's last)."""
    rng = random.Random(seed)
    body = n - (maxcount + 1)
    jail_events = int(body * jail_share)
    jailed = jail_events // (maxcount + 2)
    counts = [maxcount + 2] * jailed
    while sum(counts) < body:
        counts.append(rng.randint(1, maxcount))
    counts[-1] -= sum(counts) - body
    pool = addresses(rng, len(counts), v6_share)
    events = [addr for addr, k in zip(pool, counts, strict=True) for _ in range(k)]
    rng.shuffle(events)
    return events + [SENTINEL] * (maxcount + 1)


def encode(sources: list[str]) -> bytes:
    tv = time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime())
    return "".join(EVENT.format(tv=tv, account=1000 + i % 50, i=i, addr=a,
                                fam="IPV6" if ":" in a else "IPV4")
                   for i, a in enumerate(sources)).encode()


# ---- the fake AMI ------------------------------------------------------------------

class FakeAmi:
    """Banner, Login (any secret), Ping; then the stream, written as fast as the
    client reads it (drain() after each 64 KiB)."""

    def __init__(self, stream: bytes) -> None:
        self.stream = stream
        self.logins = 0
        self.logged_in = asyncio.Event()
        self.writer: asyncio.StreamWriter | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"Asterisk Call Manager/11.0.0\r\n")
        try:
            while block := await reader.readuntil(b"\r\n\r\n"):
                self.answer(block, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def answer(self, block: bytes, writer: asyncio.StreamWriter) -> None:
        fields = dict(ln.split(": ", 1) for ln in block.decode().split("\r\n") if ": " in ln)
        aid = fields.get("ActionID", "")
        if fields.get("Action") == "Login":
            self.logins += 1
            writer.write(f"Response: Success\r\nActionID: {aid}\r\n"
                         "Message: Authentication accepted\r\n\r\n".encode())
            self.writer = writer
            self.logged_in.set()
        elif fields.get("Action") == "Ping":
            writer.write(f"Response: Success\r\nActionID: {aid}\r\nPing: Pong\r\n"
                         f"Timestamp: {time.time():.6f}\r\n\r\n".encode())
        else:
            writer.write(f"Response: Success\r\nActionID: {aid}\r\n\r\n".encode())

    async def send(self) -> float:
        """Write the whole stream; returns when the first byte went out."""
        assert self.writer is not None
        started = time.monotonic()
        view = memoryview(self.stream)
        for offset in range(0, len(view), CHUNK):
            self.writer.write(view[offset:offset + CHUNK])
            await self.writer.drain()
        return started


async def serve(host: Host, stream: bytes) -> tuple[FakeAmi, asyncio.Server, int]:
    fake = FakeAmi(stream)
    sock = host.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    server = await asyncio.start_server(fake.handle, sock=sock)
    return fake, server, sock.getsockname()[1]


# ---- the peers -----------------------------------------------------------------------

@dataclass
class Outcome:
    name: str
    events: int
    seconds: float
    hwm_kib: int | None        # peak RSS
    idle_kib: int | None       # RSS once logged in, before the stream
    cpu: float | None          # CPU seconds spent on the stream
    logins: int

    @property
    def rate(self) -> float:
        return self.events / self.seconds


class SentinelPoller:
    """Polls sipjail4 (the events are UDP) for the sentinel through netlink in
    HOST's namespace, 1 ms apart."""

    def __init__(self, host: Host) -> None:
        self.netlink = in_netns(host.ns, Netlink)
        self.found_at: float | None = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        key = ipaddress.IPv4Address(SENTINEL).packed
        while not self.stopped.is_set():
            if self.netlink.element("autoban", "sipjail4", key) is not None:
                self.found_at = time.monotonic()
                return
            time.sleep(0.001)

    async def wait(self, timeout: float, proc: subprocess.Popen) -> float:
        deadline = time.monotonic() + timeout
        while self.found_at is None:
            if proc.poll() is not None:
                raise RuntimeError(f"autoband exited ({proc.returncode}) mid-stream")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the sentinel not jailed within {timeout}s")
            await asyncio.sleep(0.005)
        return self.found_at


Prepare = Callable[[int], list[str]]   # the fake AMI's port → the command to run
Done = Callable[[subprocess.Popen], Awaitable[float]]  # → when the last event was handled


async def measure(name: str, host: Host, stream: bytes, n: int, prepare: Prepare,
                  done: Done, log: Path, timeout: float, pipe: bool = False) -> Outcome:
    """Run the peer in HOST (stdout piped to us if PIPE, else to LOG with stderr),
    wait for its login, stream, await done(proc)."""
    fake, server, port = await serve(host, stream)
    proc: subprocess.Popen | None = None
    try:
        with open(log, "wb") as out:
            proc = host.popen(*prepare(port), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE if pipe else out, stderr=out,
                              env=ENV | {"SYSLOG_LEVEL": "6"})
        await asyncio.wait_for(fake.logged_in.wait(), 20)
        await asyncio.sleep(0.3)  # settle: the login answered, nothing else pending
        idle, cpu0 = benchlib.vm_kib(proc.pid, "VmRSS"), benchlib.cpu_seconds(proc.pid)
        started = await fake.send()
        finished = await asyncio.wait_for(done(proc), timeout)
        hwm, cpu1 = benchlib.vm_kib(proc.pid, "VmHWM"), benchlib.cpu_seconds(proc.pid)
        cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
        return Outcome(name, n, finished - started, hwm, idle, cpu, fake.logins)
    finally:
        benchlib.stop(proc)
        server.close()
        if fake.writer is not None:
            fake.writer.close()


async def run_daemon(host: Host, stream: bytes, n: int, workdir: Path, maxcount: int,
                     timeout: float, script: Path | None = None) -> Outcome:
    """autoband, as installed (SYSLOG_LEVEL 6), with its real table in the namespace."""
    host.run("nft", "delete", "table", "inet", "autoban", check=False)
    state = workdir / "state.json"
    state.unlink(missing_ok=True)

    def prepare(port: int) -> list[str]:
        conf = workdir / "autoban.conf"
        conf.write_text(f"[asmanager]\nserver = 127.0.0.1\nport = {port}\nusername = autoban\n"
                        f"secret = {SECRET}\n\n[autoban]\nmaxcount = {maxcount}\n"
                        f"watchtime = 20m\njailtime = 20m\nstatefile = {state}\n")
        daemon = [str(script)] if script else ["-m", "pbxhost.autoban.daemon"]
        return [sys.executable, *daemon, "-c", str(conf)]

    poller = SentinelPoller(host)

    async def done(proc: subprocess.Popen) -> float:
        return await poller.wait(timeout, proc)

    try:
        return await measure("autoband", host, stream, n, prepare, done,
                             workdir / "autoband.log", timeout)
    finally:
        poller.stopped.set()
        host.run("nft", "delete", "table", "inet", "autoban", check=False)


async def run_consumer(host: Host, stream: bytes, n: int, workdir: Path,
                       timeout: float) -> Outcome:
    """The ceiling: this script's --consume mode, which parses and counts only."""
    def prepare(port: int) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--consume", str(port),
                "--events", str(n)]

    async def done(proc: subprocess.Popen) -> float:
        assert proc.stdout is not None
        line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
        if not line.startswith(b"done "):
            raise RuntimeError(f"consumer: {line!r}")
        return float(line.split()[1])

    return await measure("AMI parse only", host, stream, n, prepare, done,
                         workdir / "consumer.log", timeout, pipe=True)


# ---- --consume: the peer process -------------------------------------------------------

def consume(port: int, n: int) -> int:
    """Log in with pbxhost.ami (panoramisk's parser), count the failure events,
    print `done MONOTONIC` after the N-th, then idle until stopped."""
    from pbxhost.ami import AmiClient, AmiSettings

    async def main() -> None:
        seen = 0
        finished = asyncio.Event()

        def handler(event) -> None:
            nonlocal seen
            if event.get("Event") == "ChallengeResponseFailed":
                seen += 1
                if seen == n:
                    print(f"done {time.monotonic():.6f}", flush=True)
                    finished.set()

        settings = AmiSettings(port=port, username="consumer", secret=SECRET, events="security")
        client = asyncio.ensure_future(AmiClient(settings, handler).run())
        await finished.wait()
        await asyncio.Event().wait()  # keep the process (and its peak RSS) until stopped
        client.cancel()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0


# ---- main ------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="autoban_events", description="Events/s autoband sustains and its peak RSS, "
        "fed by a fake AMI on loopback, with real nftables in a private network namespace; "
        "peer: a consumer that only parses the same stream.",
        epilog="Needs root (network namespaces, nftables).")
    p.add_argument("--events", type=int, default=20000, help="events per stream (default 20000)")
    p.add_argument("--runs", type=int, default=3, help="runs per peer; medians (default 3)")
    p.add_argument("--maxcount", type=int, default=3, help="autoban maxcount (default 3)")
    p.add_argument("--jail-share", type=float, default=0.1,
                   help="share of events from addresses that get jailed (default 0.1)")
    p.add_argument("--v6-share", type=float, default=0.1,
                   help="share of IPv6 addresses (default 0.1)")
    p.add_argument("--seed", type=int, default=1, help="shuffle seed (default 1)")
    p.add_argument("--timeout", type=float, default=300,
                   help="seconds allowed per stream (default 300)")
    p.add_argument("--workdir", type=Path, help="keep logs here (default: a temp dir, removed)")
    p.add_argument("--daemon-script", type=Path, metavar="PY",
                   help="run this file instead of `-m pbxhost.autoban.daemon` (to measure a "
                   "patched daemon the same way)")
    p.add_argument("--consume", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.events < 10 * (args.maxcount + 2):
        p.error("--events: too few for that maxcount")
    return args


async def bench(args: argparse.Namespace, host: Host, workdir: Path) -> list[Outcome]:
    sources = plan(args.events, args.maxcount, args.jail_share, args.v6_share, args.seed)
    stream = encode(sources)
    distinct = len(set(sources))
    print(f"{args.events} events, {len(stream) / 1e6:.1f} MB, {distinct} addresses "
          f"(maxcount {args.maxcount})", flush=True)
    outcomes: list[Outcome] = []
    for run in range(1, args.runs + 1):
        for peer in ("consumer", "daemon"):  # interleaved, so drift hits both alike
            if peer == "consumer":
                got = await run_consumer(host, stream, args.events, workdir, args.timeout)
            else:
                got = await run_daemon(host, stream, args.events, workdir, args.maxcount,
                                       args.timeout, args.daemon_script)
            outcomes.append(got)
            print(f"  run {run} {got.name:15}: {got.seconds:.2f} s, {got.rate:,.0f} events/s, "
                  f"peak RSS {kib_mb(got.hwm_kib)} MB, logins {got.logins}", flush=True)
    return outcomes


def kib_mb(kib: int | None) -> str | None:
    return None if kib is None else f"{kib / 1024:.1f}"


def report(outcomes: list[Outcome]) -> str:
    rows, rates = [], {}
    for name in dict.fromkeys(o.name for o in outcomes):
        mine = [o for o in outcomes if o.name == name]
        rate = benchlib.median([o.rate for o in mine])
        rates[name] = rate
        cpu = benchlib.median([o.events / o.cpu for o in mine if o.cpu])
        rows.append([name, f"{rate:,.0f}", f"{min(o.rate for o in mine):,.0f}..."
                     f"{max(o.rate for o in mine):,.0f}",
                     None if cpu is None else f"{cpu:,.0f}",
                     kib_mb(max((o.hwm_kib or 0) for o in mine)),
                     kib_mb(benchlib.median([o.idle_kib for o in mine if o.idle_kib])),
                     max(o.logins for o in mine)])
    out = benchlib.table(["peer", "events/s (median)", "range", "events/CPU-s",
                          "peak RSS MB (max)", "RSS idle MB", "AMI logins"], rows)
    daemon, ceiling = rates.get("autoband"), rates.get("AMI parse only")
    return out + f"\n\nautoband / parse-only ceiling: {benchlib.ratio(daemon, ceiling)}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.consume is not None:
        return consume(args.consume, args.events)
    benchlib.require(["nft", "ip"], "apt-get install nftables iproute2")
    benchlib.sigterm_raises()
    sweep_stale()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pbxhost-bench-events-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M")
    try:
        with Network() as net:
            outcomes = asyncio.run(bench(args, net.host("pbx", 10), workdir))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nautoban_events {started}, {benchlib.machine()}\n")
    print(report(outcomes))
    return 0


if __name__ == "__main__":
    raise SystemExit(benchlib.run_main(main))
