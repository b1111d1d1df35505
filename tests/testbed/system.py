"""The product installed as users get it, in a sid system booted with systemd
as PID 1 (systemd-nspawn), as one host of the test LAN.

Layers (overlayfs, each cached or per test):
- the base: a debootstrapped sid with systemd, Asterisk 22 and the Debian
  packages of our dependencies (built once, shared with every run);
- an install layer: what an install puts on top of it, made by the caller
  (`install_from_source`: pip of the package and `make install-data`, then
  the units enabled as a package's postinst would);
- a test's own upper dir: the machine's "disk". Booting again with the same
  upper dir is a reboot: /srv, the journal and the enabled units are kept.

Nothing is written to the cached layers; every mount and process is gone
after `poweroff()`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from pathlib import Path

from . import rootfs
from .netns import Host
from .wait import poll

SYSTEM_TREE = "sid-system-v2"
# python3-cffi-backend: debootstrap does not resolve python3-cryptography's
# virtual dependency on it.
SYSTEM_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "asterisk", "asterisk-modules",
    "asterisk-core-sounds-en", "python3", "python3-pip", "python3-setuptools",
    "python3-panoramisk", "python3-waitress", "python3-sdnotify", "python3-systemd",
    "python3-nftables", "python3-cryptography", "python3-cffi-backend", "nftables",
    "iproute2", "procps", "openssl", "ca-certificates")
# Units of the base that have nothing to do in a test machine without a network
# to the archive, or that wait for a terminal.
MASKED = ("apt-daily.timer", "apt-daily-upgrade.timer", "fstrim.timer",
          "dpkg-db-backup.timer", "getty@.service", "console-getty.service")
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1", "SYSTEMD_LOG_LEVEL": "warning"}


class SystemError_(RuntimeError):
    """The booted system did not come up as expected."""


def _prepare_base(tree: Path) -> None:
    for unit in MASKED:
        link = tree / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # The base's own nftables.service (flushes the ruleset at restart) is on, as
    # on a host whose admin uses it.
    wants = tree / "etc/systemd/system/sysinit.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "nftables.service").unlink(missing_ok=True)
    (wants / "nftables.service").symlink_to("/usr/lib/systemd/system/nftables.service")
    # a host that resolves its own name, as an installed one does (Asterisk
    # looks it up for every RTP session)
    (tree / "etc/hostname").write_text("pbx\n")
    (tree / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 pbx\n::1 localhost\n")
    # apt in a sid tree whose Release file is older than this machine's clock
    (tree / "etc/apt/apt.conf.d/99pbxhost-test").write_text(
        'Acquire::Check-Valid-Until "false";\n')


def ensure_base() -> Path:
    return rootfs.ensure_tree(SYSTEM_TREE, SYSTEM_PACKAGES, after=_prepare_base)


class Overlay:
    """LOWERS (top first) merged with UPPER at MERGED while mounted."""

    def __init__(self, lowers: list[Path], upper: Path) -> None:
        self.lowers, self.upper = lowers, upper
        self.work = upper.with_name(upper.name + ".work")
        self.merged = upper.with_name(upper.name + ".merged")

    def mount(self) -> Path:
        for d in (self.upper, self.work, self.merged):
            d.mkdir(parents=True, exist_ok=True)
        lower = ":".join(str(p) for p in self.lowers)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={lower},upperdir={self.upper},workdir={self.work}",
                        str(self.merged)], check=True, capture_output=True, text=True)
        return self.merged

    def umount(self) -> None:
        subprocess.run(["umount", "-R", str(self.merged)], check=False, capture_output=True)

    def __enter__(self) -> Path:
        return self.mount()

    def __exit__(self, *exc: object) -> None:
        self.umount()


@contextlib.contextmanager
def chroot_mounts(tree: Path):
    """/proc, /dev and /sys in TREE for commands run with chroot (pip, systemctl)."""
    mounted = []
    try:
        for fs, target, opts in (("proc", "proc", []), ("devtmpfs", "dev", []),
                                 ("sysfs", "sys", ["-o", "ro"])):
            subprocess.run(["mount", "-t", fs, *opts, fs, str(tree / target)], check=True)
            mounted.append(tree / target)
        yield tree
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", str(path)], check=False)


def chroot(tree: Path, *cmd: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(["chroot", str(tree), *cmd], capture_output=True, text=True,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **(env or {})})
    if proc.returncode != 0:
        raise SystemError_(f"{' '.join(cmd)} in {tree}: {proc.returncode}: "
                           f"{(proc.stdout + proc.stderr)[-2000:]}")
    return proc.stdout


def source_copy(dest: Path) -> Path:
    """The working tree's files (tracked and new, not ignored), as a package
    build would see them."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / os.fsdecode(name)
        if src.is_file():
            target = dest / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(src.read_bytes())
            target.chmod(src.stat().st_mode & 0o777)
    return dest


OUR_UNITS = ("pbxhost.target", "pbxhost-seed.service", "autoban.service",
             "websmsd.service", "minivm-send-retry.timer", "pbxhost-tls.service",
             "pbxhost-tls.timer", "pbxhost-acme.path")


def install_from_source(tree: Path) -> None:
    """The install step of a source install into TREE (mounted): the Python
    package by pip (Debian's layout: /usr/lib/python3/dist-packages, /usr/bin),
    everything else by `make install-data`, the users by systemd-sysusers at
    boot, and the units enabled as a package's postinst enables them."""
    src = source_copy(tree / "tmp/pbxhost-src")
    with chroot_mounts(tree):
        chroot(tree, "python3", "-m", "pip", "install", "-q", "--root-user-action=ignore",
               "--break-system-packages", "--no-deps", "--no-build-isolation", "--no-compile",
               "/tmp/pbxhost-src", env={"DEB_PYTHON_INSTALL_LAYOUT": "deb_system",
                                        "HOME": "/root"})
    subprocess.run(["make", "-s", "install-data", f"DESTDIR={tree}", "PREFIX=/usr"],
                   cwd=src, check=True, capture_output=True)
    subprocess.run(["rm", "-rf", str(src)], check=True)
    chroot(tree, "systemctl", "enable", *OUR_UNITS)


class BootedSystem:
    """The tree at LOWERS booted by systemd-nspawn in HOST's network namespace,
    with its own disk at WORKDIR/disk (kept across boots: `reboot()`)."""

    def __init__(self, lowers: list[Path], host: Host, workdir: Path,
                 nspawn_args: tuple[str, ...] = ()) -> None:
        self.host, self.workdir = host, workdir
        self.overlay = Overlay(lowers, workdir / "disk")
        self.nspawn_args = nspawn_args
        self.proc: subprocess.Popen | None = None
        self.pid1 = 0
        self.boots = 0

    @property
    def root(self) -> Path:
        """The machine's file system as seen from outside (while booted)."""
        return self.overlay.merged

    def prepare(self, path: str, text: str, mode: int = 0o644) -> None:
        """A file on the machine's disk before it first boots (e.g. pbxhost.env)."""
        target = self.overlay.upper / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    # -- boot and power off ---------------------------------------------------
    def boot(self, timeout: float = 90) -> BootedSystem:
        self.overlay.mount()
        self.boots += 1
        with open(self.workdir / f"console-{self.boots}.log", "wb") as log:
            self.proc = subprocess.Popen(
                ["systemd-nspawn", "-D", str(self.root), "-b", "--register=no", "--keep-unit",
                 "--console=pipe", f"--network-namespace-path=/run/netns/{self.host.ns}",
                 # a namespace of our own: nspawn grants CAP_NET_ADMIN only with
                 # --private-network, which --network-namespace-path does not imply
                 "--capability=CAP_NET_ADMIN", f"--machine=pbx{os.getpid()}",
                 *self.nspawn_args],
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=ENV)
        self.pid1 = poll(self._find_pid1, 30, "the container's systemd")
        state = poll(self._settled, timeout, "systemctl is-system-running to settle")
        if state not in ("running", "degraded"):
            raise SystemError_(f"boot ended {state}")
        return self

    def _find_pid1(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            raise SystemError_(f"systemd-nspawn exited: {self.console()[-3000:]}")
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{pid}/status").read_text()
                nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
                if nspid.split()[-1] == "1" and len(nspid.split()) > 2:
                    return pid
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo += [int(c) for c in (task / "children").read_text().split()]
        return None

    def _settled(self) -> str | None:
        state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
        return state if state in ("running", "degraded", "maintenance", "stopping") else None

    def console(self) -> str:
        return (self.workdir / f"console-{self.boots}.log").read_text(errors="replace")

    def poweroff(self, timeout: float = 60) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn: an orderly shutdown of the guest
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc, self.pid1 = None, 0
        self.overlay.umount()

    def reboot(self) -> BootedSystem:
        self.poweroff()
        return self.boot()

    # -- acting inside --------------------------------------------------------
    def cmd(self, *argv: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid1), "-a", "--", *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 60,
            **kw) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.cmd(*argv), capture_output=True, text=True,
                              timeout=timeout, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                    "LANG": "C.UTF-8"}, **kw)
        if check and proc.returncode != 0:
            raise SystemError_(f"{' '.join(argv)}: exit {proc.returncode}\n"
                               f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        return proc

    def unit(self, name: str) -> dict[str, str]:
        out = self.run("systemctl", "show", name, "-p", "ActiveState,SubState,MainPID,"
                       "NRestarts,Result,ExecMainStatus,LoadState,UnitFileState").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_active(self, *units: str, timeout: float = 30) -> None:
        for name in units:
            poll(lambda n=name: self.unit(n)["ActiveState"] == "active" or None, timeout,
                 f"{name} active")

    def failed_units(self) -> list[str]:
        out = self.run("systemctl", "list-units", "--failed", "--plain", "--no-legend",
                       check=False).stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def journal(self, *args: str) -> list[dict[str, str]]:
        out = self.run("journalctl", "--no-pager", "-o", "json", *args).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """A file on the machine's disk, as its admin would write it (root-owned;
        not under /run or /tmp, the machine's own tmpfs)."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def read(self, path: str) -> str:
        return (self.root / path.lstrip("/")).read_text()


def jailed(machine: BootedSystem, addr: str) -> bool:
    """ADDR is jailed by autoban inside MACHINE (a UDP guesser: from SIP only,
    sipjail); False while autoban's table is missing."""
    return addr in machine.run("autoban", "list", "jail", "sipjail", check=False).stdout


def passwords(machine: BootedSystem) -> dict[str, str]:
    """The SIP passwords the seeding inside MACHINE generated (its root-only file)."""
    from pbxhost.host import seed
    return seed.parse_secrets(machine.read(f"/srv/etc/{seed.SECRETS}"))


def dropped(machine: BootedSystem) -> int:
    """Packets dropped from jailed addresses inside MACHINE, as `autoban show` counts them."""
    heads = [line for line in machine.run("autoban", "show").stdout.splitlines()
             if line.startswith(("jail (", "sipjail ("))]
    return sum(int(re.search(r"(\d+) packets dropped", head)[1]) for head in heads)


def unit_entries(machine: BootedSystem, unit: str,
                 identifier: str | None = None) -> list[dict[str, str]]:
    """The journal entries UNIT's processes wrote inside MACHINE (systemd's own
    lines about the unit left out); with IDENTIFIER, only that SYSLOG_IDENTIFIER's
    (the daemon's own, not a helper's)."""
    return [e for e in machine.journal("-u", unit) if e.get("_COMM") != "systemd"
            and e.get("SYSLOG_IDENTIFIER") != "systemd"
            and (identifier is None or e.get("SYSLOG_IDENTIFIER") == identifier)]


def set_conf(conf_dir: Path, name: str, section: str, **values: str) -> None:
    """Edit the seeded file NAME in CONF_DIR (a machine's /srv/etc/asterisk, seen
    from outside) as its admin would: only these options of SECTION, written in
    place (owner and mode kept)."""
    from pbxhost.host import seed
    path = conf_dir / name
    text = path.read_text()
    for key, value in values.items():
        text = seed.set_option(text, section, key, value)
    path.write_text(text)
