"""Debian 12 (bookworm): pbxhost-autoban and pbxhost-websms, built in sid,
install with apt from Debian 12's archive (Python 3.11, libnftables 1.0.6),
their commands run, the websms user exists, and autoban's firewall works with
bookworm's libnftables. `pbxhost` does not install there: bookworm has no
Asterisk (README, "Install").

The tree is a debootstrapped bookworm (cached, never written: an overlay per
run); apt reaches the archive over the host's network."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest

from testbed import rootfs, system

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
