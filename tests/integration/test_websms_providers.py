"""websms provider presets against the test bed of test_websms.py (real
Asterisk 22, the fake ITSP host, baresip phones): a provider's signed
webhook reaches a phone, a badly signed one is refused; an outgoing SMS is
the request the provider documents. Signatures are made by the provider's
official SDK (twilio's RequestValidator) or, for Telnyx (whose SDK only
verifies), with an Ed25519 key made here as Telnyx documents it."""

from __future__ import annotations

import base64
import json
import time

import test_websms
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from test_websms import AMI_SECRET, JANE, OUTSIDE, WEBHOOK_PORT, assert_received
from twilio.request_validator import RequestValidator

from testbed.itsp import Answer

bed = test_websms.bed  # the same test bed (fixture)

ACCOUNT, TOKEN = "AC" + "0123456789abcdef" * 2, "twilio-test-auth-token-4711"
SMS_SID = "SM" + "fedcba9876543210" * 2
TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
TEXT = "Grüße 😀 & +=% ok\nline two"
LINE = "Grüße 😀 & +=% ok"  # a phone sends one line (baresip)


def write_conf(bed, websms: str, websmsd: str) -> None:
    """websms.conf with presets: the user writes credentials and numbers only
    (url_host points the preset at the fake ITSP)."""
    (bed.confdir / "websms.conf").write_text(
        f"[websms]\nbackoff_min = 1\nbackoff_max = 2\n{websms}\n"
        f"[websmsd]\nurl_path = /sms/in\nremt_addr = {bed.itsp_host.v4}\n{websmsd}\n"
        f"[astqueue]\nspooldir = {bed.spool}\nretrytime = 60\n"
        f"[asmanager]\nserver = 127.0.0.1\nport = 5038\nusername = websms\n"
        f"secret = {AMI_SECRET}\n")
    (bed.confdir / "pjsip.conf").write_text("")


def hook_url(bed) -> str:
    return f"http://{bed.pbx_host.v4}:{WEBHOOK_PORT}/sms/in"


# ---------------------------------------------------------------- incoming


def test_twilio_signed_webhook_reaches_the_phone_and_gets_twiml(bed):
    write_conf(bed, "url_host = http://localhost\n",
               f"provider = twilio\nsign_secret = {TOKEN}\n")
    bed.start_daemon()
    jane = bed.phone("jane")
    bed.reachable("jane")
    fields = {"ToCountry": "US", "SmsMessageSid": SMS_SID, "NumMedia": "0", "To": JANE,
              "From": OUTSIDE, "Body": TEXT, "MessageSid": SMS_SID, "AccountSid": ACCOUNT,
              "NumSegments": "1", "ApiVersion": "2010-04-01"}
    validator = RequestValidator(TOKEN)
    good = validator.compute_signature(hook_url(bed), fields)
    wrong = RequestValidator("another-token").compute_signature(hook_url(bed), fields)
    refused = bed.hook.post_form({**fields, "Body": "forged"}, "/sms/in",
                                 headers={"X-Twilio-Signature": wrong})
    assert refused.status == 403 and refused.body.startswith(b"bad signature"), refused
    assert "bad signature" in bed.wait_log("refused")
    assert bed.itsp_host.v4 in bed.wait_log("refused")  # logged with the source
    reply = bed.hook.post_form(fields, "/sms/in", headers={"X-Twilio-Signature": good})
    assert reply.status == 200, reply
    assert reply.headers["Content-Type"] == "text/xml" and reply.body == TWIML.encode()
    assert_received(jane, TEXT)
    time.sleep(0.5)
    assert len(jane.wait_messages(1)) == 1  # the forged one never came
    assert bed.spool_files("in") == []


def test_telnyx_ed25519_signed_json_reaches_the_phone(bed):
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    write_conf(bed, "url_host = http://localhost\n",
               f"provider = telnyx\nsign_secret = {public.decode()}\n")
    bed.start_daemon()
    jane = bed.phone("jane")
    bed.reachable("jane")
    # the inbound message webhook as Telnyx documents it (v2, message.received)
    doc = {"data": {"event_type": "message.received", "id": "b301ed3f-1490-491f-995f",
                    "occurred_at": "2026-11-26T08:00:00.000+00:00", "record_type": "event",
                    "payload": {"direction": "inbound", "id": "84cca175-9755-4859-b67f",
                                "from": {"phone_number": OUTSIDE, "carrier": "T-Mobile USA"},
                                "to": [{"phone_number": JANE, "status": "webhook_delivered"}],
                                "text": TEXT, "type": "SMS", "record_type": "message"}},
           "meta": {"attempt": 1, "delivered_to": hook_url(bed)}}
    body = json.dumps(doc, ensure_ascii=False).encode()
    stamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "telnyx-timestamp": stamp,
               "telnyx-signature-ed25519": base64.b64encode(
                   key.sign(stamp.encode() + b"|" + body)).decode()}
    reply = bed.hook.request("POST", "/sms/in", body, headers)
    assert reply.status == 200, reply
    assert_received(jane, TEXT)
    again = bed.hook.request("POST", "/sms/in", body, headers)  # the same signed request
    assert again.status == 403 and b"replay" in again.body, again


def test_46elks_webhook_gets_an_empty_200(bed):
    write_conf(bed, "url_host = http://localhost\n", "provider = 46elks\n")
    bed.start_daemon()
    jane = bed.phone("jane")
    bed.reachable("jane")
    reply = bed.hook.post_form({"direction": "incoming", "id": "sf8425555e5d8db61dda7a7b3f1b91bdb",
                                "from": OUTSIDE, "to": JANE, "created": "2026-11-26 08:00:00.0",
                                "message": TEXT}, "/sms/in")
    assert (reply.status, reply.body) == (200, b"")  # a body would be sent back as an SMS
    assert_received(jane, TEXT)


# ---------------------------------------------------------------- outgoing


def test_outgoing_twilio_is_the_documented_messages_post(bed):
    write_conf(bed, f"provider = twilio\nurl_host = {bed.itsp.url}\nauth_user = {ACCOUNT}\n"
                    f"auth_secret = {TOKEN}\n", "sign_scheme = none\n")
    # Twilio's documented answer to a created message: 201 and the message resource
    bed.itsp.answer(default=Answer(201, json.dumps({
        "account_sid": ACCOUNT, "api_version": "2010-04-01", "body": LINE,
        "direction": "outbound-api", "from": JANE, "to": OUTSIDE, "num_segments": "1",
        "sid": SMS_SID, "status": "queued", "error_code": None}).encode()))
    bed.start_daemon()
    phone = bed.phone("jane", contacts=(f"sip:{OUTSIDE}@{bed.pbx_host.v4}",))
    phone.send_message(LINE)
    [req] = bed.itsp.wait_requests(1)
    assert (req.method, req.path) == ("POST", f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json")
    basic = base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
    assert req.headers["Authorization"] == f"Basic {basic}"
    assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert req.form() == {"To": OUTSIDE, "From": JANE, "Body": LINE}
    bed.wait_log("sent via default")
    assert bed.spool_files("out") == [] and bed.spool_files("failed") == []


def test_outgoing_zadarma_is_the_documented_signed_post(bed):
    write_conf(bed, f"provider = zadarma\nurl_host = {bed.itsp.url}\nauth_user = key-1\n"
                    "auth_secret = zd-secret\n", "sign_scheme = none\n")
    bed.itsp.answer(default=Answer(200, json.dumps({
        "status": "success", "messages": 1, "cost": 0.24, "currency": "USD"}).encode()))
    bed.start_daemon()
    phone = bed.phone("jane", contacts=(f"sip:{OUTSIDE}@{bed.pbx_host.v4}",))
    phone.send_message("hello zadarma")
    [req] = bed.itsp.wait_requests(1)
    assert (req.method, req.path) == ("POST", "/v1/sms/send/")
    assert req.headers["Authorization"].startswith("key-1:")  # key:base64 signature
    assert req.form() == {"number": OUTSIDE[1:], "caller_id": JANE[1:],
                          "message": "hello zadarma"}
    bed.wait_log("sent via default")


def test_outgoing_twilio_error_reply_is_a_failure(bed):
    status = 400
    write_conf(bed, f"provider = twilio\nurl_host = {bed.itsp.url}\nauth_user = {ACCOUNT}\n"
                    f"auth_secret = {TOKEN}\n", "sign_scheme = none\n")
    bed.itsp.answer(default=Answer(status, json.dumps({
        "code": 21211, "message": "The 'To' number is not a valid phone number.",
        "status": status}).encode()))
    bed.start_daemon()
    phone = bed.phone("jane", contacts=(f"sip:{OUTSIDE}@{bed.pbx_host.v4}",))
    phone.send_message("to nowhere")
    bed.itsp.wait_requests(1)
    bed.wait_log("FAILED")
    assert bed.spool_files("out") == []  # failed for good: not retried
