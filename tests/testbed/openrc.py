"""A Debian sid system with OpenRC (the cached sid-openrc tree) that runs the
.apk packages' files: their data tars are unpacked into an overlay over the
tree, and openrc-run runs their init scripts with supervise-daemon, inside
namespaces of their own (mount, network, PID), so nothing outlives the test
and nftables changes stay inside.

What stands in for Alpine, and why:
- Debian's python3.14 does not search Alpine's /usr/lib/python3.14/site-packages:
  a .pth file in Debian's dist-packages adds it;
- the users come from Debian's useradd, not from the .pre-install scripts
  (busybox adduser options);
- /dev/log is a socket the test reads, or that of Debian's busybox syslogd
  (Alpine's default syslog is busybox's too)."""

from __future__ import annotations

import contextlib
import io
import re
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from testbed import apkread
from testbed.wait import poll

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# Runs as PID 1 of the new PID namespace, in the new mount and network ones.
HOLDER = r"""
set -e
M=$1 T=$2 U=$3 W=$4 LOG=$5 READY=$6
mount -t overlay overlay -o "lowerdir=$T,upperdir=$U,workdir=$W" "$M"
mount -t proc proc "$M/proc"
mount -t tmpfs tmpfs "$M/run"
mount -t tmpfs tmpfs "$M/tmp"
mount -t tmpfs -o mode=0755 tmpfs "$M/dev"
for d in null zero random urandom; do touch "$M/dev/$d"; mount --bind "/dev/$d" "$M/dev/$d"; done
if [ -n "$LOG" ]; then touch "$M/dev/log"; mount --bind "$LOG" "$M/dev/log"; fi
mkdir -p "$M/run/openrc"; touch "$M/run/openrc/softlevel"
ip link set lo up
touch "$READY"
# PID 1 reaps what is orphaned (openrc-run waits for its children's exits)
exec python3 -c "$REAPER"
"""


REAPER = """
import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
"""


class OpenrcRoot:
    """The overlay root, its namespaces and its /dev/log receiver."""

    def __init__(self, tree: Path, workdir: Path, netns: str | None = None,
                 receiver: bool = True) -> None:
        """NETNS: a test bed host's network namespace to live in (else one of its
        own). RECEIVER: /dev/log is the test's socket (else a syslogd run inside
        makes its own)."""
        self.tree, self.work, self.netns, self.receiver = tree, workdir, netns, receiver
        self.upper, self.merged = workdir / "upper", workdir / "merged"
        self.holder: subprocess.Popen[bytes] | None = None
        self.syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.syslog_path = workdir / "log"
        self.lines: list[str] = []

    def install(self, apks: Iterable[Path]) -> None:
        """Unpack the packages' data (stream 3) into the overlay's upper dir."""
        for path in apks:
            data = apkread.read(path).streams[2].tar
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tar.extractall(self.upper)  # our own packages; owners by name, modes kept
        pth = self.upper / "usr/lib/python3/dist-packages/alpine-site-packages.pth"
        pth.parent.mkdir(parents=True, exist_ok=True)
        pth.write_text("/usr/lib/python3.14/site-packages\n")

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        target = self.upper / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def __enter__(self) -> OpenrcRoot:
        for d in ("upper", "merged", "overlay-work"):
            (self.work / d).mkdir(parents=True, exist_ok=True)
        if self.receiver:
            self.syslog.bind(str(self.syslog_path))
            self.syslog_path.chmod(0o666)  # as /dev/log: websms and asterisk log too
            threading.Thread(target=self._drain, daemon=True).start()
        ready = self.work / "ready"
        where = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.holder = subprocess.Popen(
            [*where, "unshare", "--mount", "--propagation", "private",
             *([] if self.netns else ["--net"]), "--pid", "--fork",
             "--kill-child", "sh", "-c", HOLDER, "holder", str(self.merged), str(self.tree),
             str(self.upper), str(self.work / "overlay-work"),
             str(self.syslog_path) if self.receiver else "",
             str(ready)], stderr=subprocess.PIPE, env={"PATH": PATH, "REAPER": REAPER})
        poll(lambda: ready.exists() or self.holder.poll() is not None, 30, "the OpenRC root")
        if self.holder.poll() is not None:
            raise RuntimeError(f"OpenRC root not set up: {self.holder.stderr.read().decode()}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.holder and self.holder.poll() is None:
            self.holder.send_signal(signal.SIGKILL)  # --kill-child: PID 1 and all below go
            self.holder.wait(timeout=30)
        if self.receiver:
            self.syslog.shutdown(socket.SHUT_RDWR)
        self.syslog.close()

    def _init_pid(self) -> int:
        assert self.holder is not None
        children = Path(f"/proc/{self.holder.pid}/task/{self.holder.pid}/children").read_text()
        return int(children.split()[0])

    def run(self, *argv: str, check: bool = True, timeout: float = 60,
            ) -> subprocess.CompletedProcess[str]:
        """ARGV in the root, as root, in its namespaces."""
        # output to a file, not a pipe: a daemon started here keeps a pipe open
        with tempfile.TemporaryFile("w+") as out:
            try:
                proc = subprocess.run(["nsenter", "-t", str(self._init_pid()), "-m", "-n",
                                       "-p", "chroot", str(self.merged), *argv],
                                      stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                      timeout=timeout, check=False,
                                      env={"PATH": PATH, "LANG": "C.UTF-8"})
            except subprocess.TimeoutExpired:
                out.seek(0)
                raise AssertionError(f"{' '.join(argv)}: no exit within {timeout}s:\n"
                                     f"{out.read()}") from None
            out.seek(0)
            proc.stdout, proc.stderr = out.read(), ""
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}{proc.stderr}")
        return proc

    def service(self, name: str, action: str, check: bool = True,
                ) -> subprocess.CompletedProcess[str]:
        return self.run(f"/etc/init.d/{name}", action, check=check)

    def deptree(self) -> dict[str, dict[str, list[str]]]:
        """OpenRC's dependency cache: {service: {"iuse": [...], "iafter": [...], ...}}
        (openrc-run's iuse/iafter commands list only services of the runlevel)."""
        text = self.run("cat", "/run/openrc/deptree").stdout
        names: dict[str, str] = {}
        tree: dict[str, dict[str, list[str]]] = {}
        for line in text.splitlines():
            m = re.fullmatch(r"depinfo_(\d+)_(\w+?)(?:_\d+)?='(.*)'", line)
            if not m:
                continue
            index, kind, value = m.groups()
            if kind == "service":
                names[index] = value
                tree[value] = {}
            else:
                tree[names[index]].setdefault(kind, []).append(value)
        return tree

    def pids(self, pattern: str) -> list[int]:
        out = self.run("pgrep", "-f", pattern, check=False).stdout
        return [int(p) for p in out.split()]

    def _drain(self) -> None:
        # read all the time: a full datagram queue blocks every logger inside
        with contextlib.suppress(OSError):
            while True:
                self.lines.append(self.syslog.recv(65536).decode(errors="replace")
                                  .rstrip("\0"))

    def syslog_lines(self) -> list[str]:
        """What reached /dev/log so far (datagrams, without the final NUL)."""
        return list(self.lines)

    def upper_file(self, path: str) -> Path:
        return self.upper / path.lstrip("/")
