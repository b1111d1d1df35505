"""websms provider presets against the test bed of test_websms.py (real
Asterisk 22, the fake ITSP host, baresip phones): a provider's signed
webhook reaches a phone, a badly signed one is refused; an outgoing SMS is
the request the provider documents; Vonage's multi-part SMS arrive as one
MESSAGE. Signatures are made by the provider's official SDK (twilio's
RequestValidator, also for SignalWire; plivo's signature_v3; vonage's
Auth.sign_params) or, for Telnyx (whose SDK only verifies), with an Ed25519
key made here as Telnyx documents it."""

from __future__ import annotations

import base64
import json
import signal
import time
from urllib.parse import parse_qsl, urlencode

import pytest
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
FORM = "application/x-www-form-urlencoded"


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
    assert bed.queued_in() == []


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
    # after a restart, and with another base64 spelling of the same signature
    bed.stop_daemon()
    bed.start_daemon(wait=None)
    bed.wait_log("webhook listening", count=2)
    sig = headers["telnyx-signature-ed25519"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    respelled = sig[:-3] + alphabet[alphabet.index(sig[-3]) ^ 1] + "=="  # unused low bits
    assert respelled != sig and base64.b64decode(respelled) == base64.b64decode(sig)
    later = bed.hook.request("POST", "/sms/in", body,
                             {**headers, "telnyx-signature-ed25519": respelled})
    assert later.status == 403 and b"replay" in later.body, later
    assert len(jane.wait_messages(1)) == 1


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
    # given up: logged once the SMS is in failed/ (the send's own FAILED line comes before)
    bed.wait_log("; telling")
    assert bed.spool_files("out") == []  # failed for good: not retried
    assert len(bed.spool_files("failed")) == 1


# ---------------------------------------------------------------- the other presets, end to end
#
# Each inbound case is the provider's documented webhook (docs/providers/<name>.md) with
# TEXT in it, signed by the provider's official SDK where the provider signs: SignalWire as
# twilio's RequestValidator signs (SignalWire's SDK subclasses it), Plivo V3 by
# plivo.utils.signature_v3, Vonage by vonage_http_client.auth.Auth.sign_params.

PLIVO_TOKEN = "MzA1ZDg3YzZhNjA2ZmNmYjE0NmU1ZWFhZjRkOTc3"
SW_KEY = "PSK_signalwire_signing_key_0815"
VONAGE_SECRET = "vonage-signature-secret-4711"
N_JANE, N_OUTSIDE = JANE[1:], OUTSIDE[1:]     # numbers written without +
Built = tuple[str, str, bytes, dict[str, str]]  # method, path and query, body, headers


def signalwire_in(url: str, secret: str) -> Built:
    fields = {"MessageSid": "0e7e5c3a-7b4f-4a9f-9a8e-7b4fb86e1c3d",
              "SmsSid": "0e7e5c3a-7b4f-4a9f-9a8e-7b4fb86e1c3d",
              "AccountSid": "b3877c40-da60-4998-90ad-b792e98472af", "From": OUTSIDE, "To": JANE,
              "Body": TEXT, "NumMedia": "0", "NumSegments": "1", "SmsStatus": "received",
              "ApiVersion": "2010-04-01"}
    sig = RequestValidator(secret).compute_signature(url, fields)
    return ("POST", "/sms/in", urlencode(fields).encode(),
            {"Content-Type": FORM, "X-SignalWire-Signature": sig})


def plivo_in(url: str, secret: str) -> Built:
    from plivo.utils import signature_v3
    fields = {"From": N_OUTSIDE, "To": N_JANE, "Text": TEXT, "Type": "sms",
              "MessageUUID": "bc3d8f54-5ad0-11ee-b2f7-0242ac110003", "TotalAmount": "0.00000",
              "TotalRate": "0.00000", "Units": "1", "MessageIntent": "", "PowerpackUUID": ""}
    nonce = str(time.time_ns())
    base = signature_v3.construct_post_url(url, dict(fields))
    sig = signature_v3.get_signature_v3(secret.encode(), base.decode(), nonce.encode())
    return ("POST", "/sms/in", urlencode(fields).encode(),
            {"Content-Type": FORM, "X-Plivo-Signature-V3": sig.decode(),
             "X-Plivo-Signature-V3-Nonce": nonce})


def vonage_fields(secret: str, **extra: str) -> dict[str, str]:
    from vonage_http_client.auth import Auth
    fields = {"msisdn": N_OUTSIDE, "to": N_JANE, "messageId": "0A0000000123ABCD1",
              "text": TEXT, "type": "unicode", "keyword": "GRUSSE", "api-key": "abcd1234",
              "message-timestamp": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
              "timestamp": str(int(time.time())), "nonce": f"nonce-{time.time_ns()}", **extra}
    fields["sig"] = Auth(api_key="abcd1234", signature_secret=secret,
                         signature_method="sha256").sign_params(dict(fields))
    return fields


def vonage_in(url: str, secret: str) -> Built:  # method POST-JSON, as vonage.md advises
    return ("POST", "/sms/in", json.dumps(vonage_fields(secret), ensure_ascii=False).encode(),
            {"Content-Type": "application/json"})


def voipms_in(url: str, secret: str) -> Built:  # the callback URL with VoIP.ms's placeholders
    query = urlencode({"to": N_JANE[1:], "from": N_OUTSIDE[1:], "message": TEXT, "id": "23434",
                       "date": "2026-11-26 08:00:00"})
    return "GET", f"/sms/in?{query}", b"", {}


def flowroute_in(url: str, secret: str) -> Built:
    doc = {"data": {"attributes": {
        "status": "delivered", "body": TEXT, "direction": "inbound",
        "amount_nanodollars": 4000000, "to": N_JANE, "message_encoding": 0,
        "timestamp": "2026-11-26T08:00:00.00Z", "delivery_receipts": [],
        "amount_display": "$0.0040", "from": N_OUTSIDE, "is_mms": False,
        "message_type": "longcode"},
        "type": "message", "id": "mdr2-39cadeace66e11e7aff806cd7f24ba2d"}}
    return ("POST", "/sms/in", json.dumps(doc, ensure_ascii=False).encode(),
            {"Content-Type": "application/vnd.api+json"})


def bandwidth_in(url: str, secret: str) -> Built:
    doc = [{"type": "message-received", "time": "2026-11-26T08:00:00Z",
            "description": "Incoming message received", "to": JANE,
            "message": {"id": "14762070468292kw2fuqty55yp2b2", "time": "2026-11-26T08:00:00Z",
                        "to": [JANE], "from": OUTSIDE, "text": TEXT,
                        "applicationId": "93de2206-9669-4e07-948d-329f4b722ee2", "media": [],
                        "owner": JANE, "direction": "in", "segmentCount": 1}}]
    return ("POST", "/sms/in", json.dumps(doc, ensure_ascii=False).encode(),
            {"Content-Type": "application/json; charset=utf-8"})


# (provider, [websmsd] lines, secret, build, the sender the phone sees, reply type, reply)
INBOUND = [
    ("signalwire", f"sign_secret = {SW_KEY}\n", SW_KEY, signalwire_in, OUTSIDE, "text/xml",
     TWIML.encode()),
    ("plivo", f"sign_secret = {PLIVO_TOKEN}\n", PLIVO_TOKEN, plivo_in, N_OUTSIDE, "text/xml",
     b"<Response></Response>"),
    ("vonage", f"sign_secret = {VONAGE_SECRET}\n", VONAGE_SECRET, vonage_in, N_OUTSIDE,
     "text/plain; charset=utf-8", b"OK\n"),
    ("voipms", "", "", voipms_in, OUTSIDE, "text/plain; charset=utf-8", b"ok"),
    ("flowroute", "", "", flowroute_in, N_OUTSIDE, "text/plain; charset=utf-8", b"OK\n"),
    ("bandwidth", "", "", bandwidth_in, OUTSIDE, "text/plain; charset=utf-8", b"OK\n"),
]


@pytest.mark.parametrize(("name", "websmsd", "secret", "build", "sender", "ctype", "ack"),
                         INBOUND, ids=[c[0] for c in INBOUND])
def test_documented_webhook_reaches_the_phone(bed, name, websmsd, secret, build, sender,
                                              ctype, ack):
    write_conf(bed, "url_host = http://localhost\n", f"provider = {name}\n{websmsd}")
    bed.start_daemon()
    jane = bed.phone("jane")
    bed.reachable("jane")
    if secret:  # signed by another secret: 403, nothing queued
        method, path, body, headers = build(hook_url(bed), secret + "-wrong")
        refused = bed.hook.request(method, path, body, headers)
        assert refused.status == 403 and refused.body.startswith(b"bad signature"), refused
    method, path, body, headers = build(hook_url(bed), secret)
    reply = bed.hook.request(method, path, body, headers)
    assert (reply.status, reply.headers["Content-Type"], reply.body) == (200, ctype, ack), reply
    assert_received(jane, TEXT, sender=sender)
    time.sleep(0.3)
    assert len(jane.wait_messages(1)) == 1  # the forged one never came
    assert bed.queued_in() == []


def test_vonage_parts_out_of_order_twice_and_a_restart_make_one_message(bed):
    texts = ["Teil eins: Grüße aus Köln 😀, ", "Teil zwei & = % + ; ", "Teil drei.\nEnde 👩‍👩‍👧"]
    write_conf(bed, "url_host = http://localhost\n",
               f"provider = vonage\nsign_secret = {VONAGE_SECRET}\n")
    bed.start_daemon()

    def post(number: int) -> None:
        fields = vonage_fields(VONAGE_SECRET, messageId=f"0A000000012345{number}",
                               text=texts[number - 1], concat="true", **{
                                   "concat-ref": "08B5", "concat-total": "3",
                                   "concat-part": str(number)})
        reply = bed.hook.post_form(fields, "/sms/in")
        assert (reply.status, reply.body) == (200, b"OK\n"), reply

    post(3)
    post(1)
    assert len(bed.spool_files("parts")) == 1 and bed.queued_in() == []
    bed.stop_daemon(signal.SIGKILL)  # parts were answered 2xx: they are on disk
    bed.start_daemon(wait=None)
    bed.wait_log("AMI connected", count=2)
    jane = bed.phone("jane")
    bed.reachable("jane")
    post(1)  # sent again (a provider's retry): taken once
    post(2)
    assert_received(jane, "".join(texts), sender=N_OUTSIDE)
    time.sleep(0.5)
    assert len(jane.wait_messages(1)) == 1  # one MESSAGE, not one per part
    assert bed.spool_files("parts") == [] and bed.queued_in() == []


# ---------------------------------------------------------------- outgoing, the other presets

SW_PROJECT = "b3877c40-da60-4998-90ad-b792e98472af"
BW_APP = "93de2206-9669-4e07-948d-329f4b722ee2"


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


# (provider, [websms] lines, method, path, Authorization, Content-Type, fields,
#  the documented success reply)
OUTGOING = [
    ("signalwire", f"auth_user = {SW_PROJECT}\nauth_secret = PTsw-token\n", "POST",
     f"/api/laml/2010-04-01/Accounts/{SW_PROJECT}/Messages.json", basic(SW_PROJECT, "PTsw-token"),
     FORM, {"To": OUTSIDE, "From": JANE, "Body": LINE},
     Answer(201, json.dumps({"account_sid": SW_PROJECT, "api_version": "2010-04-01",
                             "body": LINE, "from": JANE, "to": OUTSIDE, "num_segments": 1,
                             "sid": "b3877c40-da60-4998-90ad-b792e98472ac",
                             "status": "queued", "direction": "outbound-api"}).encode())),
    ("plivo", "auth_user = MAXXXXXXXXXXXXXXXXXX\nauth_secret = plivo-token\n", "POST",
     "/v1/Account/MAXXXXXXXXXXXXXXXXXX/Message/", basic("MAXXXXXXXXXXXXXXXXXX", "plivo-token"),
     "application/json", {"src": N_JANE, "dst": N_OUTSIDE, "text": LINE},
     Answer(202, json.dumps({"api_id": "db342550-7f1d-11e1-8ea7-1231380bc196",
                             "message": "message(s) queued",
                             "message_uuid": ["db3ce55a-7f1d-11e1-8ea7-1231380bc196"]}).encode())),
    ("vonage", "auth_user = abcd1234\nauth_secret = vonage-api-secret\n", "POST", "/sms/json",
     None, FORM, {"api_key": "abcd1234", "api_secret": "vonage-api-secret", "to": N_OUTSIDE,
                  "from": N_JANE, "text": LINE, "type": "unicode"},
     Answer(200, json.dumps({"message-count": "1", "messages": [{
         "to": N_OUTSIDE, "message-id": "0A0000000123ABCD1", "status": "0",
         "remaining-balance": "3.14159265", "message-price": "0.03330000",
         "network": "12345"}]}).encode())),
    ("voipms", "auth_user = you@example.com\nauth_secret = voipms-api-pw\n", "GET",
     "/api/v1/rest.php", None, None,
     {"api_username": "you@example.com", "api_password": "voipms-api-pw", "method": "sendSMS",
      "did": N_JANE[1:], "dst": N_OUTSIDE[1:], "message": LINE},
     Answer(200, b'{"status":"success","sms":23434}')),
    ("flowroute", "auth_user = 12345\nauth_secret = fr-secret\n", "POST", "/v2.1/messages",
     basic("12345", "fr-secret"), "application/vnd.api+json",
     {"to": N_OUTSIDE, "from": N_JANE, "body": LINE},
     Answer(202, json.dumps({"data": {"links": {
         "self": "https://api.flowroute.com/v2.1/messages/mdr2-39cadeace66e11e7aff806cd7f24ba2d"},
         "type": "message", "id": "mdr2-39cadeace66e11e7aff806cd7f24ba2d"}}).encode(),
         "application/vnd.api+json")),
    ("bandwidth", f"auth_user = api-user\nauth_secret = bw-pass\naccount_id = 9900000\n"
                  f"val_static = applicationId={BW_APP}\n", "POST",
     "/api/v2/users/9900000/messages", basic("api-user", "bw-pass"), "application/json",
     {"to": [OUTSIDE], "from": JANE, "text": LINE, "applicationId": BW_APP},
     Answer(202, json.dumps({"id": "1589228074636lm4k2je7j7jklbn2", "owner": JANE,
                             "applicationId": BW_APP, "time": "2026-11-26T08:00:00.000Z",
                             "segmentCount": 1, "direction": "out", "to": [OUTSIDE],
                             "from": JANE, "media": [], "text": LINE,
                             "priority": "default"}).encode())),
]


@pytest.mark.parametrize(("name", "websms", "method", "path", "auth", "ctype", "fields",
                          "answer"), OUTGOING, ids=[c[0] for c in OUTGOING])
def test_outgoing_is_the_documented_request(bed, name, websms, method, path, auth, ctype,
                                            fields, answer):
    write_conf(bed, f"provider = {name}\nurl_host = {bed.itsp.url}\n{websms}",
               "sign_scheme = none\n")
    bed.itsp.answer(default=answer)
    bed.start_daemon()
    phone = bed.phone("jane", contacts=(f"sip:{OUTSIDE}@{bed.pbx_host.v4}",))
    phone.send_message(LINE)
    [req] = bed.itsp.wait_requests(1)
    got_path, _, query = req.path.partition("?")
    assert (req.method, got_path) == (method, path)
    assert req.headers.get("Authorization") == auth
    if method == "GET":
        assert req.body == b"" and dict(parse_qsl(query)) == fields
    else:
        assert req.headers["Content-Type"].split(";")[0] == ctype
        assert (req.form() if ctype == FORM else json.loads(req.body)) == fields
    bed.wait_log("sent via default")
    assert bed.spool_files("out") == [] and bed.spool_files("failed") == []
