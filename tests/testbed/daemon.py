"""A pbxhost daemon run (and re-run) in a test host's namespace, each run's
output kept in a log file of its own for the test to wait on."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from .netns import Host
from .wait import poll


class Daemon:
    def __init__(self, host: Host, module: str, config: Path, workdir: Path, name: str) -> None:
        self.host, self.module, self.config = host, module, config
        self.workdir, self.name = workdir, name
        self.proc: subprocess.Popen | None = None
        self.logs: list[Path] = []

    def start(self, env: dict[str, str]) -> None:
        logfile = self.workdir / f"{self.name}-{len(self.logs)}.log"
        self.logs.append(logfile)
        with open(logfile, "wb") as out:
            self.proc = self.host.popen(sys.executable, "-m", self.module, "-c",
                                        str(self.config), stdout=out,
                                        stderr=subprocess.STDOUT, env=env)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(10)
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def text(self, current: bool = False) -> str:
        """The output of every run, or of the current run only."""
        paths = self.logs[-1:] if current else self.logs
        return "".join(p.read_text(errors="replace") for p in paths if p.exists())

    def wait_log(self, text: str, timeout: float = 15, count: int = 1,
                 current: bool = False) -> str:
        """The COUNT-th output line containing TEXT (of the current run only if CURRENT)."""
        def find() -> str | None:
            lines = [ln for ln in self.text(current).splitlines() if text in ln]
            return lines[count - 1] if len(lines) >= count else None
        try:
            return poll(find, timeout, f"log line {text!r}")
        except TimeoutError:
            raise TimeoutError(
                f"no {text!r} in {self.name} log:\n{self.text()[-4000:]}") from None
