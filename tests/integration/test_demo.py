"""`make demo` stays true: the demo runs its six steps to the end and
leaves no namespace behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_demo_runs_every_step_and_cleans_up(tmp_path):
    proc = subprocess.Popen([sys.executable, str(ROOT / "demo/run.py"), "--no-stay",
                             "--workdir", str(tmp_path / "demo")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=280)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    for step in range(1, 7):
        assert f"\n== {step}. " in out, out
    assert "SIP user jane.doe: password" in out and "jailed 192.0.2.66" in out
    assert "her phone got 'Lunch at 12?' from +12025550160" in out
    assert "Your parcel arrives today 📦" in out
    assert "'Body': \"Thanks! I'll be home.\"" in out
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"pbxt-{proc.pid}-" not in namespaces  # the test bed names them by pid
