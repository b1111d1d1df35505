"""The Alpine packages: `make apk` (packaging/apk/mkapk.py) builds them, code
of its own reads them back (tests/testbed/apkread.py: zlib, tarfile,
openssl), and their OpenRC services run under openrc-run with
supervise-daemon in a Debian sid tree with Debian's openrc
(tests/testbed/openrc.py says what stands in for Alpine there)."""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed import apkread, rootfs
from testbed.configs import TRANSPORTS, manager_conf, pjsip_user
from testbed.openrc import OpenrcRoot
from testbed.sip import sipp_register
from testbed.wait import poll

ROOT = Path(__file__).resolve().parents[2]
VER = "0.1.0-r0"
PY = "python3.14"
SITE = f"usr/lib/{PY}/site-packages"

# What each package must declare: written out here, not taken from mkapk.
DEPENDS = {
    "pbxhost": [f"py3-pbxhost={VER}", "asterisk", "asterisk-srtp", "asterisk-sounds-en"],
    "pbxhost-autoban": [f"py3-pbxhost={VER}", "nftables", "py3-nftables", "iproute2"],
    "pbxhost-websms": [f"py3-pbxhost={VER}", "py3-waitress", "py3-cryptography", "/bin/sh"],
    "py3-pbxhost": ["py3-panoramisk", "python3~3.14"],
    "py3-pbxhost-pyc": ["python3~3.14"],
    "pbxhost-openrc": [], "pbxhost-autoban-openrc": [], "pbxhost-websms-openrc": [],
    "pbxhost-doc": [],
}
INSTALL_IF = {
    "py3-pbxhost-pyc": f"py3-pbxhost={VER} pyc",
    "pbxhost-openrc": f"openrc pbxhost={VER}",
    "pbxhost-autoban-openrc": f"openrc pbxhost-autoban={VER}",
    "pbxhost-websms-openrc": f"openrc pbxhost-websms={VER}",
    "pbxhost-doc": f"docs pbxhost={VER}",
}
OPENRC_FILES = {f"etc/{kind}/{name}" for kind in ("init.d", "conf.d")
                for name in ("autoban", "websmsd", "pbxhost-seed", "minivm-send-retry",
                             "asterisk.pbxhost")} | {"usr/libexec/pbxhost/minivm-send-retry"}


@pytest.fixture(scope="module")
def openrc_tree() -> Path:
    if os.geteuid() != 0:
        pytest.skip("the OpenRC tree needs root (debootstrap, mounts, namespaces)")
    try:
        return rootfs.ensure_openrc_tree()
    except (rootfs.RootfsError, OSError) as exc:
        pytest.exit(f"sid OpenRC tree unusable: {exc}", returncode=3)


def make_apk(tree: Path, out: Path, cache: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "packaging/apk/mkapk.py"), "--out", str(out),
                    "--pyc-root", str(tree)], check=True, capture_output=True,
                   env={**os.environ, "XDG_CACHE_HOME": str(cache)})


@pytest.fixture(scope="module")
def dist(openrc_tree, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("apk")
    make_apk(openrc_tree, tmp / "dist", tmp / "cache")
    return tmp / "dist"


def apks(dist: Path) -> dict[str, Path]:
    return {p.name.removesuffix(f"-{VER}.apk"): p for p in sorted(dist.glob("*.apk"))}


def pubkey(dist: Path) -> Path:
    (key,) = dist.glob("*.rsa.pub")
    return key


# ---------------------------------------------------------------- the packages

def test_the_key_is_made_once_outside_the_tree_and_shipped(dist, openrc_tree):
    cache = dist.parent / "cache"
    (made,) = (cache / "pbxhost/apk-key").glob("*.rsa")
    assert pubkey(dist).name == made.name + ".pub"
    assert not list(ROOT.glob("*.rsa")) and ROOT not in made.parents
    again = dist.parent / "again"
    make_apk(openrc_tree, again, cache)  # the same key the next time
    assert [p.name for p in again.glob("*.rsa.pub")] == [pubkey(dist).name]


def test_all_packages_are_built(dist):
    assert set(apks(dist)) == set(DEPENDS)


@pytest.mark.parametrize("name", sorted(DEPENDS))
def test_package_reads_back_as_apk_v2(dist, name):
    apk = apkread.read(apks(dist)[name])
    assert len(apk.streams) == 3
    assert apkread.is_cut(apk.streams[0].tar) and apkread.is_cut(apk.streams[1].tar)
    assert apk.streams[2].tar.endswith(apkread.END_OF_ARCHIVE)

    sig_name, signature = apk.signature()
    assert sig_name == f".SIGN.RSA.{pubkey(dist).name}"
    verdict = apkread.verify(pubkey(dist), apk.streams[1].raw, signature)
    assert verdict.returncode == 0 and "Verified OK" in verdict.stdout, verdict.stderr

    info = apk.pkginfo
    assert info["pkgname"] == [name] and info["pkgver"] == [VER]
    assert info["arch"] == ["noarch"] and info["origin"] == ["pbxhost"]
    assert info["license"] == ["MIT"]
    assert info.get("depend", []) == DEPENDS[name]
    assert info.get("install_if", [""])[0] == INSTALL_IF.get(name, "")
    assert info["datahash"] == [hashlib.sha256(apk.streams[2].raw).hexdigest()]
    files = [m for m in apk.members(2) if m.isfile()]
    assert int(info["size"][0]) == sum(m.size for m in files)

    assert apkread.checksums_match(apk) == []
    assert all(not m.name.startswith((".", "/")) and m.uname for m in apk.members(2))
    control = [m.name for m in apk.members(1)]
    assert control == ([".PKGINFO", ".pre-install"] if name == "pbxhost-websms"
                       else [".PKGINFO"])


def test_files_are_install_data_and_the_python_package_with_alpines_paths(dist, tmp_path):
    got: dict[str, str] = {}
    for name, path in apks(dist).items():
        for member in apkread.read(path).members(2):
            if not member.isdir():
                assert member.name not in got, f"{member.name} in {name} and {got[member.name]}"
                got[member.name] = name

    subprocess.run(["make", "-s", "-C", str(ROOT), "install-data", f"DESTDIR={tmp_path}",
                    "PREFIX=/usr"], check=True, capture_output=True)
    want = set()
    for path in tmp_path.rglob("*"):
        rel = path.relative_to(tmp_path).as_posix()
        if path.is_dir() or rel.startswith(("usr/lib/systemd/", "usr/lib/sysusers.d/",
                                            "usr/lib/tmpfiles.d/")):
            continue
        rel = rel.replace("usr/share/asterisk/agi-bin/", "var/lib/asterisk/agi-bin/")
        want.add(rel + ".gz" if rel.startswith("usr/share/man/") else rel)
    want |= OPENRC_FILES
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    want |= {f"usr/bin/{line.split('=')[0].strip()}"
             for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines()}
    for module in (ROOT / "pbxhost").rglob("*.py"):
        rel = module.relative_to(ROOT).as_posix()
        want.add(f"{SITE}/{rel}")
        cache = f"{SITE}/{rel.rsplit('/', 1)[0]}/__pycache__/{module.stem}.cpython-314"
        want |= {f"{cache}.pyc", f"{cache}.opt-1.pyc"}
    distinfo = {n for n in got if n.startswith(f"{SITE}/pbxhost-0.1.0.dist-info/")}
    assert {n.rsplit("/", 1)[1] for n in distinfo} >= {
        "METADATA", "WHEEL", "RECORD", "INSTALLER", "entry_points.txt"}
    assert set(got) - distinfo == want


def test_console_scripts_run_alpines_python3(dist):
    apk = apkread.read(apks(dist)["pbxhost-autoban"])
    script = apk.read(2, "usr/bin/autoband").decode()
    assert script.startswith("#!/usr/bin/python3\n")
    assert "from pbxhost.autoban.daemon import main" in script


# ---------------------------------------------------------------- OpenRC

# Stands in for the asterisk package's script and conf.d: only what matters
# here, that OpenRC reads conf.d/asterisk, then conf.d/asterisk.pbxhost.
ASTERISK_STUB = """#!/sbin/openrc-run
start() {
	echo "asterisk would run with: $ASTERISK_OPTS as $ASTERISK_USER"
}
"""
SERVICES = {  # service: pgrep pattern of its supervised process
    "autoban": "^/usr/bin/python3 /usr/bin/autoband",
    "websmsd": "^/usr/bin/python3 /usr/bin/websmsd",
    "minivm-send-retry": "^/bin/sh /usr/libexec/pbxhost/minivm-send-retry",
}


@pytest.fixture(scope="module")
def system(dist, openrc_tree, tmp_path_factory):
    """The packages (all but -doc) in the OpenRC tree, users made, seeded."""
    root = OpenrcRoot(openrc_tree, tmp_path_factory.mktemp("openrc"))
    root.install(p for n, p in apks(dist).items() if n != "pbxhost-doc")
    root.write("/etc/init.d/asterisk", ASTERISK_STUB, 0o755)
    root.write("/etc/conf.d/asterisk", 'ASTERISK_OPTS=""\nASTERISK_USER="asterisk"\n')
    with root:
        for argv in (("groupadd", "-r", "asterisk"),
                     ("useradd", "-r", "-g", "asterisk", "-s", "/usr/sbin/nologin", "asterisk"),
                     ("groupadd", "-r", "websms"),
                     ("useradd", "-r", "-g", "websms", "-s", "/usr/sbin/nologin", "websms"),
                     ("usermod", "-aG", "websms", "asterisk")):
            root.run(*argv)
        yield root


def test_seed_is_a_oneshot_that_lays_out_srv(system):
    out = system.service("pbxhost-seed", "start").stdout
    assert "seeded" in out
    assert "started" in system.service("pbxhost-seed", "status").stdout
    modes = system.run("stat", "-c", "%n %a %U:%G", "/srv/etc/asterisk",
                       "/srv/etc/asterisk/websms.conf", "/srv/etc/asterisk/autoban.conf",
                       "/srv/var/spool/voicemail-mail", "/srv/var/lib/asterisk").stdout
    assert modes.splitlines() == [
        "/srv/etc/asterisk 755 root:root", "/srv/etc/asterisk/websms.conf 640 websms:root",
        "/srv/etc/asterisk/autoban.conf 600 root:root",
        "/srv/var/spool/voicemail-mail 700 asterisk:asterisk",
        "/srv/var/lib/asterisk 750 asterisk:asterisk"]
    assert system.service("pbxhost-seed", "start").returncode == 0  # already started: no-op


def test_asterisk_instance_reads_its_own_confd_after_the_packages(system):
    out = system.service("asterisk.pbxhost", "start").stdout
    assert "with: -C /srv/etc/asterisk/asterisk.conf as asterisk:asterisk" in out
    system.service("asterisk.pbxhost", "stop")


def test_dependencies(system):
    described = system.service("autoban", "describe").stdout
    assert "Error" not in described  # e.g. a name both real and virtual
    tree = system.deptree()
    for name in ("autoban", "websmsd"):
        assert {"asterisk", "asterisk.pbxhost"} <= set(tree[name].get("iuse", []))
        assert {"asterisk", "asterisk.pbxhost", "pbxhost-seed"} <= set(tree[name]["iafter"])
        assert not {"asterisk", "asterisk.pbxhost"} & set(tree[name].get("ineed", []))
    assert "nftables" in tree["autoban"]["iafter"]
    assert "pbxhost-seed" in tree["minivm-send-retry"]["iafter"]
    assert {"pbxhost-seed"} <= set(tree["asterisk.pbxhost"]["iafter"])
    assert {"asterisk", "asterisk.pbxhost", "autoban", "websmsd"} <= set(
        tree["pbxhost-seed"]["ibefore"])


@pytest.mark.parametrize("name", list(SERVICES))
def test_service_starts_respawns_after_a_kill_and_stops(system, name):
    pattern = SERVICES[name]
    system.service(name, "start")
    first = poll(lambda: system.pids(pattern), 20, f"{name}'s process")
    assert "status: started" in system.service(name, "status").stdout

    system.run("kill", "-KILL", str(first[0]))
    again = poll(lambda: [p for p in system.pids(pattern) if p != first[0]], 30,
                 f"{name} respawned by supervise-daemon")
    assert again and "status: started" in system.service(name, "status").stdout

    system.service(name, "stop")
    poll(lambda: not system.pids(pattern), 20, f"{name} gone after stop")
    status = system.service(name, "status", check=False)
    assert status.returncode == 3 and "stopped" in status.stdout


def test_logs_reach_syslog_with_priorities(system):
    system.service("autoban", "start")
    system.service("websmsd", "start")
    try:
        poll(lambda: any("autoban[" in line and "autoban started" in line
                         for line in system.syslog_lines()), 20, "autoban's start in syslog")
        poll(lambda: any("websmsd[" in line and "websmsd started" in line
                         for line in system.syslog_lines()), 20, "websmsd's start in syslog")
    finally:
        system.service("autoban", "stop")
        system.service("websmsd", "stop")
    started = [line for line in system.syslog_lines() if "autoban started" in line]
    assert started[0].startswith("<29>autoban[")  # daemon.notice
    # websmsd runs as user websms and still reaches /dev/log
    owner = system.run("stat", "-c", "%U", "/srv/var/spool/websms").stdout.strip()
    assert owner == "websms"



def test_busybox_syslogd_files_the_services_lines_with_their_priority(dist, openrc_tree,
                                                                       tmp_path):
    """Alpine's default syslog is busybox's syslogd, which reads the <PRI> of
    what arrives on /dev/log (not the <N> prefixes of the stderr fallback)."""
    root = OpenrcRoot(openrc_tree, tmp_path, receiver=False)
    root.install(p for n, p in apks(dist).items()
                 if n in ("py3-pbxhost", "py3-pbxhost-pyc", "pbxhost-autoban",
                          "pbxhost-autoban-openrc"))
    root.write("/srv/etc/asterisk/autoban.conf",
               "[asmanager]\nsecret = none\n\n[autoban]\n"
               "statefile = /var/lib/autoban/state.json\n", 0o600)
    messages = root.upper_file("/var/log/messages")
    with root:
        root.run("busybox", "syslogd", "-O", "/var/log/messages")
        poll(lambda: root.run("test", "-S", "/dev/log", check=False).returncode == 0, 10,
             "busybox syslogd's /dev/log")
        root.service("autoban", "start")
        try:
            line = poll(lambda: messages.exists() and next(
                (x for x in messages.read_text().splitlines() if "autoban started" in x), None),
                30, "autoban's start in /var/log/messages")
        finally:
            root.service("autoban", "stop", check=False)
    assert " daemon.notice autoban[" in line and "<" not in line


AMI_SECRET = "apk-autoban-secret"


def test_autoban_service_jails_a_guesser_of_the_test_beds_asterisk(
        dist, openrc_tree, net, start_asterisk, tmp_path):
    """The packaged autoban, started by its OpenRC script in the PBX host's
    network namespace, against the test bed's Asterisk 22."""
    pbx_host, attacker = net.host("pbx", 10), net.host("attacker", 66)
    start_asterisk(pbx_host, {"pjsip.conf": TRANSPORTS + pjsip_user("jane", "Jane-pass-5521"),
                              "manager.conf": manager_conf("autoban", AMI_SECRET,
                                                           read="security")})
    root = OpenrcRoot(openrc_tree, tmp_path / "openrc", netns=pbx_host.ns)
    root.install(p for n, p in apks(dist).items()
                 if n in ("py3-pbxhost", "py3-pbxhost-pyc", "pbxhost-autoban",
                          "pbxhost-autoban-openrc"))
    root.write("/srv/etc/asterisk/autoban.conf",
               f"[asmanager]\nserver = 127.0.0.1\nport = 5038\nusername = autoban\n"
               f"secret = {AMI_SECRET}\n\n[autoban]\nmaxcount = 3\nwatchtime = 20m\n"
               "jailtime = 20m\nstatefile = /var/lib/autoban/state.json\n", 0o600)
    root.write("/srv/etc/pbxhost.env", "SYSLOG_LEVEL=7\n")  # read by the init script
    with root:
        root.service("autoban", "start")
        try:
            poll(lambda: any("AMI connected" in line for line in root.syslog_lines()), 30,
                 "autoban's AMI login, in syslog")
            sipp_register(attacker, pbx_host.v4, "jane", "wrong", tmp_path, expect=401,
                          calls=10, rate=20, local_port=5070, timeout=8)
            jailed = poll(lambda: [line for line in root.syslog_lines()
                                   if f"jailed {attacker.v4}" in line], 30,
                          "the jailing, in syslog")
            assert jailed[0].startswith("<29>autoban[")  # daemon.notice
            # UDP evidence: jailed from SIP (sipjail), the source being unproven
            listed = root.run("autoban", "--json", "list", "jail", "sipjail").stdout
            assert attacker.v4 in {e["addr"] for e in json.loads(listed)}
        finally:
            root.service("autoban", "stop", check=False)
