"""`make deb` from the working tree: four lintian-clean packages, each with its
files and dependencies (dpkg-deb reads them back), every unit in one package,
nothing under /etc; `make repo`: signed, and apt installs from it.
(tests/unit/test_debian_packaging.py checks packaging/debian/ without building.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "dist"
VERSION = "0.1.0"
PACKAGES = ("python3-pbxhost", "pbxhost-autoban", "pbxhost-websms", "pbxhost")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="make deb needs root (debootstrap, chroot)"),
]


@pytest.fixture(scope="module")
def debs() -> dict[str, Path]:
    for stale in DIST.glob("*.deb"):  # what is read back must be this build's
        stale.unlink()
    proc = subprocess.run(["make", "-C", str(ROOT), "deb"], capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = {p.name.split("_")[0]: p for p in DIST.glob("*.deb")}
    assert set(found) == set(PACKAGES)
    return found


def files(deb: Path) -> set[str]:
    out = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True,
                         capture_output=True).stdout
    names = subprocess.run(["tar", "-t"], input=out, check=True, capture_output=True).stdout
    return {n.decode().removeprefix(".").rstrip("/") for n in names.splitlines()} - {""}


def field(deb: Path, name: str) -> list[str]:
    value = subprocess.run(["dpkg-deb", "-f", str(deb), name], check=True,
                           capture_output=True, text=True).stdout.strip()
    return [part.strip() for part in value.split(",")] if value else []


def test_lintian_reports_no_error_and_no_warning(debs):
    report = (DIST / "lintian.txt").read_text().splitlines()
    assert not [line for line in report if line.startswith(("E:", "W:"))], report


def test_every_package_is_architecture_all_of_this_version(debs):
    for deb in debs.values():
        assert field(deb, "Architecture") == ["all"]
        assert field(deb, "Version") == [VERSION]


def test_python3_pbxhost_holds_the_modules_and_their_dependencies(debs):
    deb = debs["python3-pbxhost"]
    got = files(deb)
    assert "/usr/lib/python3/dist-packages/pbxhost/autoban/daemon.py" in got
    assert "/usr/lib/python3/dist-packages/pbxhost/host/seed.py" in got
    assert not [f for f in got if f.startswith(("/usr/bin/", "/usr/share/pbxhost"))]
    depends = field(deb, "Depends")
    for dep in ("python3-panoramisk", "python3-waitress", "python3-sdnotify", "python3-systemd"):
        assert dep in depends


def test_pbxhost_autoban_stands_alone_without_asterisk(debs):
    deb = debs["pbxhost-autoban"]
    got = files(deb)
    for path in ("/usr/bin/autoband", "/usr/bin/autoban", "/usr/lib/systemd/system/autoban.service",
                 "/usr/share/man/man1/autoband.1.gz", "/usr/share/man/man1/autoban.1.gz"):
        assert path in got
    depends = field(deb, "Depends")
    assert {"nftables", "python3-nftables", f"python3-pbxhost (= {VERSION})"} <= set(depends)
    assert not [d for d in depends if d.startswith("asterisk")]


def test_pbxhost_websms_has_its_user_unit_and_agi_script(debs):
    deb = debs["pbxhost-websms"]
    got = files(deb)
    for path in ("/usr/bin/websmsd", "/usr/bin/websms", "/usr/lib/systemd/system/websmsd.service",
                 "/usr/lib/sysusers.d/pbxhost-websms.conf", "/usr/share/asterisk/agi-bin/websms",
                 "/usr/share/man/man1/websmsd.1.gz"):
        assert path in got
    assert {"python3-cryptography", f"python3-pbxhost (= {VERSION})"} <= set(field(deb, "Depends"))


def test_pbxhost_has_the_defaults_and_host_set_up(debs):
    deb = debs["pbxhost"]
    got = files(deb)
    defaults = {f"/usr/share/pbxhost/asterisk/{p.name}" for p in (ROOT / "etc/asterisk").iterdir()}
    assert defaults <= got
    for path in ("/usr/bin/pbxhost", "/usr/bin/minivm-send",
                 "/usr/lib/systemd/system/asterisk.service.d/pbxhost.conf",
                 "/usr/lib/systemd/system/pbxhost-seed.service",
                 "/usr/lib/systemd/system/pbxhost.target",
                 "/usr/lib/systemd/system/minivm-send-retry.timer",
                 "/usr/lib/sysusers.d/pbxhost.conf", "/usr/lib/tmpfiles.d/pbxhost.conf",
                 "/usr/share/doc/pbxhost/NEWS.Debian.gz",
                 "/usr/lib/systemd/system/pbxhost-tls.service",
                 "/usr/lib/systemd/system/pbxhost-tls.timer",
                 "/usr/lib/systemd/system/pbxhost-acme.path",
                 "/usr/lib/systemd/system/pbxhost-acme-posthook.service"):
        assert path in got
    assert {"asterisk (>= 1:22)", "python3-cryptography"} <= set(field(deb, "Depends"))
    assert set(field(deb, "Recommends")) == {"pbxhost-autoban", "pbxhost-websms"}
    assert field(deb, "Provides") == ["asterisk-config-custom"]


def test_every_unit_is_shipped_by_exactly_one_package(debs):
    units = {str(p.relative_to(ROOT / "units")) for p in (ROOT / "units").rglob("*")
             if p.is_file()}
    shipped = [f.removeprefix("/usr/lib/systemd/system/") for deb in debs.values()
               for f in files(deb) if f.startswith("/usr/lib/systemd/system/")
               and not f.endswith(".service.d")]
    assert sorted(shipped) == sorted(units)


def test_nothing_is_installed_under_etc(debs):
    for name, deb in debs.items():
        assert not [f for f in files(deb) if f.startswith("/etc")], name


# ---------------------------------------------------------------- make repo

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
APT_SIMULATE = """
mkdir -p /tmp/lists/partial /tmp/cache/archives/partial /tmp/parts
echo "deb [signed-by=/build/pbxhost-archive-keyring.gpg] file:/build stable main" \
    > /tmp/parts/pbxhost.list
O="-o Dir::State::Lists=/tmp/lists -o Dir::Cache=/tmp/cache -o Dir::Etc::SourceParts=/tmp/parts"
apt-get $O update
apt-get $O -s install pbxhost pbxhost-autoban pbxhost-websms
"""


@pytest.fixture(scope="module")
def repo(debs) -> Path:
    proc = subprocess.run(["make", "-C", str(ROOT), "repo"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return DIST / "repo"


def test_repo_is_signed_by_the_exported_key(repo):
    release = repo / "dists/stable"
    verify = subprocess.run(
        ["gpgv", "--keyring", str(repo / "pbxhost-archive-keyring.gpg"),
         str(release / "Release.gpg"), str(release / "Release")], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    packages = (release / "main/binary-all/Packages").read_text()
    assert {f"Package: {name}" for name in PACKAGES} <= set(packages.splitlines())


def test_apt_resolves_the_three_from_the_repo_and_the_debian_archive(repo):
    """As a user's apt would: the signed repository beside Debian's (sid, the build
    tree's sources); a simulated install, the build tree is not changed."""
    sys.path.insert(0, str(ROOT / "packaging"))
    import deb

    proc = deb.in_tree(deb.build_tree(), repo, APT_SIMULATE, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    inst = {line.split()[1] for line in out.splitlines() if line.startswith("Inst ")}
    assert {*PACKAGES, "asterisk", "nftables"} <= inst  # the tree has python3-nftables
    # pbxhost provides asterisk-config-custom: Debian's stock /etc/asterisk stays out
    assert "asterisk-config" not in inst


def test_apt_installs_the_three_into_a_sid_tree_without_asterisk(repo, tmp_path):
    """A real install, as an image build does it (no systemd running: nothing
    starts). asterisk depends on asterisk-config-custom, which pbxhost provides,
    and pbxhost depends on asterisk: dpkg may configure either first, and both
    must end configured with Asterisk's user as Asterisk's package makes it."""
    sys.path.insert(0, str(ROOT / "packaging"))
    import deb

    from testbed import system

    with system.Overlay([deb.build_tree()], tmp_path / "disk") as merged, \
            system.chroot_mounts(merged):
        shutil.copytree(repo, merged / "opt/pbxhost-repo")
        (merged / "etc/apt/sources.list.d/pbxhost.list").write_text(
            "deb [signed-by=/opt/pbxhost-repo/pbxhost-archive-keyring.gpg] "
            "file:/opt/pbxhost-repo stable main\n")

        def run(script: str) -> str:
            return system.chroot(merged, "sh", "-ec", script, env=APT_ENV)

        run("apt-get update -qq && apt-get install -y -qq pbxhost pbxhost-autoban pbxhost-websms")
        status = run("dpkg-query -W -f '${Package} ${db:Status-Status}\\n'")
        installed = dict(line.split() for line in status.splitlines())
        for name in (*PACKAGES, "asterisk"):
            assert installed.get(name) == "installed", name
        assert "asterisk-config" not in installed
        user = run("getent passwd asterisk").split(":")
        assert user[5] == "/var/lib/asterisk" and int(user[2]) < 1000  # a system user
        assert "websms" in run("id -nG asterisk").split()
        assert run("stat -c %U /srv/var/lib/asterisk").strip() == "asterisk"  # tmpfiles ran
        assert (merged / "etc/systemd/system/multi-user.target.wants/autoban.service").is_symlink()
        # removing pbxhost gives Asterisk Debian's stock configuration back (README)
        removal = run("apt-get -s remove pbxhost")
        assert "\nInst asterisk-config " in removal and "\nRemv asterisk " not in removal
