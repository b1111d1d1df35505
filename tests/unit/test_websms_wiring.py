"""providers.py and signatures.py wired into websms: `provider =` in
websms.conf, the signature check and the provider's adapter in inbound.parse,
the provider's ack and the replay memory in the webhook, the outgoing
request of a preset. Signatures come from twilio's RequestValidator."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import urlencode

import pytest

from pbxhost.conf import ConfigError
from pbxhost.websms import config, inbound, providers, send, signatures, webhook
from pbxhost.websms.inbound import Ignored, Message, Refused, Request

TOKEN = "twilio-auth-token-0123456789abcd"
URL = "http://pbx.example.com:8088/sms/in"
FIELDS = {"To": "+12025550160", "From": "+15017122661", "Body": "Hi ✓",
          "MessageSid": "SM" + "a" * 32, "AccountSid": "AC" + "b" * 32}
TWILIO_IN = "[websmsd]\nurl_path = /sms/in\nprovider = twilio\nsign_secret = " + TOKEN + "\n"


def load(tmp_path: Path, text: str) -> config.WebsmsConfig:
    path = tmp_path / "websms.conf"
    path.write_text(text)
    return config.load(path, env={})


def sign(fields: dict[str, str], url: str = URL) -> str:
    from twilio.request_validator import RequestValidator
    return RequestValidator(TOKEN).compute_signature(url, fields)


def twilio_request(fields: dict[str, str], signature: str) -> Request:
    return Request("POST", "/sms/in", "", "application/x-www-form-urlencoded",
                   urlencode(fields).encode(), "192.0.2.20",
                   {"HTTP_HOST": "pbx.example.com:8088", "HTTP_X_TWILIO_SIGNATURE": signature})


# ---------------------------------------------------------------- config


def test_provider_fills_in_both_sides_and_user_keys_win(tmp_path):
    cfg = load(tmp_path, "[websms]\nprovider = twilio\nauth_user = AC123\nauth_secret = t\n"
                         "key_body = Text\n" + TWILIO_IN)
    out, inc = cfg.outgoing[0], cfg.incoming[0]
    assert (out.provider, out.url) == (
        "twilio", "https://api.twilio.com/2010-04-01/Accounts/AC123/Messages.json")
    assert (out.key_to, out.key_body, out.auth_method) == ("To", "Text", "basic")
    assert (inc.provider, inc.sign_scheme, inc.sign_secret) == ("twilio", "twilio", TOKEN)
    assert (inc.key_id, inc.resp_ack) == ("MessageSid", providers.TWIML_EMPTY)
    assert inc.sign_maxage == signatures.DEFAULT_MAX_AGE


def test_indexed_providers_and_account_id(tmp_path):
    cfg = load(tmp_path, "[websms]\nprovider [a] = twilio\nauth_user [a] = u\n"
                         "auth_secret [a] = s\naccount_id [a] = AC9\n"
                         "provider [b] = telnyx\nauth_secret [b] = KEY\n"
                         "[websmsd]\nprovider [t] = 46elks\nurl_path [t] = /elks\n"
                         "url_path [g] = /generic\n")
    a, b = cfg.outgoing
    assert (a.name, a.account_id, a.url_path) == (
        "a", "AC9", "/2010-04-01/Accounts/AC9/Messages.json")
    assert (b.name, b.provider, b.auth_method, b.req_format) == ("b", "telnyx", "bearer", "json")
    elks, generic = cfg.incoming
    assert (elks.provider, elks.key_body, elks.sign_scheme) == ("46elks", "message", "none")
    assert (generic.provider, generic.key_body, generic.sign_scheme) == ("", "Body", "none")


def test_signing_provider_without_secret_fails_at_the_provider_line(tmp_path):
    with pytest.raises(ConfigError, match="sign_secret") as err:
        load(tmp_path, "[websmsd]\nurl_path = /x\nprovider = telnyx\n")
    assert err.value.line == 3
    # sign_scheme = none takes unsigned requests on purpose
    assert load(tmp_path, "[websmsd]\nprovider = telnyx\nsign_scheme = none\n"
                ).incoming[0].sign_scheme == "none"


def test_unknown_provider_and_scheme_and_scheme_without_secret(tmp_path):
    with pytest.raises(ConfigError, match="unknown provider"):
        load(tmp_path, "[websms]\nprovider = nope\n")
    with pytest.raises(ConfigError, match="sign_scheme"):
        load(tmp_path, "[websmsd]\nsign_scheme = md5\n")
    with pytest.raises(ConfigError, match="needs sign_secret"):
        load(tmp_path, "[websmsd]\nsign_scheme = twilio\n")


# ---------------------------------------------------------------- inbound.parse


def twilio_iface(tmp_path: Path) -> config.WebsmsConfig:
    return load(tmp_path, TWILIO_IN)


def test_signed_twilio_request_is_taken(tmp_path):
    cfg = twilio_iface(tmp_path)
    msg = inbound.parse(twilio_request(FIELDS, sign(FIELDS)), cfg.webhook, cfg.incoming)
    assert isinstance(msg, Message)
    assert (msg.to, msg.sender, msg.body, msg.provider_id) == (
        "+12025550160", "+15017122661", "Hi ✓", FIELDS["MessageSid"])


@pytest.mark.parametrize("how", ["wrong", "missing", "tampered"])
def test_bad_signature_is_403(tmp_path, how):
    cfg = twilio_iface(tmp_path)
    sig = {"wrong": sign(FIELDS, "http://elsewhere/sms/in"), "missing": "",
           "tampered": sign(FIELDS)}[how]
    fields = {**FIELDS, "Body": "changed"} if how == "tampered" else FIELDS
    req = twilio_request(fields, sig)
    if how == "missing":
        req = Request(req.method, req.path, req.query, req.content_type, req.body,
                      req.remote_addr, {"HTTP_HOST": "pbx.example.com:8088"})
    with pytest.raises(Refused) as err:
        inbound.parse(req, cfg.webhook, cfg.incoming)
    assert err.value.status == 403 and err.value.reason.startswith("bad signature: ")


def test_sign_url_behind_a_proxy(tmp_path):
    public = "https://sms.example.org/hooks/twilio"
    cfg = load(tmp_path, TWILIO_IN + f"sign_url = {public}\n")
    ok = inbound.parse(twilio_request(FIELDS, sign(FIELDS, public)), cfg.webhook, cfg.incoming)
    assert isinstance(ok, Message)
    with pytest.raises(Refused, match="bad signature"):
        inbound.parse(twilio_request(FIELDS, sign(FIELDS)), cfg.webhook, cfg.incoming)


def test_status_callback_is_ignored_and_not_inbound_is_400(tmp_path):
    cfg = twilio_iface(tmp_path)
    status = {"MessageSid": FIELDS["MessageSid"], "MessageStatus": "delivered"}
    got = inbound.parse(twilio_request(status, sign(status)), cfg.webhook, cfg.incoming)
    assert isinstance(got, Ignored) and "delivered" in got.reason
    broken = {"To": "+12025550160"}
    with pytest.raises(Refused) as err:
        inbound.parse(twilio_request(broken, sign(broken)), cfg.webhook, cfg.incoming)
    assert err.value.status == 400


def test_adapter_reads_telnyx_json_and_validation_still_applies(tmp_path):
    cfg = load(tmp_path, "[websmsd]\nprovider = telnyx\nsign_scheme = none\n")
    doc = {"data": {"event_type": "message.received", "payload": {
        "id": "b0c7e8cb", "text": "Hello ✓", "from": {"phone_number": "+15017122661"},
        "to": [{"phone_number": "+12025550160"}]}}}
    req = Request("POST", "/", "", "application/json", json.dumps(doc).encode(), "192.0.2.20")
    msg = inbound.parse(req, cfg.webhook, cfg.incoming)
    assert isinstance(msg, Message)
    assert (msg.to, msg.sender, msg.body, msg.provider_id) == (
        "+12025550160", "+15017122661", "Hello ✓", "b0c7e8cb")
    doc["data"]["payload"]["text"] = "bell \x07"
    bad = Request("POST", "/", "", "application/json", json.dumps(doc).encode(), "192.0.2.20")
    with pytest.raises(Refused) as err:
        inbound.parse(bad, cfg.webhook, cfg.incoming)
    assert err.value.status == 422


def test_user_field_keys_switch_the_adapter_off(tmp_path):
    cfg = load(tmp_path, "[websmsd]\nprovider = 46elks\nkey_body = text\n")
    req = Request("POST", "/", "", "application/x-www-form-urlencoded",
                  b"to=%2B12025550160&from=%2B15017122661&text=generic", "192.0.2.20")
    msg = inbound.parse(req, cfg.webhook, cfg.incoming)
    assert isinstance(msg, Message) and msg.body == "generic"


# ---------------------------------------------------------------- webhook.handle


def handle(cfg, accept, req: Request, guard: signatures.ReplayGuard) -> webhook.Reply:
    async def accept_async(m: Message) -> bool:
        return accept(m)
    return asyncio.run(webhook.handle(cfg, accept_async, req, guard))


def test_webhook_answers_twiml_and_refuses_a_replay_only_once_stored(tmp_path):
    cfg = twilio_iface(tmp_path)
    taken: list[Message] = []
    reply = handle(cfg, lambda m: taken.append(m) or True,
                   twilio_request(FIELDS, sign(FIELDS)), signatures.ReplayGuard())
    assert reply.status == 200
    assert dict(reply.headers)["Content-Type"] == "text/xml"
    assert reply.body == providers.TWIML_EMPTY.encode()
    assert [m.body for m in taken] == ["Hi ✓"]


def test_replay_key_is_remembered_after_the_store_not_before(tmp_path, monkeypatch):
    cfg = twilio_iface(tmp_path)
    guard = signatures.ReplayGuard()
    real = signatures.verify

    def verify(*args, replay=None, **kw):  # a timestamped scheme's key, as Telnyx's
        real("none", "", *args[2:], replay=replay, **kw)
        if replay is not None and replay.seen("telnyx:abc", args[7]):
            raise signatures.SignatureError("replay of a signed request already taken")
        return signatures.Verified("telnyx", "telnyx:abc", 600.0)

    monkeypatch.setattr(inbound.signatures, "verify", verify)

    def req() -> Request:
        return twilio_request(FIELDS, "x")

    def full(_m: Message) -> bool:
        raise webhook.SpoolError("disk full")

    assert handle(cfg, full, req(), guard).status == 503
    assert len(guard) == 0                     # the provider's retry must still pass
    assert handle(cfg, lambda m: True, req(), guard).status == 200
    again = handle(cfg, lambda m: True, req(), guard)
    assert again.status == 403 and b"replay" in again.body


def test_46elks_gets_an_empty_200():
    iface = config.Incoming(provider="46elks")
    reply = webhook._ack(iface)
    assert (reply.status, reply.body) == (200, b"")


# ---------------------------------------------------------------- send.build


def test_outgoing_twilio_request(tmp_path):
    cfg = load(tmp_path, "[websms]\nprovider = twilio\nauth_user = AC1\nauth_secret = tok\n")
    req = send.build(cfg.outgoing[0], "+15017122661", "+12025550160", "Hi")
    assert (req.method, req.url) == (
        "POST", "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json")
    assert req.headers["Authorization"] == "Basic QUMxOnRvaw=="
    assert req.body == b"Body=Hi&From=%2B12025550160&To=%2B15017122661"


def test_outgoing_voipms_is_a_get_with_nanp_numbers(tmp_path):
    cfg = load(tmp_path, "[websms]\nprovider = voipms\nauth_user = u\nauth_secret = p\n")
    req = send.build(cfg.outgoing[0], "+15017122661", "+12025550160", "Hi")
    assert req.method == "GET" and req.body == b""
    assert "dst=5017122661" in req.url and "did=2025550160" in req.url
    assert "method=sendSMS" in req.url


def test_a_forged_log_line_in_a_delivery_report_stays_in_its_own_line(tmp_path, capsys,
                                                                        monkeypatch):
    """46elks delivery report `status=a\\n<0>FAKE`: without python3-systemd the
    stderr stream under journald would take `<0>` as an emergency of its own."""
    from pbxhost import service
    monkeypatch.setitem(__import__("sys").modules, "systemd", None)
    service.setup_logging("websmsd", {"JOURNAL_STREAM": "8:1", "SYSLOG_LEVEL": "8"})
    cfg = load(tmp_path, "[websmsd]\nprovider = 46elks\nremt_addr = 192.0.2.0/24\n")
    req = Request("POST", "/", "", "application/x-www-form-urlencoded",
                  b"id=s1&status=a%0A%3C0%3EFAKE%1B%5B2J%E2%80%A8", "192.0.2.20")
    reply = handle(cfg, lambda m: True, req, signatures.ReplayGuard())
    assert reply.status == 200
    lines = [line for line in capsys.readouterr().err.splitlines() if "FAKE" in line]
    assert lines == ["<6>webhook request from 192.0.2.20 taken, no SMS: "
                     "delivery report a\\n<0>FAKE\\x1b[2J\\u2028"], lines


def test_nothing_is_parsed_before_the_signature(tmp_path, monkeypatch):
    """A 54 KB multipart body with a bad signature: 403 from the raw bytes,
    and neither the multipart parser nor the provider's adapter ever runs."""
    cfg = twilio_iface(tmp_path)
    boundary = "b0undary"
    parts = "".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\n"
                    f"{'x' * 250}\r\n" for i in range(200))
    body = (parts + f"--{boundary}--\r\n").encode()
    assert len(body) > 54_000

    def never(*args, **kw):
        raise AssertionError("parsed before the signature was checked")
    monkeypatch.setattr(inbound, "_multipart", never)
    monkeypatch.setattr(inbound, "request_pairs", never)
    monkeypatch.setattr(providers, "adapt", never)
    req = Request("POST", "/sms/in", "", f"multipart/form-data; boundary={boundary}", body,
                  "192.0.2.20", {"HTTP_HOST": "pbx.example.com:8088",
                                 "HTTP_X_TWILIO_SIGNATURE": "AAAA"})
    with pytest.raises(Refused) as err:
        inbound.parse(req, cfg.webhook, cfg.incoming)
    assert err.value.status == 403
