"""`make demo` (demo/product.py) end to end, as CI runs it: the base image
booted on its own LAN, the six steps of the tour, then `down`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STEPS = ("== 1. the passwords", "== 2. the units", "== 3. john and jane", "== 4. a stranger",
         "== 5. the ITSP", "== 6. jane texts", "== journalctl -u autoban", "== how to reach it")


def test_make_demo_runs_the_tour_against_the_booted_image(images, tmp_path):
    work = tmp_path / "demo"
    demo = [sys.executable, str(ROOT / "demo/product.py")]
    # the image is the session's (`make demo` builds it; --no-build reuses it)
    proc = subprocess.run([*demo, "--no-stay", "--no-build", "--workdir", str(work)],
                          capture_output=True, text=True, timeout=420, stdin=subprocess.DEVNULL)
    out = proc.stdout
    assert proc.returncode == 0, (out + proc.stderr)[-4000:]
    positions = [out.find(step) for step in STEPS]
    assert -1 not in positions and positions == sorted(positions), out[-3000:]
    assert "SIP user jane.doe: password " in out and "healthy" in out
    assert "active (running)" in out  # systemctl status, from inside
    assert re.search(r"^   (sip)?jail \(1\)", out, re.M)  # autoban show
    assert "jailed 192.0.2.66" in out  # its journal
    assert "jane's phone got a MESSAGE from +15017122661" in out
    assert "the ITSP got POST /api/sms" in out
    assert "SIP (udp/tcp 5060, tls 5061): 192.0.2.10" in out
    assert not (work / "pid1").exists()  # powered off at the end
    down = subprocess.run([*demo, "down", "--workdir", str(work)], capture_output=True,
                          text=True, timeout=120)
    assert down.returncode == 0 and not work.exists(), down.stderr
