"""The product installed from source (pip, then `make install-data`, then the
units enabled) in a sid system booted with systemd as PID 1, one host of the
test LAN. Tests act from outside as users and attackers would: phones and a
guesser in other namespaces, a fake ITSP posting to the webhook, an SMTP
server on a test host, and an admin's commands run inside.

Hosts: the PBX .10, john's phone .30, jane's phone .31, the mail server .25,
the ITSP .50, a guesser .66."""

from __future__ import annotations

import re
import time

import pytest

from pbxhost import conf
from pbxhost.host import seed
from testbed.itsp import FakeItsp, WebhookClient
from testbed.media import tone, write_ulaw
from testbed.sip import sipp_register
from testbed.sipp import Sipp, call_xml
from testbed.smtp import SmtpServer
from testbed.system import BootedSystem, dropped, jailed, passwords, set_conf, unit_entries
from testbed.wait import poll

JOHN, JANE = "+12025550160", "+12025550183"
WEBHOOK_PORT = 8088
SECRETS = "/srv/etc/pbxhost-secrets"
CONF = "/srv/etc/asterisk"
OURS = ("pbxhost-seed.service", "asterisk.service", "autoban.service", "websmsd.service")


def guess(pbx_host, attacker, workdir, attempts: int = 12):
    """A guesser: REGISTERs for jane.doe with a wrong password."""
    return sipp_register(attacker, pbx_host.v4, "jane.doe", "not-her-password", workdir,
                         expect=401, calls=attempts, rate=20, timeout=20)


class Site:
    """The booted PBX and the hosts around it, set up as an admin would: the
    settings in pbxhost.env before the first boot, the ITSP's address as
    websms's remt_addr and the mail server in minivm.conf after it."""

    def __init__(self, net, boot, layers, tmp_path, env: str) -> None:
        self.tmp, self.net = tmp_path, net
        self.pbx_host = net.host("pbx", 10)
        self.john_host, self.jane_host = net.host("john", 30), net.host("jane", 31)
        self.mail_host, self.itsp_host = net.host("mail", 25), net.host("itsp", 50)
        self.guesser = net.host("guesser", 66)
        self.itsp = FakeItsp(self.itsp_host, tmp_path)
        self.smtp = SmtpServer(self.mail_host).start()
        self.pbx = BootedSystem(layers, self.pbx_host, tmp_path / "machine")
        self.pbx.prepare("/srv/etc/pbxhost.env", env)
        boot(self.pbx)
        self.pbx.wait_active(*OURS)
        etc = self.pbx.root / CONF.lstrip("/")
        set_conf(etc, "websms.conf", "websms", url_host=self.itsp.url,
                 url_path="/api/sms/send", auth_user="acct-17", auth_secret="s3cr3t")
        set_conf(etc, "websms.conf", "websmsd", remt_addr=self.itsp_host.v4)
        set_conf(etc, "minivm.conf", "general",
                 mailcmd=f"minivm-send -H {self.smtp.address} -P smtp -f vm@pbx.test")
        set_conf(etc, "extensions_local.conf", "globals", DIAL_TIMEOUT="2")
        # the webhook on only now: websmsd refuses an interface open to anyone
        self.pbx.write("/srv/etc/pbxhost.env", env + f"WEBSMSD_PORT={WEBHOOK_PORT}\n")
        restart = self.pbx.run("systemctl", "restart", "websmsd", check=False)
        assert restart.returncode == 0, self.pbx.run(
            "journalctl", "--no-pager", "-n", "30", "-u", "websmsd", check=False).stdout
        self.pbx.run("asterisk", "-rx", "core reload")
        self.pbx.wait_active("websmsd.service")
        self.hook = WebhookClient(self.itsp_host, self.pbx_host.v4, WEBHOOK_PORT)

    def passwords(self) -> dict[str, str]:
        """The seeded SIP passwords (the `phone` fixture's, tests/system/conftest.py)."""
        return passwords(self.pbx)

    def close(self) -> None:
        self.smtp.stop()
        self.itsp.close()


@pytest.fixture(scope="module")
def site(source_install, base, module_net, module_boot, tmp_path_factory):
    s = Site(module_net, module_boot, [source_install, base], tmp_path_factory.mktemp("site"),
             "SYSLOG_LEVEL=6\nHOSTNAME=192.0.2.10\n")
    yield s
    s.close()


# ---------------------------------------------------------------- boot, seeding, secrets

def test_boots_to_running_with_our_units_active_and_seeded_once(site):
    pbx = site.pbx
    assert pbx.run("systemctl", "is-system-running", check=False).stdout.strip() == "running", \
        pbx.failed_units()
    for unit in OURS:
        assert pbx.unit(unit)["ActiveState"] == "active", unit
    seeded = [e["MESSAGE"] for e in pbx.journal("-u", "pbxhost-seed")
              if "seeded" in e.get("MESSAGE", "")]
    assert len(seeded) == 1 and f"{CONF}: seeded" in seeded[0]
    assert (pbx.root / CONF.lstrip("/") / seed.LOCK).exists()
    # HOSTNAME from pbxhost.env reached the seeded transports
    transport = conf.load(pbx.root / CONF.lstrip("/") / "pjsip_transport.conf")
    assert transport.section("transport-udp").get("domain") == "192.0.2.10"
    # Asterisk's own notices (logger.conf: syslog) under its unit
    notices = [e["MESSAGE"] for e in pbx.journal("-u", "asterisk", "-t", "asterisk")]
    assert any("modules will be loaded" in m for m in notices), notices[:5]


def test_the_generated_passwords_are_in_a_root_only_file_not_in_the_journal(site):
    pbx = site.pbx
    st = (pbx.root / SECRETS.lstrip("/")).stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600)
    found = passwords(pbx)
    assert set(found) == {"john.doe", "jane.doe"} and all(len(p) >= 20 for p in found.values())
    journal = pbx.run("journalctl", "--no-pager", "-o", "cat").stdout
    assert SECRETS in journal  # the seeding says where they are
    for password in found.values():
        assert password not in journal


def test_status_is_healthy(site):
    out = site.pbx.run("pbxhost", "status", check=False)
    assert out.returncode == 0, out.stdout
    assert "healthy" in out.stdout.splitlines()[-1]
    assert re.search(r"asterisk\.service\s+Asterisk 22\.", out.stdout)


# ---------------------------------------------------------------- the whole flow

def test_a_phone_registers_and_a_guesser_is_jailed_with_journal_fields(site, phone):
    pbx = site.pbx
    john = phone("john.doe")
    guess(site.pbx_host, site.guesser, site.tmp)
    poll(lambda: jailed(pbx, site.guesser.v4) or None, 15, "the guesser jailed")
    before = dropped(pbx)
    guess(site.pbx_host, site.guesser, site.tmp, attempts=3)  # now dropped, unanswered
    assert dropped(pbx) > before
    # the jail line, with its fields, at SYSLOG_LEVEL 6 (notice); nothing above it
    entries = unit_entries(pbx, "autoban", "autoban")
    jail = [e for e in entries if e.get("VERDICT") == "jail"]
    assert jail and jail[0]["ADDRESS"] == site.guesser.v4
    assert jail[0]["ACCOUNT"] == "jane.doe" and jail[0]["EVENT"]
    assert jail[0]["SENTENCE"] == "1200" and jail[0]["PRIORITY"] == "5"
    assert jail[0]["SCOPE"] == "sipjail"  # UDP: the source is not proven, SIP only
    assert all(int(e["PRIORITY"]) <= 5 for e in entries), [e["MESSAGE"] for e in entries]
    # john's phone still works: jane gets his text
    jane = phone("jane.doe")
    john.send_message("still here")
    assert jane.wait_messages(1)[0].body == b"still here"


def test_an_sms_posted_to_the_webhook_reaches_the_phone(site, phone):
    jane = phone("jane.doe")
    reply = site.hook.post_form({"To": JANE, "From": "+15551230001", "Body": "from outside"})
    assert reply.status == 200, reply
    assert jane.wait_messages(1)[0].body == b"from outside"


def test_a_phones_sms_to_an_outside_number_reaches_the_itsp(site, phone):
    john = phone("john.doe", texting="+15551230002")
    john.send_message("to the world")
    posted = site.itsp.wait_requests(1)[0].form()
    assert (posted["To"], posted["Body"]) == ("+15551230002", "to the world")


def test_voicemail_reaches_the_mail_server(site, phone):
    phone("jane.doe")  # it rings; nobody answers (DIAL_TIMEOUT 2 s)
    audio = write_ulaw(site.tmp / "message.ulaw", tone(440, 20))
    # vm-intro takes about 6 s, then 6 s of message
    call = Sipp(site.john_host, site.tmp, call_xml("john.doe", passwords(site.pbx)["john.doe"],
                                                    hold_ms=12000, audio=audio),
                site.pbx_host.v4, service=JANE, local_port=5072, media_port=6072)
    assert call.wait().ok
    try:
        recipients, mail = site.smtp.wait_mail(timeout=30)
    except TimeoutError:
        log = site.pbx.run("journalctl", "--no-pager", "-n", "40", "-o", "short",
                           "-t", "minivm-send", "-t", "asterisk").stdout
        raise AssertionError(f"no voicemail mail; the PBX's journal:\n{log}") from None
    assert recipients == ["jane.doe@example.com"] and JOHN in mail["Subject"]
    assert any((p.get_filename() or "").endswith(".wav") for p in mail.walk())


# ---------------------------------------------------------------- restarts

def test_kill_9_of_the_daemons_restarts_them_and_nothing_is_lost(site, phone):
    pbx = site.pbx
    for unit in ("autoban.service", "websmsd.service"):
        before = pbx.unit(unit)
        pbx.run("kill", "-9", before["MainPID"])
        poll(lambda u=unit, b=before: (int(pbx.unit(u)["NRestarts"]) > int(b["NRestarts"])
                                       and pbx.unit(u)["ActiveState"] == "active") or None,
             20, f"{unit} restarted")
    assert jailed(pbx, site.guesser.v4)  # the jail is the kernel's, kept
    jane = phone("jane.doe")
    assert site.hook.post_form({"To": JANE, "From": "+15551230003",
                                "Body": "after the kill"}).status == 200
    assert jane.wait_messages(1)[0].body == b"after the kill"


@pytest.mark.parametrize("unit", ["autoban.service", "websmsd.service"])
def test_a_frozen_daemon_is_restarted_by_the_watchdog(site, unit):
    pbx = site.pbx
    # (on the disk: the machine's /run is a tmpfs that a write from outside cannot reach)
    dropin = f"/etc/systemd/system/{unit}.d/watchdog-test.conf"
    pbx.write(dropin, "[Service]\nWatchdogSec=3s\n")  # and the unit's TimeoutAbortSec
    try:
        pbx.run("systemctl", "daemon-reload")
        pbx.run("systemctl", "restart", unit)
        pbx.wait_active(unit)
        before = pbx.unit(unit)
        pbx.run("kill", "-STOP", before["MainPID"])
        poll(lambda: (pbx.unit(unit)["MainPID"] not in ("0", before["MainPID"])
                      and pbx.unit(unit)["ActiveState"] == "active") or None, 30,
             f"{unit} restarted by the watchdog")
        assert any("Watchdog timeout" in e.get("MESSAGE", "")
                   for e in pbx.journal("-u", unit))
    finally:
        (pbx.root / dropin.lstrip("/")).unlink()
        pbx.run("systemctl", "daemon-reload")
        pbx.run("systemctl", "restart", unit)


def test_asterisk_restart_leaves_both_daemons_working(site, phone):
    pbx = site.pbx
    restarts = {u: pbx.unit(u)["NRestarts"] for u in ("autoban.service", "websmsd.service")}
    pids = {u: pbx.unit(u)["MainPID"] for u in restarts}
    pbx.run("systemctl", "restart", "asterisk")
    pbx.wait_active("asterisk.service")
    other = site.net.host("guesser2", 67)
    poll(lambda: pbx.run("pbxhost", "status", check=False).returncode == 0 or None, 30,
         "healthy again (both AMI logins back)")
    guess(site.pbx_host, other, site.tmp)
    poll(lambda: jailed(pbx, other.v4) or None, 15, "a new guesser jailed")
    jane = phone("jane.doe")
    assert site.hook.post_form({"To": JANE, "From": "+15551230004",
                                "Body": "after asterisk"}).status == 200
    assert jane.wait_messages(1)[0].body == b"after asterisk"
    for unit in restarts:
        assert (pbx.unit(unit)["NRestarts"], pbx.unit(unit)["MainPID"]) == \
            (restarts[unit], pids[unit]), unit


def test_nftables_restart_gets_our_table_back_with_the_jails(site):
    pbx = site.pbx
    if not jailed(pbx, site.guesser.v4):  # run alone (-k): jail it first
        guess(site.pbx_host, site.guesser, site.tmp)
        poll(lambda: jailed(pbx, site.guesser.v4) or None, 15, "the guesser jailed")
    pbx.run("systemctl", "restart", "nftables")
    started = time.monotonic()
    poll(lambda: jailed(pbx, site.guesser.v4) or None, 5, "the jail back")
    assert time.monotonic() - started < 2.5  # 2 s, plus the polling of autoban list


def test_status_names_asterisk_when_it_is_stopped(site):
    pbx = site.pbx
    pbx.run("systemctl", "stop", "asterisk")
    try:
        out = pbx.run("pbxhost", "status", check=False)
        assert out.returncode == 1
        assert out.stdout.splitlines()[-1].startswith("unhealthy: asterisk.service")
    finally:
        pbx.run("systemctl", "start", "asterisk")
