"""Debian 12 (bookworm): pbxhost-autoban and pbxhost-websms, built in sid,
install with apt from Debian 12's archive (Python 3.11, libnftables 1.0.6),
their commands run, the websms user exists, and bookworm's autoband jails a
guesser of an Asterisk 22 run beside it. `pbxhost` does not install there:
bookworm has no Asterisk (README, "Install").

The tree is a debootstrapped bookworm (cached, never written: an overlay per
run); apt reaches the archive over the host's network."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pbxhost.host import seed
from testbed import rootfs, system
from testbed.asterisk import Asterisk
from testbed.configs import TRANSPORTS, manager_conf
from testbed.netns import Network
from testbed.sip import sipp_register
from testbed.wait import poll

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "packaging"))
import deb  # noqa: E402  (packaging/deb.py: make deb)

BOOKWORM_TREE = "bookworm-v1"
ENV = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
GUESSER = "192.0.2.99"


@pytest.fixture(scope="module")
def debs(tmp_path_factory) -> dict[str, Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, chroot, overlayfs)")
    dist = tmp_path_factory.mktemp("dist")
    return {p.name.split("_")[0]: p for p in deb.build(dist)}


@pytest.fixture(scope="module")
def bookworm(debs, tmp_path_factory):
    """A bookworm tree (an overlay over the cached one, with /proc, /dev and
    /sys); yields run(script) -> its output, run in the tree."""
    tree = rootfs.ensure_tree(BOOKWORM_TREE, ("python3", "ca-certificates"), suite="bookworm")
    upper = tmp_path_factory.mktemp("bookworm") / "disk"
    with system.Overlay([tree], upper) as merged, system.chroot_mounts(merged):
        (merged / "tmp/debs").mkdir(parents=True, exist_ok=True)
        for path in debs.values():
            (merged / "tmp/debs" / path.name).write_bytes(path.read_bytes())

        def run(script: str, net: bool = True) -> str:
            """SCRIPT's output (SystemError_ when it fails); net=False: in a
            network namespace of its own, so nft changes stay there."""
            cmd = ("sh", "-ec", script) if net else ("unshare", "--net", "sh", "-ec", script)
            return system.chroot(merged, *cmd, env=ENV)
        run.root = merged  # type: ignore[attr-defined]
        yield run


def test_autoban_and_websms_install_from_the_bookworm_archive(bookworm, debs):
    names = " ".join(f"/tmp/debs/{debs[p].name}"
                     for p in ("python3-pbxhost", "pbxhost-autoban", "pbxhost-websms"))
    bookworm(f"apt-get update -qq && apt-get install -y -qq {names}")
    assert 'VERSION_ID="12"' in bookworm("cat /etc/os-release")
    for command in ("autoband", "autoban", "websmsd", "websms"):
        assert bookworm(f"{command} --help").startswith(f"usage: {command}")
    assert bookworm("getent passwd websms").startswith("websms:")
    bookworm("test -x /usr/share/asterisk/agi-bin/websms")


def test_autobans_firewall_works_with_bookworms_libnftables(bookworm):
    conf = shlex.quote((ROOT / "etc/asterisk/autoban.conf").read_text())
    table = "from pbxhost.autoban.firewall import Firewall; Firewall().ensure()"  # autoband's
    out = bookworm(f"mkdir -p /etc/asterisk && printf %s {conf} > /etc/asterisk/autoban.conf\n"
                   f"python3 -c {shlex.quote(table)}\n"
                   f"autoban add jail = {GUESSER}\n"
                   "autoban list jail\n"
                   "nft list table inet autoban\n", net=False)
    assert GUESSER in out
    assert "table inet autoban" in out


def test_pbxhost_itself_needs_an_asterisk_bookworm_does_not_have(bookworm, debs):
    with pytest.raises(system.SystemError_, match="asterisk"):
        bookworm(f"apt-get install -s /tmp/debs/{debs['pbxhost'].name}")


AMI_SECRET = "autoban-test-secret"


def test_bookworms_autoband_jails_a_guesser_of_asterisk_22(bookworm, tmp_path):
    """Debian 12 has no Asterisk, so users run one from elsewhere: here the test
    bed's Asterisk 22 (sid) in the PBX host's namespace, and autoband from the
    bookworm install (chroot) in the same namespace, on its AMI."""
    conf = seed.set_option((ROOT / "etc/asterisk/autoban.conf").read_text(),
                           "asmanager", "secret", AMI_SECRET)
    bookworm(f"mkdir -p /etc/asterisk && printf %s {shlex.quote(conf)} "
             "> /etc/asterisk/autoban.conf && chmod 600 /etc/asterisk/autoban.conf")
    merged = bookworm.root  # type: ignore[attr-defined]
    with Network() as net:
        pbx_host, guesser = net.host("pbx", 10), net.host("guesser", 66)
        pbx = Asterisk(rootfs.ensure_rootfs(), pbx_host, tmp_path / "asterisk",
                       {"pjsip.conf": TRANSPORTS,
                        "manager.conf": manager_conf("autoban", AMI_SECRET, read="security")})
        pbx.start()
        log = tmp_path / "autoband.log"
        with open(log, "wb") as out:
            daemon = pbx_host.popen("chroot", str(merged), "autoband", stdout=out,
                                    stderr=subprocess.STDOUT,
                                    env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                         "SYSLOG_LEVEL": "7"})
        try:
            poll(lambda: "AMI connected" in log.read_text() or None, 30,
                 "bookworm's autoband on Asterisk's AMI")
            sipp_register(guesser, pbx_host.v4, "jane.doe", "not-her-password", tmp_path,
                          expect=401, calls=12, rate=20, timeout=20)
            poll(lambda: guesser.v4 in pbx_host.run(
                "chroot", str(merged), "autoban", "list", "jail").stdout or None,
                30, f"{guesser.v4} jailed by bookworm's autoband")
        finally:
            daemon.terminate()
            daemon.wait(10)
            pbx.stop()
