"""What the benchmarks share: the test bed on sys.path, code run inside a
network namespace, clean stops of processes, and plain-text tables.

Importing this module puts tests/ (the `testbed` package) and the repository
root (`pbxhost`) on sys.path, so a benchmark runs as `python bench/X.py`."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "bench"  # how messages start (demo/run.py uses this module too)
for _path in (ROOT / "tests", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))



def require(commands: Iterable[str], hint: str) -> None:
    """Exit with one clear line unless we are root and COMMANDS are installed."""
    if os.geteuid() != 0:
        sys.exit(f"{NAME}: needs root (network namespaces, mounts, nftables)")
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        sys.exit(f"{NAME}: missing {', '.join(missing)}; {hint}")


def stop(proc: subprocess.Popen | None, timeout: float = 10) -> int | None:
    """SIGTERM, then SIGKILL after TIMEOUT; the exit status (None if never started)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def sigterm_raises() -> None:
    """Make SIGTERM unwind like Ctrl-C, so every `finally` cleans up."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)


def run_main(main: Callable[[], int]) -> int:
    """MAIN's status; an interrupt (Ctrl-C, SIGTERM), once every `finally`
    has cleaned up, is one line and status 130."""
    try:
        return main()
    except KeyboardInterrupt as exc:
        print(f"{NAME}: interrupted ({str(exc) or 'Ctrl-C'}); namespaces and processes cleaned up",
              file=sys.stderr)
        return 130


def vm_kib(pid: int, field: str) -> int | None:
    """A Vm* field (VmHWM, VmRSS) of /proc/PID/status in KiB; None when gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of PID so far."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "n/a"
    if b == 0:
        return "0" if a == 0 else "inf"
    return f"{a / b:.3g}"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain-text table, columns left-aligned."""
    cells = [[str(h) for h in headers], *([("-" if c is None else str(c)) for c in r]
                                         for r in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> str:
    """One line about where the numbers come from."""
    model = next((ln.split(":", 1)[1].strip() for ln in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), "unknown cpu")
    return f"{os.cpu_count()} cores ({model}), kernel {os.uname().release}"
