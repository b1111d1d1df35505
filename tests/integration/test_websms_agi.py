"""websms's plain AGI script for real: Asterisk 22 in the test bed runs
`AGI(websms,...)` (packaging/agi-bin/websms, python3 in the sid tree with the
repository mounted read-only at /opt/pbxhost) when FastAGI does not answer,
through the [sub_websms] of the seeded etc/asterisk/extensions.conf. The
script sends to the fake ITSP itself, or queues the SMS durably in websms's
spool (/srv/var/spool/websms in the chroot) for websmsd, and sets
WEBSMS_STATUS for the dialplan."""

from __future__ import annotations

import json
import re

import pytest
import test_websms
from test_websms import JANE, MODULES, OUTSIDE, PJSIP, Bed

from testbed.asterisk import ASTERISK_CONF, REPO_MOUNT
from testbed.itsp import Answer, poll

ROOT = test_websms.ROOT
WRAPPER = ROOT / "packaging/agi-bin/websms"
# Asterisk's AGI dir is the repository's packaging/agi-bin: the test runs the
# very file packaging installs as /usr/share/asterisk/agi-bin/websms.
AGI_ASTERISK_CONF = re.sub(r"(?m)^astagidir => .*$",
                           f"astagidir => {REPO_MOUNT}/packaging/agi-bin", ASTERISK_CONF)
CHROOT_SPOOL = "/srv/var/spool/websms"  # the default spooldir, as the chroot sees it
TEXT = 'Grüße 😀, commas; "quotes" & + = % ok'


def seeded_context(name: str) -> str:
    """One context of the seeded extensions.conf, as written there."""
    text = (ROOT / "etc/asterisk/extensions.conf").read_text()
    m = re.search(rf"(?ms)^\[{re.escape(name)}\]\n.*?(?=^\[|\Z)", text)
    assert m, f"[{name}] not in the seeded extensions.conf"
    return m.group(0)


# The phone's MESSAGE goes to the seeded [sub_websms] with the variables the
# seeded dialplan sets before it (sender: the endpoint, sender_num: its number).
EXTENSIONS = f"""\
[dp_lookup_user]
exten => {JANE},hint,PJSIP/jane

[dp_entry_user_texting]
exten => _[+0-9].,1,Set(sender=${{CUT(CUT(MESSAGE(from),@,1),:,2)}})
 same => n,Set(CALLERID(all)=${{PJSIP_ENDPOINT(${{sender}},callerid)}})
 same => n,Set(sender_num=${{CALLERID(num)}})
 same => n,Gosub(sub_websms,s,1(${{EXTEN}}))
 same => n,Log(NOTICE,websms said ${{WEBSMS_STATUS}})

{seeded_context("sub_websms")}"""
# ExecIf (app_exec) and IF (func_logic), which [sub_websms] uses.
AGI_MODULES = MODULES + "load = app_exec.so\nload = func_logic.so\n"


@pytest.fixture
def agibed(net, start_asterisk, start_phone, tmp_path):
    """test_websms's bed; websmsd is not started, so FastAGI is down."""
    def start(host, configs):
        return start_asterisk(host, {**configs, "asterisk.conf": AGI_ASTERISK_CONF,
                                     "extensions.conf": EXTENSIONS, "modules.conf": AGI_MODULES,
                                     "pjsip.conf": PJSIP})
    b = Bed(net, start, start_phone, tmp_path)
    b.net = net
    b.spool = b.pbx.var / "spool/websms"  # /srv/var/spool/websms inside the chroot
    conf = b.write_conf().read_text()
    # The script finds websms.conf as in production: /srv/etc/asterisk/websms.conf
    (b.pbx.etc / "websms.conf").write_text(
        conf.replace(f"spooldir = {b.spool}\n", f"spooldir = {CHROOT_SPOOL}\n"))
    yield b
    b.runner.kill()
    b.itsp.close()


def asterisk_log(bed) -> str:
    return bed.pbx.log.read_text(errors="replace")


def wait_status(bed, status: str) -> None:
    def said() -> bool:
        log = asterisk_log(bed)
        return f"websms said {status}" in log and f"SMS to {OUTSIDE}: websms {status}" in log
    try:
        poll(said, 15, f"WEBSMS_STATUS={status}")
    except TimeoutError:
        raise TimeoutError(f"no WEBSMS_STATUS={status}:\n{asterisk_log(bed)[-3000:]}\n"
                           f"{bed.pbx.console()}") from None


def assert_ran_the_plain_script(bed) -> None:
    log = asterisk_log(bed)
    assert "agi://127.0.0.1:4573/websms" in log  # FastAGI was tried first, and failed
    assert re.search(r"AGI Script websms completed, returning 0", log), log[-3000:]


def test_wrapper_is_the_packaged_script():
    assert WRAPPER.read_text().startswith("#!/bin/sh\n")
    assert 'exec python3 -m pbxhost.websms.cli agi "$@"' in WRAPPER.read_text()
    assert WRAPPER.stat().st_mode & 0o111 == 0o111


def test_plain_agi_sends_when_fastagi_is_down(agibed):
    bed = agibed
    phone = bed.phone("jane", contacts=(f"sip:{OUTSIDE}@{bed.pbx_host.v4}",))
    phone.send_message(TEXT)
    req = bed.itsp.wait_requests(1)[0]
    assert req.path == "/api/sms/send"
    assert req.form() == {"To": OUTSIDE, "From": JANE, "Body": TEXT}
    wait_status(bed, "SENT")
    assert_ran_the_plain_script(bed)
    assert bed.spool_files("out") == [] and bed.spool_files("failed") == []


def test_plain_agi_queues_durably_then_websmsd_sends_it(agibed):
    bed = agibed
    bed.itsp.answer(default=Answer(503, b"busy"))
    phone = bed.phone("jane", contacts=(f"sip:{OUTSIDE}@{bed.pbx_host.v4}",))
    phone.send_message(TEXT)
    wait_status(bed, "QUEUED")
    assert_ran_the_plain_script(bed)
    assert len(bed.itsp.requests) == 1  # the script's own first attempt
    [record] = bed.spool_files("out")
    sms = json.loads(record.read_text())
    assert (sms["to"], sms["sender"], sms["body"]) == (OUTSIDE, JANE, TEXT)
    assert bed.spool_files("failed") == []
    # websmsd (FastAGI back) picks the record up and sends it once the ITSP recovers
    bed.itsp.answer(default=Answer())
    bed.start_daemon()
    reqs = bed.itsp.wait_requests(2, timeout=15)
    assert reqs[1].form() == {"To": OUTSIDE, "From": JANE, "Body": TEXT}
    bed.wait_log("sent via default")
    poll(lambda: bed.spool_files("out") == [], 5, "out/ emptied")
    assert len(bed.itsp.requests) == 2 and bed.spool_files("failed") == []


def test_plain_agi_applies_the_per_user_rate_across_its_processes(agibed):
    """While websmsd is down each SMS is a process of its own: the rate the
    FastAGI path applies (rate_limit per rate_window) is counted in the spool
    (rate/), so the third SMS of a minute is refused with FastAGI's
    RATE_LIMITED, and the phone is told (by websmsd, once it is back)."""
    bed = agibed
    conf = bed.pbx.etc / "websms.conf"
    conf.write_text(conf.read_text().replace("[websms]\n", "[websms]\nrate_limit = 2\n", 1))
    phone = bed.phone("jane", contacts=(f"sip:{OUTSIDE}@{bed.pbx_host.v4}",))
    for n in (1, 2):
        phone.send_message(f"within the rate {n}")
        bed.itsp.wait_requests(n)
        # the NOTICE line of [sub_websms]'s Log (its Executing line says it too)
        poll(lambda n=n: asterisk_log(bed).count(f": SMS to {OUTSIDE}: websms SENT\n") == n,
             15, f"SENT {n}")
    phone.send_message("one too many")
    wait_status(bed, "RATE_LIMITED")
    assert_ran_the_plain_script(bed)
    assert len(bed.itsp.requests) == 2  # the third never reached the ITSP
    assert [p.name for p in bed.spool_files("rate")] != []  # the shared count
    [notice] = [json.loads(p.read_text()) for p in bed.spool_files("in")]
    assert notice["to"] == "jane" and notice["sender"] == OUTSIDE
    assert notice["body"] == f"SMS to {OUTSIDE} not sent: more than 2 SMS in 60s"
    # websmsd back: the phone gets FastAGI's refusal message
    bed.start_daemon()
    got = phone.wait_messages(1)
    assert got[0].sender == OUTSIDE
    assert got[0].body.decode() == f"SMS to {OUTSIDE} not sent: more than 2 SMS in 60s"
