"""Network namespaces as separate hosts on one test LAN.

Every host gets its own namespace with `eth0` (a veth whose peer sits on a
bridge in a LAN namespace), an IPv4 address in 192.0.2.0/24 and an IPv6
address in 2001:db8:1::/64 (documentation ranges; nothing is routed out: no
namespace has a default route). Deleting a namespace removes its links and its
nftables tables, so teardown leaves nothing behind."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

PREFIX = "pbxt"
NET4 = "192.0.2"
NET6 = "2001:db8:1"
CLONE_NEWNET = 0x40000000
_counter = itertools.count(1)
T = TypeVar("T")


def sh(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """FN's result, run in a short-lived thread that entered network namespace NS.
    setns changes only that thread; sockets FN opens (netlink ones included)
    stay in NS whichever thread uses them later."""
    result: list[T] = []
    failure: list[BaseException] = []

    def enter_and_run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{ns}") as fd:
                if libc.setns(fd.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {ns}")
            # Never let a failed setns point a test at the host's own network.
            if os.stat("/proc/thread-self/ns/net").st_ino != os.stat(f"/run/netns/{ns}").st_ino:
                raise RuntimeError(f"setns {ns} did not take effect")
            result.append(fn())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=enter_and_run)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


class Host:
    """One test host: a network namespace with eth0 and lo."""

    def __init__(self, ns: str, role: str, v4: str, v6: str) -> None:
        self.ns, self.role, self.v4, self.v6 = ns, role, v4, v6

    def __repr__(self) -> str:
        return f"Host({self.role} {self.v4} {self.v6})"

    def cmd(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(self, *argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
        return sh(*self.cmd(*argv), check=check, **kw)

    def popen(self, *argv: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(*argv), **kw)

    def socket(self, family: int = socket.AF_INET,
               type: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket that lives in this host's namespace (usable from the test)."""
        return in_netns(self.ns, lambda: socket.socket(family, type))

    def pids(self) -> list[int]:
        out = sh("ip", "netns", "pids", self.ns, check=False).stdout
        return [int(p) for p in out.split()]


class Network:
    """A LAN (a bridge in its own namespace) and the hosts attached to it."""

    def __init__(self) -> None:
        self.token = f"{PREFIX}-{os.getpid()}-{next(_counter)}"
        self.lan = f"{self.token}-lan"
        self.hosts: list[Host] = []
        self._namespaces = [self.lan]
        sh("ip", "netns", "add", self.lan)
        sh("ip", "-n", self.lan, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
        sh("ip", "-n", self.lan, "link", "set", "br0", "up")

    def host(self, role: str, last_octet: int) -> Host:
        """Add host ROLE with addresses 192.0.2.N and 2001:db8:1::N."""
        ns = f"{self.token}-{role}"
        host = Host(ns, role, f"{NET4}.{last_octet}", f"{NET6}::{last_octet:x}")
        sh("ip", "netns", "add", ns)
        self._namespaces.append(ns)
        port = f"v{len(self.hosts)}"
        sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth",
           "peer", "name", port, "netns", self.lan)
        sh("ip", "-n", self.lan, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "addr", "add", f"{host.v4}/24", "dev", "eth0")
        # nodad: the address is usable at once instead of after duplicate detection.
        sh("ip", "-n", ns, "addr", "add", f"{host.v6}/64", "dev", "eth0", "nodad")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        self.hosts.append(host)
        return host

    def close(self) -> None:
        for ns in reversed(self._namespaces):
            _kill_namespace(ns)
        self._namespaces.clear()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kill_namespace(ns: str) -> None:
    out = sh("ip", "netns", "pids", ns, check=False).stdout
    for pid in out.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    sh("ip", "netns", "del", ns, check=False)


def sweep_stale() -> list[str]:
    """Remove test namespaces left by test runs whose process is gone."""
    removed = []
    for path in Path("/run/netns").glob(f"{PREFIX}-*"):
        pid = path.name.split("-")[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _kill_namespace(path.name)
            removed.append(path.name)
    return removed
