"""packaging/apk/apkv2.py: an .apk read back by independent code (zlib,
tarfile, openssl; tests/testbed/apkread.py) holds to the v2 format."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from testbed import apkread

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "packaging/apk"))
import apkv2
import mkapk


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    keydir = tmp_path_factory.mktemp("key")
    priv = keydir / "test-6600cafe.rsa"
    subprocess.run(["openssl", "genrsa", "-out", str(priv), "2048"], check=True,
                   capture_output=True)
    return priv, mkapk.public_key(priv)


ENTRIES = [
    apkv2.Entry("etc", "dir", 0o755),
    apkv2.Entry("etc/init.d", "dir", 0o755),
    apkv2.Entry("etc/init.d/demo", "file", 0o755, b"#!/sbin/openrc-run\n"),
    apkv2.Entry("etc/init.d/demo.alias", "symlink", 0o777, target="demo"),
    apkv2.Entry("usr", "dir", 0o755),
    apkv2.Entry("usr/share", "dir", 0o755),
    apkv2.Entry("usr/share/" + "long-name/" * 12 + "f", "file", 0o644, b"x" * 1000),
]


def _info():
    return apkv2.PkgInfo(pkgname="demo", pkgver="1.0-r0", pkgdesc="a demo", url="u",
                         builddate=1700000000, packager="p", size=1019, arch="noarch",
                         origin="demo", commit="c", license="MIT", depends=["a", "b=1"],
                         traced=["python3~3.14"], install_if=["openrc", "demo=1.0-r0"])


@pytest.fixture(scope="module")
def apk(key, tmp_path_factory):
    path = tmp_path_factory.mktemp("apk") / "demo-1.0-r0.apk"
    path.write_bytes(apkv2.build(_info(), ENTRIES, {".pre-install": b"#!/bin/sh\nexit 0\n"},
                                 key[0], key[1].name, 1700000000))
    return apkread.read(path)


def test_three_gzip_streams_signature_and_control_cut(apk):
    assert len(apk.streams) == 3
    assert apkread.is_cut(apk.streams[0].tar) and apkread.is_cut(apk.streams[1].tar)
    assert apk.streams[2].tar.endswith(apkread.END_OF_ARCHIVE)
    for stream in apk.streams:  # gzip -n: no name, no time
        assert stream.raw[3] & 0x08 == 0 and stream.raw[4:8] == b"\0\0\0\0"


def test_signature_names_the_public_key_and_verifies(apk, key):
    name, signature = apk.signature()
    assert name == ".SIGN.RSA.test-6600cafe.rsa.pub" == f".SIGN.RSA.{key[1].name}"
    verdict = apkread.verify(key[1], apk.streams[1].raw, signature)
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    assert apkread.verify(key[1], apk.streams[1].raw + b"x", signature).returncode != 0


def test_control_holds_pkginfo_then_scripts_with_the_datahash(apk):
    assert [m.name for m in apk.members(1)] == [".PKGINFO", ".pre-install"]
    info = apk.pkginfo
    assert info["pkgname"] == ["demo"] and info["pkgver"] == ["1.0-r0"]
    assert info["depend"] == ["a", "b=1", "python3~3.14"]
    assert info["install_if"] == ["openrc demo=1.0-r0"]
    assert info["datahash"] == [hashlib.sha256(apk.streams[2].raw).hexdigest()]
    assert apk.members(1)[1].mode == 0o755


def test_data_members_names_modes_and_sha1_headers(apk):
    members = apk.members(2)
    assert [m.name for m in members] == [e.name for e in ENTRIES]  # long name via PAX path
    assert all(not m.name.startswith(".") for m in members)
    assert [oct(m.mode) for m in members] == [oct(e.mode) for e in ENTRIES]
    assert all(m.uname == "root" and m.uid == 0 for m in members)
    assert members[3].issym() and members[3].linkname == "demo"
    assert apkread.checksums_match(apk) == []


def test_split_refuses_a_file_no_package_takes():
    pkgs = [mkapk.Package("a", "a", ("usr/bin/*",))]
    assert mkapk.split(["usr/bin/x"], pkgs) == {"a": ["usr/bin/x"]}
    with pytest.raises(SystemExit, match="usr/lib/y: no package takes it"):
        mkapk.split(["usr/bin/x", "usr/lib/y"], pkgs)


def test_openssl_failure_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.rsa"
    bad.write_text("not a key\n")
    with pytest.raises(RuntimeError, match="could not sign"):
        apkv2.sign(bad, b"data")
