"""Provider presets: defaults for the generic websms.conf keys (read back by
config.py's own parsers), user keys over them, each provider's documented
incoming webhook read by its adapter, the outgoing request each provider
documents (and its documented success reply judged SENT), and Vonage's
multi-part reassembly. The inbound literals follow the providers' webhook
documentation (see docs/providers/<name>.md for the pages)."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from pbxhost import conf
from pbxhost.websms import config, inbound, providers, send
from pbxhost.websms.providers import Adapted, Concat, Inbound, Part

TO, FROM = "+12025550160", "+15017122661"


def outgoing(name: str, extra: str = "") -> config.Outgoing:
    """[websms] with one interface of provider NAME, parsed by config.py itself."""
    text = f"[websms]\nprovider [x] = {name}\nauth_user [x] = user1\n" \
           f"auth_secret [x] = secret1\n{extra}"
    section = conf.loads(text).section("websms")
    assert section is not None
    return config._outgoing(providers.apply_preset(section, "x", "websms"), "x")


def incoming(name: str, extra: str = "sign_secret = s\n") -> config.Incoming:
    section = conf.loads(f"[websmsd]\nprovider = {name}\n{extra}").section("websmsd")
    assert section is not None
    return config._incoming(providers.apply_preset(section, None, "websmsd"), None)


def request(iface: config.Outgoing, name: str, body: str = "Hi ✓") -> providers.OutRequest:
    built = send.build(iface, TO, FROM, body)
    return providers.adjust_request(name, providers.OutRequest(
        built.method, built.url, built.headers, built.body), body, iface.key_to, iface.key_from)


def basic(user: str = "user1", secret: str = "secret1") -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


# ---------------------------------------------------------------- defaults and merging

EXTRA = {"signalwire": "url_host [x] = https://example.signalwire.com\n",
         "bandwidth": "account_id [x] = 9900000\n"
                      "val_static [x] = applicationId=93de2206-9669-4e07-948d-329f4b722ee2\n"}


@pytest.mark.parametrize("name", providers.NAMES)
def test_every_preset_passes_config_validation(name):
    out = outgoing(name, EXTRA.get(name, ""))
    assert out.url.startswith("https://") and "{" not in out.url
    assert out.auth_method in config.AUTH_METHODS
    assert send.judge(500, b"", out.resp_check).outcome is send.Outcome.RETRY
    inc = incoming(name)
    keys = providers.defaults(name, "websmsd")
    assert (inc.key_to, inc.key_from, inc.key_body) == (keys["key_to"], keys["key_from"],
                                                       keys["key_body"])
    assert keys["sign_scheme"] in ("none", name, "vonage")


@pytest.mark.parametrize(("name", "scheme"), [
    ("twilio", "twilio"), ("signalwire", "signalwire"), ("telnyx", "telnyx"),
    ("zadarma", "zadarma"), ("plivo", "plivo"), ("vonage", "vonage"), ("46elks", "none"),
    ("voipms", "none"), ("flowroute", "none"), ("bandwidth", "none")])
def test_signature_on_by_default_where_the_provider_signs(name, scheme):
    assert providers.defaults(name, "websmsd")["sign_scheme"] == scheme
    if scheme != "none":
        with pytest.raises(conf.ConfigError, match="sign_secret") as exc:
            incoming(name, "")
        assert exc.value.line == 2  # the `provider` line
        incoming(name, "sign_scheme = none\n")  # unsigned on purpose: allowed


def test_preset_defaults_of_twilio():
    out = outgoing("twilio")
    assert out.url == "https://api.twilio.com/2010-04-01/Accounts/user1/Messages.json"
    assert (out.auth_method, out.key_to, out.key_from, out.key_body, out.req_format) == (
        "basic", "To", "From", "Body", "form")
    inc = incoming("twilio")
    assert (inc.key_id, inc.resp_ack) == ("MessageSid", providers.TWIML_EMPTY)


def test_user_keys_override_the_preset():
    out = outgoing("twilio", "key_body = Text\nurl_host [x] = https://twilio.test\n"
                             "account_id [x] = AC99\nresp_check [x] =\n")
    assert out.key_body == "Text" and out.resp_check == ""
    assert out.url == "https://twilio.test/2010-04-01/Accounts/AC99/Messages.json"
    merged = providers.merge("zadarma", "websms", {"key_to": "to", "auth_user": "k",
                                                   "auth_secret": "s"})
    assert merged["key_to"] == "to" and merged["auth_method"] == "zadarma"
    assert providers.merge("", "websms", {"key_to": "x"}) == {"key_to": "x"}


def test_indexed_interfaces_get_their_own_presets():
    text = ("[websms]\nauth_secret = shared\nprovider [a] = telnyx\n"
            "provider [b] = 46elks\nauth_user [b] = u46\nkey_body [b] = message\n")
    section = conf.loads(text).section("websms")
    a = config._outgoing(providers.apply_preset(section, "a", "websms"), "a")
    b = config._outgoing(providers.apply_preset(section, "b", "websms"), "b")
    assert (a.url, a.auth_method, a.auth_secret) == ("https://api.telnyx.com/v2/messages",
                                                     "bearer", "shared")
    assert (b.url, b.auth_method, b.auth_user) == ("https://api.46elks.com/a1/sms",
                                                   "basic", "u46")
    plain = config._outgoing(providers.apply_preset(
        conf.loads("[websms]\nurl_host = https://x.test\n").section("websms"), None,
        "websms"), None)
    assert plain.url == "https://x.test/"


def test_preset_errors_name_the_line():
    with pytest.raises(conf.ConfigError, match="unknown provider") as exc:
        outgoing("twillio")
    assert exc.value.line == 2
    section = conf.loads("[websms]\nprovider = twilio\n").section("websms")
    with pytest.raises(conf.ConfigError, match="needs auth_user and auth_secret"):
        providers.apply_preset(section, None, "websms")
    with pytest.raises(conf.ConfigError, match="account_id"):
        outgoing("bandwidth", "val_static [x] = applicationId=1\n")
    with pytest.raises(providers.PresetError, match="placeholder"):
        providers.expand("/x/{nope}", {})


# ---------------------------------------------------------------- outgoing per provider


def fields_of(req: providers.OutRequest) -> dict[str, str]:
    if req.method == "GET":
        return dict(parse_qsl(urlsplit(req.url).query))
    if req.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
        return dict(parse_qsl(req.body.decode()))
    return json.loads(req.body)


# (provider, extra config, method, URL, Authorization, fields, documented success reply)
OUTGOING = [
    ("twilio", "", "POST", "https://api.twilio.com/2010-04-01/Accounts/user1/Messages.json",
     basic(), {"To": TO, "From": FROM, "Body": "Hi ✓"}, 201,
     b'{"account_sid": "AC00000000000000000000000000000001", "api_version": "2010-04-01", '
     b'"body": "Hi", "num_segments": "1", "sid": "SM1f0e8ae6ade43cb3c0ce4525424e404f", '
     b'"status": "queued"}'),
    ("signalwire", EXTRA["signalwire"], "POST",
     "https://example.signalwire.com/api/laml/2010-04-01/Accounts/user1/Messages.json",
     basic(), {"To": TO, "From": FROM, "Body": "Hi ✓"}, 201,
     b'{"account_sid": "b3877c40-da60-4998-90ad-b792e98472af", "body": "Hi", '
     b'"sid": "b3877c40-da60-4998-90ad-b792e98472ac", "status": "queued"}'),
    ("telnyx", "", "POST", "https://api.telnyx.com/v2/messages", "Bearer secret1",
     {"to": TO, "from": FROM, "text": "Hi ✓"}, 200,
     b'{"data": {"record_type": "message", "direction": "outbound", "id": '
     b'"40385f64-5717-4562-b3fc-2c963f66afa6", "type": "SMS", "text": "Hi", "to": '
     b'[{"phone_number": "+12025550160", "status": "queued"}]}}'),
    ("46elks", "", "POST", "https://api.46elks.com/a1/sms", basic(),
     {"to": TO, "from": FROM, "message": "Hi ✓"}, 200,
     b'{"status": "created", "direction": "outgoing", "from": "+15017122661", "created": '
     b'"2016-11-03T15:27:28.268000", "parts": 1, "to": "+12025550160", "cost": 3500, '
     b'"message": "Hi", "id": "s70df59406a1b4643b96f3f91e0bfb7b0"}'),
    ("voipms", "", "GET", "https://voip.ms/api/v1/rest.php", None,
     {"api_username": "user1", "api_password": "secret1", "method": "sendSMS",
      "dst": "2025550160", "did": "5017122661", "message": "Hi ✓"}, 200,
     b'{"status":"success","sms":23434}'),
    ("flowroute", "", "POST", "https://api.flowroute.com/v2.1/messages", basic(),
     {"to": "12025550160", "from": "15017122661", "body": "Hi ✓"}, 202,
     b'{"data": {"links": {"self": "https://api.flowroute.com/v2.1/messages/mdr2-39cadeac'
     b'e66e11e7aff806cd7f24ba2d"}, "type": "message", "id": "mdr2-39cadeace66e11e7aff806cd'
     b'7f24ba2d"}}'),
    ("bandwidth", EXTRA["bandwidth"], "POST",
     "https://messaging.bandwidth.com/api/v2/users/9900000/messages", basic(),
     {"to": [TO], "from": FROM, "text": "Hi ✓",
      "applicationId": "93de2206-9669-4e07-948d-329f4b722ee2"}, 202,
     b'{"id": "1589228074636lm4k2je7j7jklbn2", "owner": "+15017122661", "applicationId": '
     b'"93de2206-9669-4e07-948d-329f4b722ee2", "time": "2020-05-11T20:14:34.636Z", '
     b'"segmentCount": 1, "direction": "out", "to": ["+12025550160"], "from": '
     b'"+15017122661", "media": [], "text": "Hi", "priority": "default"}'),
    ("vonage", "", "POST", "https://rest.nexmo.com/sms/json", None,
     {"api_key": "user1", "api_secret": "secret1", "to": "12025550160",
      "from": "15017122661", "text": "Hi ✓", "type": "unicode"}, 200,
     b'{"message-count": "1", "messages": [{"to": "12025550160", "message-id": '
     b'"0A0000000123ABCD1", "status": "0", "remaining-balance": "3.14159265", '
     b'"message-price": "0.03330000", "network": "12345"}]}'),
    ("plivo", "", "POST", "https://api.plivo.com/v1/Account/user1/Message/", basic(),
     {"dst": "12025550160", "src": "15017122661", "text": "Hi ✓"}, 202,
     b'{"api_id": "db342550-7f1d-11e1-8ea7-1231380bc196", "message": "message(s) queued", '
     b'"message_uuid": ["db3ce55a-7f1d-11e1-8ea7-1231380bc196"]}'),
]


@pytest.mark.parametrize(("name", "extra", "method", "url", "auth", "fields", "status",
                          "reply"), OUTGOING, ids=[o[0] for o in OUTGOING])
def test_outgoing_request_as_the_provider_documents(name, extra, method, url, auth, fields,
                                                    status, reply):
    iface = outgoing(name, extra)
    req = request(iface, name)
    assert req.method == method
    assert req.url.split("?")[0] == url
    assert req.headers.get("Authorization") == auth
    assert fields_of(req) == fields
    assert send.judge(status, reply, iface.resp_check).outcome is send.Outcome.SENT


def test_outgoing_quirks():
    assert request(outgoing("flowroute"), "flowroute").headers["Content-Type"] == \
        "application/vnd.api+json"
    vonage = outgoing("vonage")
    assert "type" not in fields_of(request(vonage, "vonage", "Hello, GSM text"))
    assert fields_of(request(vonage, "vonage", "Łódź"))["type"] == "unicode"
    failed = b'{"message-count": "1", "messages": [{"status": "4", "error-text": "Bad Cred"}]}'
    assert send.judge(200, failed, vonage.resp_check).outcome is send.Outcome.FAILED
    voip = request(outgoing("voipms"), "voipms")
    assert voip.body == b"" and "Content-Type" not in voip.headers
    twilio = request(outgoing("twilio"), "twilio", "a~b")
    assert twilio.body == send.build(outgoing("twilio"), TO, FROM, "a~b").body  # untouched
    plain = providers.OutRequest("POST", "https://x.test/", {}, b"x")
    assert providers.adjust_request("", plain, "x") is plain


@pytest.mark.parametrize(("value", "numform", "out"), [
    ("+12025550160", "NANP", "2025550160"), ("0012025550160", "NANP", "2025550160"),
    ("2025550160", "NANP", "2025550160"), ("+442039963012", "NANP", "442039963012"),
    ("+12025550160", "E164", "12025550160"), ("+12025550160", "", "+12025550160")])
def test_format_number(value, numform, out):
    assert providers.format_number(value, numform) == out


def test_acks():
    twiml = providers.ack("twilio", providers.TWIML_EMPTY)
    assert twiml == providers.Ack(providers.TWIML_EMPTY, "text/xml")
    assert providers.ack("signalwire", providers.TWIML_EMPTY).content_type == "text/xml"
    assert providers.ack("plivo", "<Response></Response>").content_type == "text/xml"
    assert providers.ack("46elks", "") == providers.Ack("", "text/plain; charset=utf-8")
    assert providers.ack("46elks", "thanks") is None  # the user asked for a reply SMS
    assert providers.ack("telnyx", "") is None and providers.ack("", "x") is None
    assert incoming("zadarma").key_echo == "zd_echo"
    assert incoming("voipms").resp_ack == "ok"


# ---------------------------------------------------------------- incoming per provider

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

TWILIO_IN = (
    "ToCountry=US&ToState=CA&SmsMessageSid=SM1f0e8ae6ade43cb3c0ce4525424e404f&NumMedia=0&"
    "ToCity=&FromZip=&SmsSid=SM1f0e8ae6ade43cb3c0ce4525424e404f&FromState=RI&"
    "SmsStatus=received&FromCity=&Body=Hello+%E2%9C%93%0Aline+2&FromCountry=US&"
    "To=%2B12025550160&MessagingServiceSid=&ToZip=&NumSegments=1&ReferralNumMedia=0&"
    "MessageSid=SM1f0e8ae6ade43cb3c0ce4525424e404f&AccountSid=AC00000000000000000000000000000001"
    "&From=%2B15017122661&ApiVersion=2010-04-01")

SIGNALWIRE_IN = (
    "MessageSid=0e7e5c3a-7b4f-4a9f-9a8e-7b4fb86e1c3d&SmsSid=0e7e5c3a-7b4f-4a9f-9a8e-7b4fb86e1c3d&"
    "AccountSid=b3877c40-da60-4998-90ad-b792e98472af&From=%2B15017122661&To=%2B12025550160&"
    "Body=Hello+%E2%9C%93%0Aline+2&NumMedia=0&NumSegments=1&SmsStatus=received&"
    "ApiVersion=2010-04-01")

TELNYX_IN = json.dumps({
    "data": {
        "event_type": "message.received",
        "id": "b301ed3f-1490-491f-995f-6e64e69674d4",
        "occurred_at": "2019-12-09T20:16:07.588+00:00",
        "payload": {
            "cc": [], "completed_at": None, "cost": None, "direction": "inbound",
            "encoding": "GSM-7", "errors": [],
            "from": {"carrier": "T-Mobile USA", "line_type": "long_code",
                     "phone_number": "+15017122661"},
            "id": "84cca175-9755-4859-b67f-4730d7f58aa3", "media": [],
            "messaging_profile_id": "740572b6-099c-44a1-89b9-6c92163bc68d",
            "organization_id": "47a530f8-4362-4526-829b-bcee17fd9f7a", "parts": 1,
            "received_at": "2019-12-09T20:16:07.503+00:00", "record_type": "message",
            "sent_at": None, "tags": [], "text": "Hello ✓\nline 2",
            "to": [{"carrier": "Telnyx", "line_type": "Wireless",
                    "phone_number": "+12025550160", "status": "webhook_delivered"}],
            "type": "SMS", "valid_until": None, "webhook_failover_url": None,
            "webhook_url": "https://pbx.example.com/sms/telnyx"},
        "record_type": "event"},
    "meta": {"attempt": 1, "delivered_to": "https://pbx.example.com/sms/telnyx"}})

ELKS_IN = ("direction=incoming&id=sf8425555e5d8db61dda7a7b3f1b91bdb&from=%2B15017122661&"
           "to=%2B12025550160&created=2018-07-13T13%3A57%3A23.741000&"
           "message=Hello+%E2%9C%93%0Aline+2")

ZADARMA_IN = "event=SMS&" + urlencode({"result": json.dumps(
    {"caller_id": "+15017122661", "caller_did": "+12025550160", "text": "Hello ✓\nline 2"})})

VOIPMS_IN = ("to=2025550160&from=5017122661&message=Hello+%E2%9C%93%0Aline+2&id=23434&"
             "date=2023-01-01+12%3A00%3A00&media=")

FLOWROUTE_IN = json.dumps({"data": {
    "attributes": {"status": "delivered", "body": "Hello ✓\nline 2", "direction": "inbound",
                   "amount_nanodollars": 4000000, "to": "12025550160",
                   "message_encoding": 0, "timestamp": "2017-07-21T18:29:57.09Z",
                   "delivery_receipts": [], "amount_display": "$0.0040",
                   "from": "15017122661", "is_mms": False, "message_type": "longcode"},
    "type": "message", "id": "mdr2-39cadeace66e11e7aff806cd7f24ba2d"}})

BANDWIDTH_IN = json.dumps([{
    "type": "message-received", "time": "2016-09-14T18:20:16Z",
    "description": "Incoming message received", "to": "+12025550160",
    "message": {"id": "14762070468292kw2fuqty55yp2b2", "time": "2016-09-14T18:20:16Z",
                "to": ["+12025550160"], "from": "+15017122661", "text": "Hello ✓\nline 2",
                "applicationId": "93de2206-9669-4e07-948d-329f4b722ee2", "media": [],
                "owner": "+12025550160", "direction": "in", "segmentCount": 1}}])

VONAGE_IN = ("msisdn=15017122661&to=12025550160&messageId=0A0000000123ABCD1&"
             "text=Hello+%E2%9C%93%0Aline+2&type=unicode&keyword=HELLO&api-key=abcd1234&"
             "message-timestamp=2020-01-01+12%3A00%3A00")

PLIVO_IN = ("From=15017122661&To=12025550160&Text=Hello+%E2%9C%93%0Aline+2&Type=sms&"
            "MessageUUID=bc3d8f54-5ad0-11ee-b2f7-0242ac110003&TotalAmount=0.00000&"
            "TotalRate=0.00000&Units=1&MessageIntent=&PowerpackUUID=")

# (provider, method, content type, query, body, to, from, message id)
INBOUND = [
    ("twilio", "POST", FORM, "", TWILIO_IN, "+12025550160", "+15017122661",
     "SM1f0e8ae6ade43cb3c0ce4525424e404f"),
    ("signalwire", "POST", FORM, "", SIGNALWIRE_IN, "+12025550160", "+15017122661",
     "0e7e5c3a-7b4f-4a9f-9a8e-7b4fb86e1c3d"),
    ("telnyx", "POST", JSON, "", TELNYX_IN, "+12025550160", "+15017122661",
     "84cca175-9755-4859-b67f-4730d7f58aa3"),
    ("46elks", "POST", FORM, "", ELKS_IN, "+12025550160", "+15017122661",
     "sf8425555e5d8db61dda7a7b3f1b91bdb"),
    ("zadarma", "POST", FORM, "", ZADARMA_IN, "+12025550160", "+15017122661", ""),
    # VoIP.ms's 10-digit NANP numbers become E.164, as the hints are written
    ("voipms", "GET", "", VOIPMS_IN, "", "+12025550160", "+15017122661", "23434"),
    ("flowroute", "POST", "application/vnd.api+json", "", FLOWROUTE_IN, "12025550160",
     "15017122661", "mdr2-39cadeace66e11e7aff806cd7f24ba2d"),
    ("bandwidth", "POST", "application/json; charset=utf-8", "", BANDWIDTH_IN, "+12025550160",
     "+15017122661", "14762070468292kw2fuqty55yp2b2"),
    ("vonage", "GET", "", VONAGE_IN, "", "12025550160", "15017122661", "0A0000000123ABCD1"),
    ("plivo", "POST", FORM, "", PLIVO_IN, "12025550160", "15017122661",
     "bc3d8f54-5ad0-11ee-b2f7-0242ac110003"),
]


@pytest.mark.parametrize(("name", "method", "ctype", "query", "body", "to", "sender", "mid"),
                         INBOUND, ids=[i[0] for i in INBOUND])
def test_inbound_as_the_provider_documents(name, method, ctype, query, body, to, sender, mid):
    got = providers.adapt(name, method, ctype, query, body.encode())
    assert got == Adapted((Inbound(to, sender, "Hello ✓\nline 2", mid),))
    msg = got.messages[0]  # and the edge's rules take it as it is
    assert inbound.valid_party(msg.to, "to") == to
    assert inbound.valid_party(msg.sender, "from") == sender
    assert inbound.valid_text(msg.body, 5000) == msg.body
    assert providers.adapter_applies(name, {})


def test_vonage_post_json_and_form_too():
    fields = dict(parse_qsl(VONAGE_IN))
    for ctype, body in ((JSON, json.dumps(fields)), (FORM, VONAGE_IN)):
        got = providers.adapt("vonage", "POST", ctype, "", body.encode())
        assert got.messages[0].message_id == "0A0000000123ABCD1"


@pytest.mark.parametrize(("name", "ctype", "body"), [
    ("twilio", FORM, "MessageSid=SM1&MessageStatus=delivered&To=%2B1&From=%2B2"),
    ("telnyx", JSON, json.dumps({"data": {"event_type": "message.finalized", "payload": {}}})),
    ("bandwidth", JSON, json.dumps([{"type": "message-delivered", "to": "+1"}])),
    ("46elks", FORM, "id=s1&status=delivered&delivered=2018-07-13T13%3A57%3A23"),
    ("zadarma", FORM, "event=NOTIFY_START&caller_id=1&called_did=2&call_start=x"),
    ("vonage", FORM, "msisdn=1&to=2&status=delivered&err-code=0&messageId=0A1"),
    ("plivo", FORM, "MessageUUID=x&Status=delivered&To=1&From=2"),
    ("flowroute", JSON, json.dumps({"data": {"attributes": {"direction": "outbound"}}})),
])
def test_other_events_are_ignored_not_refused(name, ctype, body):
    got = providers.adapt(name, "POST", ctype, "", body.encode())
    assert got.messages == () and got.ignored


@pytest.mark.parametrize(("name", "ctype", "body"), [
    ("telnyx", JSON, "{not json"),
    ("telnyx", JSON, json.dumps({"data": {"event_type": "message.received", "payload": {
        "to": [], "from": {"phone_number": "+1"}, "text": "x", "id": "1"}}})),
    ("twilio", FORM, "To=%2B1&From=%2B2"),
    ("bandwidth", JSON, json.dumps({"type": "message-received"})),
    ("vonage", FORM, "msisdn=1&to=2&text=x&concat=true&concat-ref=9&concat-total=x&"
                     "concat-part=1"),
    ("twilio", FORM, "To=%2B1&To=%2B3&From=%2B2&Body=x"),
])
def test_malformed_webhooks_are_refused(name, ctype, body):
    with pytest.raises(providers.NotInbound):
        providers.adapt(name, "POST", ctype, "", body.encode())


def test_adapter_yields_to_user_keys():
    assert not providers.adapter_applies("twilio", {"key_body": "Text"})
    assert providers.adapter_applies("twilio", {"key_body": "Body"})
    assert not providers.adapter_applies("", {})


def test_bandwidth_batch_of_two():
    two = json.loads(BANDWIDTH_IN) * 2
    two[1] = {**two[1], "message": {**two[1]["message"], "id": "second", "text": "two"}}
    got = providers.adapt("bandwidth", "POST", JSON, "", json.dumps(two).encode())
    assert [m.message_id for m in got.messages] == ["14762070468292kw2fuqty55yp2b2", "second"]


# ---------------------------------------------------------------- Vonage multi-part


def vonage_part(ref: str, total: int, number: int, text: str, mid: str) -> Inbound:
    query = urlencode({"msisdn": "15017122661", "to": "12025550160", "messageId": mid,
                       "text": text, "type": "text", "concat": "true", "concat-ref": ref,
                       "concat-total": str(total), "concat-part": str(number)})
    got = providers.adapt("vonage", "GET", "", query, b"")
    assert got.messages[0].part == Part(ref, total, number)
    return got.messages[0]


def test_concat_parts_in_any_order_with_duplicates():
    joined = Concat()
    p3 = vonage_part("42", 3, 3, "three", "id-3")
    p1 = vonage_part("42", 3, 1, "one ", "id-1")
    p2 = vonage_part("42", 3, 2, "two ", "id-2")
    assert joined.add(p3, 100) is None
    assert joined.add(p1, 101) is None
    assert joined.add(p1, 102) is None           # the same part again
    whole = joined.add(p2, 103)
    assert whole == Inbound("12025550160", "15017122661", "one two three", "id-1")
    assert joined.pending() == 0
    assert joined.add(p2, 104) is None           # a late duplicate after delivery
    assert joined.pending() == 0


def test_concat_sets_are_kept_apart_and_single_parts_pass():
    joined = Concat()
    assert joined.add(vonage_part("1", 2, 1, "a", "x1"), 0) is None
    assert joined.add(vonage_part("2", 2, 2, "B", "y2"), 0) is None
    assert joined.add(vonage_part("1", 2, 2, "b", "x2"), 1).body == "ab"
    assert joined.pending() == 1
    single = Inbound("1", "2", "whole", "m")
    assert joined.add(single, 2) == single


def test_concat_timeout_delivers_with_gaps_marked():
    joined = Concat(timeout=600)
    joined.add(vonage_part("7", 3, 1, "first ", "z1"), 1000)
    joined.add(vonage_part("7", 3, 3, " last", "z3"), 1100)
    assert joined.expired(1500) == []
    late = joined.expired(1600)
    assert late == [Inbound("12025550160", "15017122661", "first [part 2 of 3 missing] last",
                            "z1")]
    assert joined.pending() == 0


def test_concat_state_is_plain_data_and_survives_a_restart():
    joined = Concat()
    joined.add(vonage_part("5", 2, 2, "world", "w2"), 10)
    state = json.loads(json.dumps(joined.state()))
    again = Concat.from_state(state)
    assert again.add(vonage_part("5", 2, 1, "hello ", "w1"), 20).body == "hello world"
    done = json.loads(json.dumps(again.state()))
    assert done["sets"] == {} and set(done["done"]) == {"w1", "w2"}
    assert Concat.from_state(done).add(vonage_part("5", 2, 1, "hello ", "w1"), 30) is None
    assert Concat.from_state(done).expired(10 + 2 * 86400) == []
