"""The test bed itself: Asterisk 22 starts and answers AMI; security events name
the attacker; a phone registers; all of it over IPv4 and IPv6."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from testbed.configs import TRANSPORTS, pjsip_user
from testbed.sip import sipp_register
from testbed.sipp import sdp

PASSWORD = "s3cret-Jane-42"
PJSIP = TRANSPORTS + pjsip_user("jane", PASSWORD, max_contacts=5, qualify=10)
FIXTURES = Path(__file__).parent.parent / "fixtures/ami"
RECORD = os.environ.get("PBXHOST_RECORD_AMI") == "1"


def record(name: str, data: bytes) -> None:
    """Refresh a transcript fixture (PBXHOST_RECORD_AMI=1) for the unit tests."""
    if RECORD:
        (FIXTURES / name).write_bytes(data)


def test_asterisk_answers_ami(net, start_asterisk):
    pbx = start_asterisk(net.host("pbx", 10))
    version = pbx.ami.command("core show version")
    assert version.startswith("Asterisk 22."), version
    assert pbx.ami.action("Ping")["Response"] == "Success"
    record("login.txt", bytes(pbx.ami.transcript))


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_wrong_password_raises_security_event_naming_attacker(net, start_asterisk, tmp_path,
                                                              family):
    pbx_host, attacker = net.host("pbx", 10), net.host("attacker", 66)
    pbx = start_asterisk(pbx_host, {"pjsip.conf": PJSIP})
    target = pbx_host.v4 if family == "ipv4" else pbx_host.v6
    result = sipp_register(attacker, target, "jane", "wrong-password", tmp_path, expect=401)
    assert result.returncode == 0, result.stdout + result.stderr
    # Asterisk 22 writes IPv6 without brackets: IPV6/UDP/2001:db8:1::42/5070
    source = attacker.v4 if family == "ipv4" else attacker.v6
    event = pbx.ami.wait_event(
        lambda e: e["Event"] == "ChallengeResponseFailed"
        and e.get("RemoteAddress", "").startswith(f"{family.upper()}/UDP/{source}/"),
        what=f"ChallengeResponseFailed from {source}")
    assert event["AccountID"] == "jane"
    assert event["Service"] == "PJSIP"
    record(f"challenge_response_failed_{family}.txt", bytes(pbx.ami.transcript))


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_phone_registers_and_is_listed(net, start_asterisk, start_phone, family):
    pbx_host, phone_host = net.host("pbx", 10), net.host("phone", 30)
    pbx = start_asterisk(pbx_host, {"pjsip.conf": PJSIP})
    target = pbx_host.v4 if family == "ipv4" else pbx_host.v6
    phone = start_phone(phone_host, "jane", PASSWORD, target)
    phone.wait_registered()
    status = pbx.ami.wait_event(
        lambda e: e["Event"] == "ContactStatus" and e.get("AOR") == "jane"
        and e.get("ContactStatus") == "Reachable",
        what="ContactStatus for jane")
    local = phone_host.v4 if family == "ipv4" else f"[{phone_host.v6}]"
    assert f"@{local}:5060" in status["URI"]
    contacts = pbx.ami.command("pjsip show contacts")
    # baresip registers a contact user of its own making: sip:jane-0x...@ADDR:PORT
    listed = [ln for ln in contacts.splitlines() if ln.startswith("Contact:  jane/sip:jane")]
    # (the CLI cuts long URIs, so the port is checked on the AMI event above)
    assert len(listed) == 1 and f"@{local}" in listed[0] and "Avail" in listed[0], contacts
    assert not [e for e in pbx.ami.events if e["Event"] == "ChallengeResponseFailed"]
    record(f"contact_status_{family}.txt", bytes(pbx.ami.transcript))


def test_teardown_leaves_no_process_namespace_or_table(tree, tmp_path):
    from testbed.asterisk import Asterisk
    from testbed.netns import Network

    with pytest.raises(RuntimeError, match="a failing test"), Network() as network:
        host = network.host("pbx", 10)
        pbx = Asterisk(tree, host, tmp_path / "a")
        pbx.start()
        host.run("nft", "add", "table", "inet", "leftover")
        namespaces, proc = list(network._namespaces), pbx.proc
        raise RuntimeError("a failing test")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [ns for ns in namespaces if ns in listed]
    assert proc.wait(5) is not None  # killed with its namespace (reaped here)
    assert "leftover" not in subprocess.run(["nft", "list", "tables"], capture_output=True,
                                            text=True).stdout


# A callee that, once the call is up, sends what a PBX may send in a dialog: an
# INFO, then a re-INVITE, then waits for the caller's BYE. Its own tag and the
# caller's are read from the ACK (the last message received is then the ACK).
CALLEE_IN_DIALOG = """<?xml version="1.0" encoding="UTF-8" ?>
<scenario name="callee in dialog">
  <recv request="INVITE"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:callee@[local_ip]:[local_port]>
Content-Type: application/sdp
Content-Length: [len]

""" + sdp(1) + """]]></send>
  <recv request="ACK">
    <action>
      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="caller"/>
      <ereg regexp=".*" search_in="hdr" header="To:" assign_to="me"/>
      <ereg regexp="sip:[^>]*" search_in="hdr" header="Contact:" assign_to="target"/>
    </action>
  </recv>
  {requests}
  <recv request="BYE"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
</scenario>
"""

IN_DIALOG_REQUEST = """<send retrans="500"><![CDATA[
{method} [$target] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: [$me]
To: [$caller]
Call-ID: [call_id]
CSeq: {cseq} {method}
Contact: <sip:callee@[local_ip]:[local_port]>
Max-Forwards: 70
{body}]]></send>
  <recv response="200"/>
"""

REINVITE_BODY = """Content-Type: application/sdp
Content-Length: [len]

""" + sdp(2)  # the callee's new offer: a higher session version

REINVITE_ACK = """<send><![CDATA[
ACK [$target] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: [$me]
To: [$caller]
Call-ID: [call_id]
CSeq: {cseq} ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
"""


def test_a_sipp_call_answers_the_callees_info_and_reinvite_and_ends_with_its_bye(net, tmp_path):
    """call_xml (tests/testbed/sipp.py) while it holds the call: a 200 to an INFO
    (sipp's -aa), a 200 with its SDP to each re-INVITE, then its own BYE."""
    from testbed.sipp import Sipp, call_xml
    caller_host, callee_host = net.host("caller", 30), net.host("callee", 10)
    # the second re-INVITE right after the first one's ACK, as PJSIP sends a queued one
    requests = IN_DIALOG_REQUEST.format(method="INFO", cseq=2, body="Content-Length: 0\n\n")
    for cseq in (3, 4):
        requests += (IN_DIALOG_REQUEST.format(method="INVITE", cseq=cseq, body=REINVITE_BODY)
                     + REINVITE_ACK.format(cseq=cseq))
    callee = Sipp(callee_host, tmp_path, CALLEE_IN_DIALOG.format(requests=requests),
                  local_port=5060, timeout=20)
    callee.wait_listening()
    caller = Sipp(caller_host, tmp_path, call_xml("caller", None, hold_ms=3000), callee_host.v4,
                  service="callee", timeout=20).wait()
    called = callee.wait()
    assert caller.ok, caller.output
    assert called.ok, called.output + called.trace[-3000:]
    answered = [m for m in caller.trace.split("-----") if "message sent" in m
                and m.split("\n\n", 1)[-1].startswith("SIP/2.0 200 OK")]
    # (a retransmission of the callee's re-INVITE would be answered again: counted once)
    assert sorted({re.search(r"^CSeq: (.*)$", m, re.M)[1] for m in answered}) == [
        "2 INFO", "3 INVITE", "4 INVITE"]
    assert "application/sdp" not in answered[0] and "application/sdp" in answered[-1]
