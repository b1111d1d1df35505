"""The .debs as users get them: from the signed repository of `make repo`, by
apt, in a sid system booted with systemd (Debian's stock Asterisk already
running on /etc/asterisk). One machine goes through install, upgrade to a
second version built here (a changed default and a changed unit), remove and
purge, in that order.

The test LAN has no route to the Debian archive: apt sees only our repository,
and the dependencies are in the base tree (tests/system/test_deb.py resolves
them from the archive)."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from pbxhost.host import seed
from testbed import system
from testbed.sip import sipp_register
from testbed.wait import poll

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "packaging"))
import deb  # noqa: E402  (packaging/deb.py: make deb, make repo)

PACKAGES = ("pbxhost", "pbxhost-autoban", "pbxhost-websms")
OURS = ("pbxhost-seed.service", "asterisk.service", "autoban.service", "websmsd.service")
REPO_IN_MACHINE = "/opt/pbxhost-repo"
SOURCES = f"""Types: deb
URIs: file:{REPO_IN_MACHINE}
Suites: stable
Components: main
Signed-By: {REPO_IN_MACHINE}/pbxhost-archive-keyring.gpg
"""
# systemd's "unit started" journal message
STARTED = "39f53479d3a045ac8e11786248231fbf"
NEXT = "0.1.1"
DEFAULT_CHANGE = f"; {NEXT}: a changed default\n"
UNIT_CHANGE = f"Environment=PBXHOST_TEST_RELEASE={NEXT}"
USER_EDIT = "; the admin's own line\n"
GUESSER = "192.0.2.99"
OLD_GUESSER = "192.0.2.98"  # jailed by an older release (a version 1 state file)
QUEUED_SMS = "queued before the upgrade"


def next_version(src: Path) -> None:
    """The build copy as the next release: a changelog entry, a changed default
    file and a changed unit."""
    changelog = src / "debian/changelog"
    changelog.write_text(
        f"pbxhost ({NEXT}) unstable; urgency=medium\n\n"
        "  * Test release: a changed default, a changed unit.\n\n"
        " -- pbxhost developers <pbxhost@example.org>  Thu, 26 Nov 2026 17:00:00 +0000\n\n"
        + changelog.read_text())
    rtp = src / "etc/asterisk/rtp.conf"
    rtp.write_text(rtp.read_text() + DEFAULT_CHANGE)
    unit = src / "units/websmsd.service"
    unit.write_text(unit.read_text().replace("[Service]\n", f"[Service]\n{UNIT_CHANGE}\n", 1))


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("repos")
    out = {}
    for version, edit in (("0.1.0", None), (NEXT, next_version)):
        dist = work / version
        deb.build(dist, edit)
        out[version] = deb.make_repo(dist)
    return out


def publish(pbx: system.BootedSystem, repo: Path) -> None:
    target = pbx.root / REPO_IN_MACHINE.lstrip("/")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(repo, target)
    pbx.write("/etc/apt/sources.list.d/pbxhost.sources", SOURCES)
    pbx.write("/etc/apt/apt.conf.d/99test-offline", 'Dir::Etc::SourceList "/dev/null";\n')
    pbx.run("apt-get", "update", timeout=120)


def apt(pbx: system.BootedSystem, *args: str) -> str:
    return pbx.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", *args,
                   timeout=600).stdout


def version(pbx: system.BootedSystem, package: str) -> str:
    return pbx.run("dpkg-query", "-W", "-f", "${db:Status-Status} ${Version}", package,
                   check=False).stdout.strip()


def started_since(pbx: system.BootedSystem, unit: str, since: str) -> int:
    return sum(1 for e in pbx.journal("-u", unit, "--since", f"@{since}")
               if e.get("MESSAGE_ID") == STARTED)


def asterisk_cmdline(pbx: system.BootedSystem) -> str:
    pid = pbx.unit("asterisk.service")["MainPID"]
    return pbx.run("cat", f"/proc/{pid}/cmdline").stdout.replace("\0", " ")


def healthy(pbx: system.BootedSystem, timeout: float = 60) -> None:
    """`pbxhost status` exits 0 within TIMEOUT (else its last report in the error)."""
    last: list[str] = []

    def check() -> bool | None:
        proc = pbx.run("pbxhost", "status", check=False)
        last[:] = [proc.stdout + proc.stderr]
        return proc.returncode == 0 or None
    try:
        poll(check, timeout, "pbxhost status exit 0")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}:\n{last[0] if last else ''}") from None


@pytest.fixture(scope="module")
def pbx(base, repos, module_net, module_boot, tmp_path_factory):
    machine = system.BootedSystem([base], module_net.host("pbx", 10),
                                  tmp_path_factory.mktemp("machine"))
    machine.net = module_net  # type: ignore[attr-defined]  (its LAN, for the phone)
    return module_boot(machine)


def test_install_from_the_repository_gives_a_running_seeded_pbx(pbx, repos, start_phone):
    assert "asterisk" in asterisk_cmdline(pbx)  # Debian's own, on /etc/asterisk
    pbx.write("/srv/etc/pbxhost.env", f"HOSTNAME={pbx.host.v4}\n")
    publish(pbx, repos["0.1.0"])
    apt(pbx, "install", *PACKAGES)
    for package in (*PACKAGES, "python3-pbxhost"):
        assert version(pbx, package) == "installed 0.1.0"
    # pbxhost provides asterisk-config-custom: the stock /etc/asterisk goes
    assert not version(pbx, "asterisk-config").startswith("installed")
    pbx.wait_active(*OURS, timeout=60)
    assert "-C /srv/etc/asterisk/asterisk.conf" in asterisk_cmdline(pbx)  # restarted on ours
    assert (pbx.root / "srv/etc/asterisk/.pbxhost-seeded").exists()
    pbx.wait_active("pbxhost-tls.timer", "pbxhost-acme.path", "minivm-send-retry.timer")
    assert (pbx.root / "srv/etc/ssl/asterisk/cert.pem").exists()  # pbxhost-tls.service ran
    assert "websms" in pbx.run("id", "-nG", "asterisk").stdout.split()
    healthy(pbx)
    assert pbx.failed_units() == []
    phone_host = pbx.net.host("jane", 31)
    phone = start_phone(phone_host, "jane.doe", system.passwords(pbx)["jane.doe"], pbx.host.v4)
    phone.wait_registered()


def test_upgrade_keeps_users_files_jails_and_queued_sms_and_restarts_each_daemon_once(pbx, repos):
    local = pbx.root / "srv/etc/asterisk/extensions_local.conf"
    local.write_text(local.read_text() + USER_EDIT)
    edited = local.read_bytes()
    pbx.run("autoban", "add", "jail", "=", GUESSER)
    # the ITSP (websms.conf's default url_host) is down: the SMS is queued
    pbx.run("runuser", "-u", "websms", "--", "websms", "+12025550183", "+12025550160",
            QUEUED_SMS, check=False)
    assert QUEUED_SMS in pbx.run("websms", "queue", "list").stdout
    asterisk_pid = pbx.unit("asterisk.service")["MainPID"]
    since = pbx.run("date", "+%s").stdout.strip()

    publish(pbx, repos[NEXT])
    apt(pbx, "upgrade")
    for package in (*PACKAGES, "python3-pbxhost"):
        assert version(pbx, package) == f"installed {NEXT}"
    pbx.wait_active(*OURS, timeout=60)

    assert local.read_bytes() == edited
    diff = pbx.run("pbxhost", "seed", "--diff", check=False)
    assert diff.returncode == 1, diff.stderr
    assert f"\n+{DEFAULT_CHANGE}" in diff.stdout       # the new default
    assert f"\n-{USER_EDIT}" in diff.stdout            # the admin's own line
    env = pbx.run("systemctl", "show", "websmsd.service", "-p", "Environment").stdout
    assert f"PBXHOST_TEST_RELEASE={NEXT}" in env       # the changed unit is in effect
    for unit in ("autoban.service", "websmsd.service"):
        assert started_since(pbx, unit, since) == 1, unit
    assert pbx.unit("asterisk.service")["MainPID"] == asterisk_pid  # calls in progress kept
    assert GUESSER in pbx.run("autoban", "list", "jail").stdout
    assert QUEUED_SMS in pbx.run("websms", "queue", "list").stdout
    # the new autoband reads a state file of the previous format (version 1:
    # absolute expiry), as an older release left it, once its table is gone
    pbx.run("systemctl", "stop", "autoban")
    now = int(pbx.run("date", "+%s").stdout)
    pbx.write("/srv/var/lib/autoban/state.json", json.dumps(
        {"version": 1, "saved_at": now, "elements": [
            {"set": "jail", "addr": OLD_GUESSER, "comment": None, "expires_at": now + 600}]}),
        0o600)
    pbx.run("nft", "delete", "table", "inet", "autoban")
    pbx.run("systemctl", "start", "autoban")
    jails = json.loads(pbx.run("autoban", "--json", "list", "jail").stdout)
    left = next(e["expires"] for e in jails if e["addr"] == OLD_GUESSER)
    assert 0 < left <= 600  # with its remaining time


def test_remove_stops_our_units_and_purge_leaves_only_srv(pbx):
    apt(pbx, "remove", *PACKAGES)
    for unit in ("autoban.service", "websmsd.service", "pbxhost-seed.service"):
        assert pbx.unit(unit)["ActiveState"] in ("inactive", "failed"), unit
    assert pbx.run("nft", "list", "table", "inet", "autoban", check=False).returncode != 0
    assert (pbx.root / "srv/etc/asterisk/.pbxhost-seeded").exists()

    apt(pbx, "purge", *PACKAGES, "python3-pbxhost")
    for package in (*PACKAGES, "python3-pbxhost"):
        assert not version(pbx, package).startswith("installed"), package
    assert not (pbx.root / "var/lib/autoban").exists()
    wants = pbx.root / "etc/systemd/system/multi-user.target.wants"
    assert not [p.name for p in wants.iterdir()
                if p.name in ("autoban.service", "websmsd.service", "pbxhost.target")]
    # the user's data stays: configuration, secrets, state
    for path in ("srv/etc/asterisk/pjsip_endpoint.conf", "srv/etc/pbxhost-secrets",
                 "srv/var/lib/asterisk"):
        assert (pbx.root / path).exists(), path


# ---------------------------------------------------------------- autoban alone

AMI_SECRET = "autoban-test-secret"
STOCK_PJSIP = """[transport-udp]
type = transport
protocol = udp
bind = 0.0.0.0:5060
"""
AUTOBAN_AMI_USER = f"""[autoban]
secret = {AMI_SECRET}
read = security
write =
"""


def test_autoban_alone_on_debians_stock_asterisk_jails_a_guesser(base, repos, net, boot,
                                                                 tmp_path):
    """Stock asterisk-config in /etc/asterisk, an AMI user for autoban
    (manager.d/, which the stock manager.conf includes) and a SIP transport to
    attack; no /srv: autoban finds /etc/asterisk/autoban.conf."""
    autoban_conf = seed.set_option((ROOT / "etc/asterisk/autoban.conf").read_text(),
                                   "asmanager", "secret", AMI_SECRET)
    pbx = boot(system.BootedSystem([base], net.host("pbx", 10), tmp_path / "machine"))
    assert version(pbx, "asterisk-config").startswith("installed")
    pbx.write("/etc/asterisk/pjsip.conf", STOCK_PJSIP)
    pbx.write("/etc/asterisk/manager.d/autoban.conf", AUTOBAN_AMI_USER)
    pbx.write("/etc/asterisk/autoban.conf", autoban_conf, 0o600)
    pbx.run("systemctl", "restart", "asterisk.service")
    publish(pbx, repos["0.1.0"])
    apt(pbx, "install", "pbxhost-autoban")
    assert not version(pbx, "pbxhost").startswith("installed")
    assert not (pbx.root / "srv/etc/asterisk").exists()
    pbx.wait_active("asterisk.service", "autoban.service", timeout=60)
    guesser = net.host("guesser", 66)
    poll(lambda: "autoban" in pbx.run("asterisk", "-rx", "manager show connected",
                                      check=False).stdout or None, 30, "autoban logged in to AMI")
    sipp_register(guesser, pbx.host.v4, "jane.doe", "not-her-password", tmp_path,
                  expect=401, calls=12, rate=20, timeout=20)
    poll(lambda: system.jailed(pbx, guesser.v4) or None, 30,
         f"{guesser.v4} jailed")


# ---------------------------------------------------------------- back up and restore

def readme_commands(section: str) -> list[list[str]]:
    """The shell commands of each ```sh block of README's SECTION, comments cut."""
    text = (ROOT / "README.md").read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    return [[line.split("#", 1)[0].strip() for line in block.splitlines()
             if line.split("#", 1)[0].strip()] for block in blocks]


def test_backup_restores_onto_a_new_host_as_the_readme_says(base, repos, net, boot, tmp_path,
                                                           start_phone):
    """README "Back up and restore", its commands read from it and run one by
    one: the new host runs on the old host's configuration and passwords,
    owners and modes kept."""
    old = boot(system.BootedSystem([base], net.host("old", 10), tmp_path / "old"))
    new = boot(system.BootedSystem([base], net.host("new", 11), tmp_path / "new"))
    for machine in (old, new):
        publish(machine, repos["0.1.0"])
        apt(machine, "install", *PACKAGES)
        machine.wait_active(*OURS, timeout=60)
    old_passwords = system.passwords(old)
    assert system.passwords(new) != old_passwords  # each seeded its own
    backup_commands, restore_commands = readme_commands("Back up and restore")[:2]
    assert restore_commands[0].startswith("apt install")  # done above, from the repository
    for command in backup_commands:
        old.run("sh", "-ec", f"cd /root && {command}")
    backup = (old.root / "root/pbxhost-backup.tar.gz").read_bytes()
    (new.root / "root/pbxhost-backup.tar.gz").write_bytes(backup)
    for command in restore_commands[1:]:
        new.run("sh", "-ec", f"cd /root && {command}")
    new.wait_active(*OURS, timeout=60)
    assert system.passwords(new) == old_passwords
    listing = new.run("stat", "-c", "%n %U %G %a", "/srv/etc/asterisk/websms.conf",
                      "/srv/etc/asterisk/pjsip_endpoint.conf", "/srv/var/lib/asterisk").stdout
    owner, group, mode = seed.ACCESS["websms.conf"]
    suite_owner, suite_group, suite_mode = seed.SUITE_ACCESS  # as the seeding made them
    assert listing.splitlines() == [
        f"/srv/etc/asterisk/websms.conf {owner} {group} {mode:o}",
        f"/srv/etc/asterisk/pjsip_endpoint.conf {suite_owner} {suite_group} {suite_mode:o}",
        "/srv/var/lib/asterisk asterisk asterisk 750"]
    healthy(new)
    start_phone(net.host("jane", 31), "jane.doe", old_passwords["jane.doe"],
                new.host.v4).wait_registered()
