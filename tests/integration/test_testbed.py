"""The test bed itself: Asterisk 22 starts and answers AMI; security events name
the attacker; a phone registers; all of it over IPv4 and IPv6."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from testbed.configs import TRANSPORTS, pjsip_user
from testbed.sip import sipp_register

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
