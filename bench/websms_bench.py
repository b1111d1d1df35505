"""websms benchmark: webhook throughput against a bare waitress "hello" app
(the ceiling, measured the same way in the same run), accept → phone
latency, and phone → ITSP latency. Not a test: it prints numbers.

    .venv/bin/python bench/websms_bench.py [--requests 5000] [--latency 2000]

A real Asterisk 22 (the test bed's) and websmsd run in a PBX namespace, a
baresip phone registered as jane in another, the load comes from an "ITSP"
namespace: `ab -n N -c 8` for throughput (every webhook the same SMS, no
provider id, so each is stored and delivered: the phone must get N), then 8
Python clients with keep-alive posting distinct SMS for latency (from the 2xx
of the webhook to the line baresip prints for the MESSAGE). Outgoing: the
phone texts an outside number 50 times, one at a time; latency from writing
the command to baresip to the fake ITSP receiving the POST."""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import benchlib  # first: puts tests/ (testbed) and the repository on sys.path

from testbed import rootfs
from testbed.asterisk import Asterisk
from testbed.itsp import FakeItsp, WebhookClient, poll
from testbed.netns import Host, Network

HELLO_APP = """\
import sys, waitress
def app(environ, start_response):
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]
waitress.serve(app, listen=f"*:{sys.argv[1]}", threads=8, _quiet=True)
"""
PORT, HELLO_PORT = 8088, 8089
JANE, OUTSIDE = "+12025550160", "+15017122661"


def pbx_configs() -> dict[str, str]:
    sys.path.insert(0, str(benchlib.ROOT / "tests" / "integration"))
    import test_websms as t  # the integration tests' minimal PBX, so both measure the same
    return {"pjsip.conf": t.PJSIP, "extensions.conf": t.EXTENSIONS,
            "manager.conf": t.MANAGER, "modules.conf": t.MODULES}


def websms_conf(spool: Path, itsp: FakeItsp, itsp_host: Host) -> str:
    # rate_limit: the timed outgoing SMS all come from one user, faster than a person types
    return (f"[websms]\nurl_host = {itsp.url}\nurl_path = /api/sms\nauth_method = none\n"
            "rate_limit = 100000\n"
            f"[websmsd]\nurl_path = /sms/in\nremt_addr = {itsp_host.v4}\n"
            f"[astqueue]\nspooldir = {spool}\n"
            "[asmanager]\nusername = websms\nsecret = websms-test-secret\n")


class Phone:
    """baresip as jane; the time each displayed MESSAGE body was read."""

    def __init__(self, host: Host, workdir: Path, pbx: str, contact: str) -> None:
        workdir.mkdir(parents=True)
        (workdir / "accounts").write_text(
            f"<sip:jane@{pbx};transport=udp>;auth_pass=Jane-sms-4711;regint=60\n")
        (workdir / "contacts").write_text(f"<{contact}>\n")
        (workdir / "config").write_text(
            "module_path /usr/lib/baresip/modules\nmodule stdio.so\nmodule g711.so\n"
            "module aufile.so\nmodule_app account.so\nmodule_app contact.so\n"
            f"module_app menu.so\nsip_listen {host.v4}:5060\n"
            "audio_player aufile,/dev/null\naudio_source aufile,/dev/null\n")
        self.got: dict[str, float] = {}
        self.count = 0
        self.registered = threading.Event()
        self.proc = host.popen("baresip", "-f", str(workdir), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        pattern = re.compile(rb': "(b-[0-9]+|same)"')
        for line in self.proc.stdout:
            if b"200 OK" in line:
                self.registered.set()
            m = pattern.search(line)
            if m:
                self.got.setdefault(m.group(1).decode(), time.monotonic())
                self.count += 1

    def text(self, body: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"/message {body}\n".encode())
        self.proc.stdin.flush()


def ab(host: Host, url: str, requests: int, body: Path) -> float:
    """Requests per second as ab measures them (all must answer 2xx)."""
    out = host.run("ab", "-q", "-n", str(requests), "-c", "8", "-p", str(body),
                   "-T", "application/x-www-form-urlencoded", url, timeout=600).stdout
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    if failed or non2xx:
        raise RuntimeError(f"ab: {failed} failed, {non2xx.group(1) if non2xx else 0} non-2xx")
    return float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))


def latency_load(client: WebhookClient, count: int) -> dict[str, float]:
    """8 keep-alive clients post distinct SMS; the time each was accepted (2xx)."""
    accepted: dict[str, float] = {}
    lock = threading.Lock()

    def worker(k: int) -> None:
        for i in range(k, count, 8):
            name = f"b-{i}"
            body = urlencode({"To": JANE, "From": OUTSIDE, "Body": name}).encode()
            reply = client.request("POST", "/sms/in", body,
                                   {"Content-Type": "application/x-www-form-urlencoded"})
            if reply.status != 200:
                raise RuntimeError(f"webhook answered {reply.status}")
            with lock:
                accepted[name] = time.monotonic()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return accepted


def pct(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100)[p - 1] if len(values) > 1 else values[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=5000, help="webhooks per throughput run")
    ap.add_argument("--latency", type=int, default=2000, help="SMS timed accept → phone")
    ap.add_argument("--outgoing", type=int, default=50, help="SMS timed phone → ITSP")
    ap.add_argument("--workdir", type=Path, help="keep logs here")
    args = ap.parse_args()
    benchlib.require(["ab", "baresip"], "apt-get install apache2-utils baresip-core")
    benchlib.sigterm_raises()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="websms-bench-"))
    tree = rootfs.ensure_rootfs()
    procs: list[subprocess.Popen] = []
    with Network() as net:
        pbx_host, itsp_host, phone_host = (net.host("pbx", 10), net.host("itsp", 20),
                                           net.host("phone", 30))
        pbx = Asterisk(tree, pbx_host, work / "asterisk", pbx_configs())
        itsp = FakeItsp(itsp_host, work)
        try:
            pbx.start()
            (work / "hello.py").write_text(HELLO_APP)
            procs.append(pbx_host.popen(sys.executable, str(work / "hello.py"), str(HELLO_PORT)))
            (work / "websms.conf").write_text(websms_conf(work / "spool", itsp, itsp_host))
            env = {"SYSLOG_LEVEL": "5", "WEBSMSD_PORT": str(PORT),
                   "PYTHONPATH": str(benchlib.ROOT), "PATH": "/usr/bin:/bin"}
            with open(work / "websmsd.log", "wb") as log:
                procs.append(pbx_host.popen(sys.executable, "-m", "pbxhost.websms.daemon", "-c",
                                            str(work / "websms.conf"), env=env, stdout=log,
                                            stderr=subprocess.STDOUT))
            phone = Phone(phone_host, work / "phone", pbx_host.v4,
                          f"sip:{OUTSIDE}@{pbx_host.v4}")
            procs.append(phone.proc)
            phone.registered.wait(15)
            pbx.ami.wait_event(lambda e: e["Event"] == "ContactStatus"
                               and e.get("ContactStatus") == "Reachable", 15)
            poll(lambda: b"AMI" in (work / "websmsd.log").read_bytes()
                 or pbx_host.run("ss", "-ltn").stdout.count(f":{PORT}") > 0, 15, "websmsd")
            body = work / "sms.form"
            body.write_text(urlencode({"To": JANE, "From": OUTSIDE, "Body": "same"}))
            time.sleep(1)  # let everything settle before timing (not synchronisation)
            hello = ab(itsp_host, f"http://{pbx_host.v4}:{HELLO_PORT}/sms/in", args.requests,
                       body)
            cpu = {"websmsd": procs[1].pid, "Asterisk": pbx.proc.pid, "baresip": phone.proc.pid}
            before = {name: benchlib.cpu_seconds(pid) or 0.0 for name, pid in cpu.items()}
            websms = ab(itsp_host, f"http://{pbx_host.v4}:{PORT}/sms/in", args.requests, body)
            poll(lambda: phone.count >= args.requests, 120, f"{args.requests} at the phone")
            per_sms = {name: ((benchlib.cpu_seconds(pid) or 0.0) - before[name])
                       * 1000 / args.requests for name, pid in cpu.items()}
            peak_rss = (benchlib.vm_kib(procs[1].pid, "VmHWM") or 0) / 1024
            delivered = phone.count
            client = WebhookClient(itsp_host, pbx_host.v4, PORT)
            start = time.monotonic()
            accepted = latency_load(client, args.latency)
            rate = args.latency / (time.monotonic() - start)
            poll(lambda: all(n in phone.got for n in accepted), 120, "latency SMS at the phone")
            lat = [(phone.got[n] - t) * 1000 for n, t in accepted.items()]
            outgoing = []
            for i in range(args.outgoing):
                sent = time.monotonic()
                phone.text(f"out-{i}")
                poll(lambda i=i: any(r.form().get("Body") == f"out-{i}"
                                     for r in itsp.requests[-3:]), 10, "POST at the ITSP")
                outgoing.append((itsp.requests[-1].at - sent) * 1000)
        finally:
            for proc in reversed(procs):
                benchlib.stop(proc)
            itsp.close()
            pbx.stop()
    print(f"websms bench, {benchlib.machine()}")
    print(benchlib.table(
        ["what", "value", "goal"],
        [["bare waitress hello, ab -c 8, req/s", f"{hello:.0f}", "(ceiling)"],
         ["websmsd webhooks durably accepted, ab -c 8, /s", f"{websms:.0f}", ">= 1500"],
         ["websmsd / hello", benchlib.ratio(websms, hello), ""],
         ["delivered to the phone (of ab's)", f"{delivered} of {args.requests}", "all"],
         *[[f"  CPU ms per SMS (accept + deliver): {name}", f"{ms:.2f}", ""]
           for name, ms in per_sms.items()],
         ["  websmsd peak RSS MB (VmHWM)", f"{peak_rss:.1f}", ""],
         ["accept -> phone p50 ms (8 keep-alive clients)", f"{pct(lat, 50):.1f}", ""],
         ["accept -> phone p99 ms", f"{pct(lat, 99):.1f}", "< 100"],
         ["  (that load's rate, /s)", f"{rate:.0f}", ""],
         ["phone -> ITSP p50 ms", f"{pct(outgoing, 50):.1f}", "< 50"],
         ["phone -> ITSP p99 ms", f"{pct(outgoing, 99):.1f}", ""]]))
    print(f"logs in {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(benchlib.run_main(main))
