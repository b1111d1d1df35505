"""packaging/debian/ against the tree, without building: every unit, command
and man page goes to exactly one package, the units of package pbxhost are
all handed to dh_installsystemd, and our maintainer scripts never call
systemctl. (tests/system/test_deb.py builds the packages and reads them back.)"""

from __future__ import annotations

import configparser
import email
import email.message
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEBIAN = ROOT / "packaging/debian"
UNITDIR = "usr/lib/systemd/system/"


def installed() -> dict[str, list[str]]:
    """package -> the paths its debian/PKG.install lists."""
    return {p.name.removesuffix(".install"): [
        line.strip() for line in p.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")]
        for p in DEBIAN.glob("*.install")}


def listed() -> Counter[str]:
    return Counter(path for paths in installed().values() for path in paths)


def commands() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return [line.split("=", 1)[0].strip() for line in lines]


def test_every_unit_is_listed_in_exactly_one_install_file():
    units = sorted(UNITDIR + str(p.relative_to(ROOT / "units"))
                   for p in (ROOT / "units").rglob("*") if p.is_file())
    counts = listed()
    missing = [u for u in units if counts[u] == 0]
    assert not missing, f"add {missing} to one of packaging/debian/*.install"
    assert not [u for u in units if counts[u] > 1]
    assert sorted(p for p in counts if p.startswith(UNITDIR)) == units  # none that is gone


def test_every_command_and_its_man_page_go_to_exactly_one_package():
    counts = listed()
    for name in commands():
        assert counts[f"usr/bin/{name}"] == 1, name
        assert counts[f"usr/share/man/man1/{name}.1"] == 1, name


def test_package_pbxhosts_units_are_all_handed_to_dh_installsystemd():
    rules = (DEBIAN / "rules").read_text().replace("\\\n", " ")  # continuation lines
    handed = set(re.findall(r"^\tdh_installsystemd -ppbxhost .*$", rules, re.M))
    named = {word for line in handed for word in line.split() if "." in word}
    units = {Path(p).name for p in installed()["pbxhost"]
             if p.startswith(UNITDIR) and ".service.d/" not in p}
    assert units == named, "list the unit in debian/rules' dh_installsystemd -ppbxhost lines"


def control() -> dict[str, email.message.Message]:
    """debian/control's stanzas by Package (Source for the first): deb822 is
    RFC 822 with continuation lines."""
    stanzas = [email.message_from_string(s) for s in
               (DEBIAN / "control").read_text().strip().split("\n\n")]
    return {m["Package"] or m["Source"]: m for m in stanzas}


def depends(package: str) -> list[str]:
    field = control()[package]["Depends"] or ""
    return [d.strip() for d in field.replace("\n", " ").split(",") if d.strip()]


def test_autoban_and_websms_do_not_depend_on_asterisk_and_pbxhost_does():
    for package in ("pbxhost-autoban", "pbxhost-websms", "python3-pbxhost"):
        assert not [d for d in depends(package) if d.startswith("asterisk")], package
    assert "asterisk (>= 1:22)" in depends("pbxhost")
    assert "python3-cryptography" in depends("pbxhost")  # pbxhost tls


def test_every_package_is_architecture_all():
    packages = {k: m for k, m in control().items() if m["Package"]}
    assert set(packages) == {"python3-pbxhost", "pbxhost-autoban", "pbxhost-websms", "pbxhost"}
    assert {m["Architecture"] for m in packages.values()} == {"all"}


def test_our_maintainer_scripts_never_call_systemctl():
    scripts = [p for p in DEBIAN.iterdir()
               if p.suffix in (".preinst", ".postinst", ".prerm", ".postrm")]
    assert scripts
    for script in scripts:
        assert "systemctl" not in script.read_text(), script


def test_sysusers_and_tmpfiles_files_are_the_ones_make_install_data_installs():
    for link, target in (("pbxhost.sysusers", "sysusers.d/pbxhost.conf"),
                         ("pbxhost-websms.sysusers", "sysusers.d/pbxhost-websms.conf"),
                         ("pbxhost.tmpfiles", "tmpfiles.d/pbxhost.conf")):
        assert (DEBIAN / link).resolve() == (ROOT / "packaging" / target).resolve()


def test_package_pbxhost_declares_every_user_its_seeding_gives_files_to():
    """The seeding runs in pbxhost's postinst, maybe before pbxhost-websms's:
    a user it names must come with pbxhost, or the file stays root's."""
    from pbxhost.host import seed

    declared = {line.split()[1] for line in
                (ROOT / "packaging/sysusers.d/pbxhost.conf").read_text().splitlines()
                if line.startswith("u ")}
    named = {n for owner, group, _ in (*seed.ACCESS.values(), seed.SUITE_ACCESS)
             for n in (owner, group)} - {"root"}
    assert named <= declared
