"""`pip install .` into a venv, then `pbxhost seed --dest DIR`: the defaults are
found where pip put them (<venv>/share/pbxhost/asterisk), not in the source
tree; and `make install-data` lays out what the packages ship."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from testbed.system import source_copy

ROOT = Path(__file__).parents[2]


def test_pip_install_into_a_venv_then_seed(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    build = source_copy(tmp_path / "src")  # the working tree, as a package build sees it
    pip = subprocess.run([venv / "bin/pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          str(build)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    defaults = venv / "share/pbxhost/asterisk"
    assert (defaults / "asterisk.conf").exists()
    dest = tmp_path / "etc" / "asterisk"
    seeded = subprocess.run([venv / "bin/pbxhost", "seed", "--dest", str(dest)], cwd=tmp_path,
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert seeded.returncode == 0, seeded.stderr
    assert {p.name for p in dest.glob("*.conf")} == {p.name for p in defaults.glob("*.conf")}
    assert (tmp_path / "etc" / "pbxhost-secrets").exists()


def test_install_data_lays_out_what_the_packages_ship(tmp_path):
    subprocess.run(["make", "-s", "install-data", f"DESTDIR={tmp_path}", "PREFIX=/usr"],
                   cwd=ROOT, check=True, capture_output=True)
    usr = tmp_path / "usr"
    units = {p.name for p in (usr / "lib/systemd/system").iterdir()}
    assert units >= {"autoban.service", "websmsd.service", "pbxhost-seed.service",
                     "pbxhost.target", "minivm-send-retry.timer", "asterisk.service.d",
                     "pbxhost-tls.service", "pbxhost-acme.path"}
    assert (usr / "lib/systemd/system/asterisk.service.d/pbxhost.conf").exists()
    assert {p.name for p in (usr / "share/pbxhost/asterisk").iterdir()} == \
        {p.name for p in (ROOT / "etc/asterisk").iterdir()}
    assert (usr / "share/asterisk/agi-bin/websms").stat().st_mode & 0o111
    assert {p.name for p in (usr / "lib/sysusers.d").iterdir()} == {"pbxhost.conf",
                                                                 "pbxhost-websms.conf"}
    assert (usr / "lib/tmpfiles.d/pbxhost.conf").exists()
    pages = {p.name for p in (usr / "share/man/man1").iterdir()}
    assert pages == {"autoban.1", "autoband.1", "websms.1", "websmsd.1", "minivm-send.1",
                     "pbxhost.1"}
    man = subprocess.run(["man", "-l", "-Tutf8", str(usr / "share/man/man1/autoban.1")],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin",
                                                              "MANWIDTH": "80"})
    assert "autoban" in man.stdout and "--json" in man.stdout
