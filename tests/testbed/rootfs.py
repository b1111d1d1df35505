"""A cached Debian sid root file system with Asterisk 22, built by debootstrap
when missing and shared read-only by every test (each Asterisk bind-mounts its
own /srv over it in a private mount namespace)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

# Bump when the package list changes so old caches are rebuilt, not trusted.
TREE_NAME = "sid-asterisk-v2"
# python3 and python3-panoramisk: what `websms agi` (the plain AGI script) imports.
PACKAGES = ("asterisk", "asterisk-modules", "asterisk-core-sounds-en", "python3",
            "python3-panoramisk")
# The OpenRC tree (Alpine's init system on Debian: openrc-run, supervise-daemon)
# with what the .apk's Python package imports. Debian's openrc conflicts with
# systemd-sysv, which minbase does not install. python3 is 3.14 in sid, as in
# Alpine 3.24, so the .apk's bytecode is compiled here too. autoban runs `ip -j`;
# busybox's syslogd is Alpine's default syslog.
OPENRC_TREE_NAME = "sid-openrc-v4"
# python3-cryptography (pbxhost tls; `pbxhost` imports it) needs python3-cffi-backend
# named: debootstrap does not resolve its virtual dependency.
OPENRC_PACKAGES = ("openrc", "python3", "python3-panoramisk", "python3-nftables", "nftables",
                   "python3-cryptography", "python3-cffi-backend",
                   "python3-waitress", "procps", "iproute2", "busybox")
DEFAULT_CACHE = "/var/cache/pbxhost-testbed"
# Mount points the test bed binds over; they must exist in the tree.
MOUNT_POINTS = ("srv/etc", "srv/var", "proc", "dev", "tmp", "run", "opt/pbxhost")


class RootfsError(RuntimeError):
    """The sid tree cannot be built or does not hold a usable Asterisk."""


def cache_dir() -> Path:
    return Path(os.environ.get("PBXHOST_TESTBED_CACHE", DEFAULT_CACHE))


def ensure_rootfs() -> Path:
    """Return the Asterisk tree, building it first when it is missing."""
    return ensure_tree(TREE_NAME, PACKAGES, MOUNT_POINTS)


def ensure_openrc_tree() -> Path:
    """Return the cached OpenRC tree, building it first when it is missing."""
    tree = ensure_tree(OPENRC_TREE_NAME, OPENRC_PACKAGES, MOUNT_POINTS)
    for needed in ("sbin/openrc-run", "sbin/supervise-daemon", "usr/bin/python3.14"):
        if not (tree / needed).exists():
            raise RootfsError(f"{tree}/{needed} is missing")
    return tree


def ensure_tree(name: str, packages: tuple[str, ...], mount_points: tuple[str, ...] = (),
                after: Callable[[Path], None] | None = None, suite: str = "sid") -> Path:
    """The cached tree NAME of SUITE (sid unless told) with PACKAGES, built once
    (AFTER runs on it before it is marked complete), shared by every test run."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    tree = cache / name
    with open(cache / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder; the others wait and reuse
        if not (tree / ".pbxhost-complete").exists():
            _build(tree, packages, mount_points, after, suite)
    if "asterisk" in packages:
        check(tree)
    return tree


def _build(tree: Path, packages: tuple[str, ...], mount_points: tuple[str, ...],
           after: Callable[[Path], None] | None, suite: str = "sid") -> None:
    if shutil.which("debootstrap") is None:
        raise RootfsError("debootstrap is not installed")
    tmp = tree.with_name(tree.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(tree, ignore_errors=True)
    cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite, str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        raise RootfsError(f"debootstrap failed ({proc.returncode}): {' | '.join(tail)}")
    for mount_point in mount_points:
        (tmp / mount_point).mkdir(parents=True, exist_ok=True)
    if after is not None:
        after(tmp)
    (tmp / ".pbxhost-complete").touch()
    tmp.rename(tree)  # atomic: a half-built tree is never mistaken for a cached one


def versions(tree: Path) -> dict[str, str]:
    """Installed versions of the packages the test bed relies on."""
    proc = subprocess.run(
        ["chroot", str(tree), "dpkg-query", "-W", "-f", "${Package} ${Version}\n", *PACKAGES],
        capture_output=True, text=True,
    )
    found = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    return {name: found.get(name, "not installed") for name in PACKAGES}


def check(tree: Path) -> None:
    version = versions(tree)["asterisk"]
    # Debian versions look like 1:22.10.1+dfsg-1: the major follows the epoch.
    major = version.split(":", 1)[-1].split(".", 1)[0]
    if not major.isdigit() or int(major) < 22:
        raise RootfsError(f"asterisk in {tree} is {version!r}, need 22 or later")
    if not (tree / "usr/sbin/asterisk").exists():
        raise RootfsError(f"{tree}/usr/sbin/asterisk is missing")
