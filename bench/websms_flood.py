"""websms under a flood: signed webhooks while 10 strangers post unsigned
60 KB multipart bodies as fast as they can, against the same signed load
without the flood (the peer, same run). Not a test: it prints numbers.

    .venv/bin/python bench/websms_flood.py [--signed 300] [--flooders 10]

websmsd runs as it does in production (`python -m pbxhost.websms.daemon`, a
Twilio-signed interface, the journal in a temporary spool; no Asterisk: the
SMS wait in the journal). The flooders are processes, each from its own
loopback address (127.0.0.2 ...), each with one keep-alive connection; the
signed client posts from 127.0.0.1, one request at a time, and its latency
is what is measured (request sent → answer read). Goal: p99 < 300 ms."""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import benchlib
from twilio.request_validator import RequestValidator

PORT = 18088
TOKEN = "flood-bench-twilio-token-0123456789"
URL = f"http://127.0.0.1:{PORT}/sms/in"


def flood(source: str, stop_at: float, counts: Any) -> None:
    """Unsigned 60 KB multipart bodies from SOURCE until STOP_AT; how many answered."""
    boundary = "flood"
    parts = "".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\n"
                    f"{'x' * 280}\r\n" for i in range(200))
    body = (parts + f"--{boundary}--\r\n").encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}",
               "X-Twilio-Signature": "AAAA"}
    conn = None
    while time.monotonic() < stop_at:
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10,
                                                  source_address=(source, 0))
            conn.request("POST", "/sms/in", body, headers)
            conn.getresponse().read()
            with counts.get_lock():
                counts.value += 1
        except (OSError, http.client.HTTPException):
            conn = None


def signed_latencies(n: int) -> list[float]:
    validator = RequestValidator(TOKEN)
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    out = []
    for i in range(n):
        fields = {"To": "+12025550160", "From": "+15017122661", "Body": f"signed {i}",
                  "MessageSid": f"SM{i:032d}"}
        headers = {"Content-Type": "application/x-www-form-urlencoded",
                   "X-Twilio-Signature": validator.compute_signature(URL, fields),
                   "Host": f"127.0.0.1:{PORT}"}
        start = time.monotonic()
        conn.request("POST", "/sms/in", urlencode(fields), headers)
        resp = conn.getresponse()
        resp.read()
        out.append((time.monotonic() - start) * 1000)
        if resp.status != 200:
            raise SystemExit(f"signed request answered {resp.status}")
    return out


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def wait_listening() -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", PORT)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit("websmsd did not listen")


def run(args: argparse.Namespace, work: Path) -> tuple[list[float], list[float], float]:
    conf = work / "websms.conf"
    conf.write_text(f"[websmsd]\nurl_path = /sms/in\nprovider = twilio\n"
                    f"sign_secret = {TOKEN}\nkey_id =\n"
                    f"[astqueue]\nspooldir = {work / 'spool'}\n"
                    "[asmanager]\nport = 1\nsecret = x\n")
    env = {**os.environ, "WEBSMSD_PORT": str(PORT), "SYSLOG_LEVEL": "4",
           "PYTHONPATH": str(benchlib.ROOT)}
    daemon = subprocess.Popen([sys.executable, "-m", "pbxhost.websms.daemon", "-c", str(conf)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening()
        quiet = signed_latencies(args.signed)
        counts = multiprocessing.Value("q", 0)
        stop_at = time.monotonic() + 3600
        procs = [multiprocessing.Process(target=flood, args=(f"127.0.0.{2 + i}", stop_at, counts))
                 for i in range(args.flooders)]
        for p in procs:
            p.start()
        time.sleep(1.0)  # the flood is on before we measure (a load ramp, not a sync)
        start, before = time.monotonic(), counts.value
        flooded = signed_latencies(args.signed)
        rate = (counts.value - before) / (time.monotonic() - start)
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()
        return quiet, flooded, rate
    finally:
        benchlib.stop(daemon)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--signed", type=int, default=300)
    ap.add_argument("--flooders", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="websms-flood-") as tmp:
        quiet, flooded, rate = run(args, Path(tmp))
    print(f"websms flood bench, {benchlib.machine()}")
    print(benchlib.table(["signed webhook latency", "quiet", f"{args.flooders} flooders",
                          "ratio", "goal"], [
        ["p50 ms", f"{pct(quiet, 50):.1f}", f"{pct(flooded, 50):.1f}",
         benchlib.ratio(pct(flooded, 50), pct(quiet, 50)), ""],
        ["p99 ms", f"{pct(quiet, 99):.1f}", f"{pct(flooded, 99):.1f}",
         benchlib.ratio(pct(flooded, 99), pct(quiet, 99)), "< 300"],
        ["flood answered /s", "", f"{rate:.0f}", "", "(403s)"]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(benchlib.run_main(main))
