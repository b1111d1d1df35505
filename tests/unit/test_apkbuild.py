"""packaging/apk/APKBUILD and `make apk` (mkapk.packages()) describe the same
packages: names, dependencies, install_if, install scripts, and which files
each subpackage takes. The APKBUILD is sourced by a shell with abuild's
split helpers stubbed to print what they would do."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
from pathlib import Path

import pytest

APK_DIR = Path(__file__).resolve().parents[2] / "packaging/apk"
sys.path.insert(0, str(APK_DIR))
import mkapk  # noqa: E402

# abuild's defaults as abuild.in has them: default_pyc, default_doc,
# default_openrc set depends/install_if and move these paths.
SHELL = r"""
set -e
. ./APKBUILD
amove() { for p; do echo "amove $p"; done; }
default_pyc() { depends=; install_if="${subpkgname%-pyc}=$pkgver-r$pkgrel pyc";
                amove "usr/lib/python*/*/__pycache__"; }
default_doc() { depends=; install_if="docs $pkgname=$pkgver-r$pkgrel";
                amove usr/share/doc usr/share/man; }
default_openrc() { depends=; install_if="openrc ${subpkgname%-openrc}=$pkgver-r$pkgrel";
                   amove etc/conf.d etc/init.d; }
chown() { :; }  # the files are not there: what is moved matters here
pyc() { default_pyc; }
doc() { default_doc; }
echo "package $pkgname"; echo "depends $depends"; echo "install $install"
for sub in $subpackages; do
    subpkgname=${sub%%:*}; func=$(echo "$sub" | cut -s -d: -f2)
    [ -n "$func" ] || func=${subpkgname##*-}
    ( depends=; install_if=
      $func >"$MOVED"
      echo "package $subpkgname"; echo "depends $depends"; echo "install_if $install_if"
      cat "$MOVED" )
done
"""


def apkbuild(tmp: Path) -> dict[str, dict[str, list[str]]]:
    out = subprocess.run(["bash", "-c", SHELL], cwd=APK_DIR, capture_output=True, text=True,
                         check=True, env={"MOVED": str(tmp / "moved"),
                                          "PATH": "/usr/bin:/bin"}).stdout
    pkgs: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if key == "package":
            current = pkgs.setdefault(value, {"depends": [], "install_if": [], "amove": [],
                                              "install": []})
        else:
            current[key] += value.split()
    return pkgs


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    made = {pkg.name: pkg for pkg in mkapk.packages()}
    return apkbuild(tmp_path_factory.mktemp("apkbuild")), made


def test_same_packages(both):
    built, made = both
    assert set(built) == set(made)


def test_same_depends_and_install_if(both):
    built, made = both
    for name, pkg in made.items():
        assert sorted(built[name]["depends"]) == sorted(pkg.depends), name
        assert sorted(built[name]["install_if"]) == sorted(pkg.install_if), name


def test_same_install_scripts(both):
    built, made = both
    scripts = built["pbxhost"]["install"]
    assert scripts == ["pbxhost-websms.pre-install"]
    assert made["pbxhost-websms"].pre_install == (APK_DIR / scripts[0]).read_text()
    assert [n for n, p in made.items() if p.pre_install] == ["pbxhost-websms"]


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """`make apk`'s staged files, with a bytecode file beside every module
    (no Python 3.14 here to compile them)."""
    tmp = tmp_path_factory.mktemp("stage")
    mkapk.stage(tmp / "root", tmp)
    paths = mkapk.staged_paths(tmp / "root")
    pycs = [f"{p.rsplit('/', 1)[0]}/__pycache__/{p.rsplit('/', 1)[1][:-3]}.cpython-314.pyc"
            for p in paths if p.startswith(mkapk.SITE) and p.endswith(".py")]
    return sorted(paths + pycs)


def test_abuilds_split_of_the_staged_files_is_mkapks(both, staged):
    """abuild runs the split functions in the order of $subpackages, each
    moving what amove names out of $pkgdir; $pkgname keeps the rest."""
    built, made = both
    left = list(staged)
    by_abuild: dict[str, list[str]] = {}
    for name, pkg in built.items():
        if name == "pbxhost":
            continue
        moved = [f for f in left if any(fnmatch.fnmatchcase(f, a) or
                                         fnmatch.fnmatchcase(f, a + "/*") for a in pkg["amove"])]
        by_abuild[name] = moved
        left = [f for f in left if f not in moved]
    by_abuild["pbxhost"] = left
    by_mkapk = mkapk.split(staged, list(made.values()))
    for name in made:
        assert by_abuild[name] == by_mkapk[name], name


def test_version_and_python(both):
    text = (APK_DIR / "APKBUILD").read_text()
    assert f"pkgver={mkapk.version()}\n" in text and f"pkgrel={mkapk.PKGREL}\n" in text


def test_py3_panoramisk_apkbuild_follows_the_python_policy():
    """Alpine lacks py3-panoramisk: its APKBUILD is shipped, gpep517 + installer
    with a -pyc subpackage, at the version pbxhost is tested with (Debian's 1.4)."""
    out = subprocess.run(
        ["bash", "-c", '. ./APKBUILD; echo "$pkgname|$pkgver|$subpackages|$makedepends|$depends";'
                       ' type build package | grep -E "gpep517|installer"'],
        cwd=APK_DIR / "py3-panoramisk", capture_output=True, text=True, check=True).stdout
    fields, *body = out.splitlines()
    name, ver, subs, makedepends, depends = fields.split("|")
    assert (name, ver, subs, depends) == ("py3-panoramisk", "1.4", "py3-panoramisk-pyc",
                                          "python3")
    assert "py3-gpep517" in makedepends.split()
    assert any("gpep517 build-wheel" in line for line in body)
    assert any("python3 -m installer" in line for line in body)
    assert "py3-panoramisk" in {pkg.name: pkg for pkg in mkapk.packages()}["py3-pbxhost"].depends
