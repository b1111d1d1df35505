"""Outgoing requests: fields and quirks, every auth method, and the verdict
on the ITSP's answer (sent, retry, failed)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from urllib.parse import parse_qsl

import pytest

from pbxhost.websms import send
from pbxhost.websms.config import Outgoing
from pbxhost.websms.send import Outcome

API = Outgoing(url_host="https://api.example.com", url_path="/v1/sms/send/", auth_user="key",
               auth_secret="secret")


def form(req: send.HttpRequest) -> dict[str, str]:
    return dict(parse_qsl(req.body.decode(), keep_blank_values=True))


def test_basic_form_request():
    req = send.build(API, "+15017122661", "+12025550160", "Hi & bye = 100% 😀")
    assert req.url == "https://api.example.com/v1/sms/send/" and req.method == "POST"
    assert req.headers["Authorization"] == "Basic " + base64.b64encode(b"key:secret").decode()
    assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert form(req) == {"To": "+15017122661", "From": "+12025550160", "Body": "Hi & bye = 100% 😀"}
    assert req.body.startswith(b"Body=")  # sorted by key, as the seed did


def test_json_and_bearer():
    iface = Outgoing(url_host="https://x.test", auth_method="bearer", auth_secret="tok",
                     req_format="json", key_to="to", key_from="from", key_body="text")
    req = send.build(iface, "+1", "+2", "line\nbreak")
    assert req.headers["Authorization"] == "Bearer tok"
    assert json.loads(req.body) == {"to": "+1", "from": "+2", "text": "line\nbreak"}


def test_plain_puts_credentials_in_the_body_and_none_sends_nothing():
    iface = Outgoing(auth_method="plain", auth_user="u", auth_secret="p", key_user="api_user",
                     key_secret="api_key")
    req = send.build(iface, "+1", "+2", "x")
    assert "Authorization" not in req.headers
    assert form(req)["api_user"] == "u" and form(req)["api_key"] == "p"
    none = send.build(Outgoing(auth_method="none"), "+1", "+2", "x")
    assert "Authorization" not in none.headers and set(form(none)) == {"To", "From", "Body"}


def test_zadarma_signature_as_its_php_client_computes_it():
    iface = Outgoing(url_host="https://api.zadarma.com", url_path="/v1/sms/send/",
                     auth_method="zadarma", auth_user="KEY", auth_secret="SECRET",
                     key_to="number", key_from="caller_id", key_body="message")
    req = send.build(iface, "+1234", "+5678", "a b~c")
    query = req.body.decode()
    assert query == "caller_id=%2B5678&message=a+b%7Ec&number=%2B1234"  # PHP's RFC 1738
    md5 = hashlib.md5(query.encode()).hexdigest()
    mac = hmac.new(b"SECRET", ("/v1/sms/send/" + query + md5).encode(), hashlib.sha1)
    assert req.headers["Authorization"] == "KEY:" + base64.b64encode(
        mac.hexdigest().encode()).decode()


@pytest.mark.parametrize(("value", "numform", "out"), [
    ("+12025550160", "E164", "12025550160"), ("0046701234567", "E164", "46701234567"),
    ("12025550160", "E164", "12025550160"), ("+12025550160", "", "+12025550160"),
    ("+12025550160", "E.164", "12025550160")])
def test_numform(value, numform, out):
    assert send.number(value, numform) == out


def test_unicode_quirks_and_static_pairs():
    ucs2 = Outgoing(val_unicode="UCS-2")
    assert form(send.build(ucs2, "+1", "+2", "ok 😀 ä"))["Body"] == "ok  ä"
    flag = Outgoing(val_unicode="unicode=1", val_static=(("channel", "sms"), ("v", "2")))
    assert form(send.build(flag, "+1", "+2", "😀"))["unicode"] == "1"
    assert "unicode" not in form(send.build(flag, "+1", "+2", "plain"))
    assert form(send.build(flag, "+1", "+2", "x"))["channel"] == "sms"


@pytest.mark.parametrize(("check", "reply", "ok"), [
    ("", b"anything", True),
    ("status=success", b'{"status":"success"}', True),
    ("status=success", b'{"data":[{"x":1},{"status":"success"}]}', True),
    ("status=success", b'{"status":"error"}', False),
    ("status=success", b"status=success", False),  # not JSON
    ("messages=1", b'{"messages":1}', True),
    ("cost=0.24", b'{"cost":0.24}', True),
    ("ok=true", b'{"ok":true}', True),
    ("/queued|sent/", b"<r>queued</r>", True),
    ("/queued|sent/", b"<r>rejected</r>", False),
])
def test_resp_check(check, reply, ok):
    assert (send.check_reply(check, reply) is None) == ok


@pytest.mark.parametrize(("status", "outcome"), [
    (200, Outcome.SENT), (201, Outcome.SENT), (202, Outcome.SENT), (429, Outcome.RETRY),
    (500, Outcome.RETRY), (503, Outcome.RETRY), (400, Outcome.FAILED), (401, Outcome.FAILED),
    (404, Outcome.FAILED), (302, Outcome.FAILED)])
def test_judge(status, outcome):
    assert send.judge(status, b"{}", "").outcome is outcome


def test_reply_failing_the_check_is_permanent():
    result = send.judge(200, b'{"status":"error","message":"no credit"}', "status=success")
    assert result.outcome is Outcome.FAILED and "no credit" in result.detail


def test_unreachable_itsp_is_retried():
    iface = Outgoing(url_host="http://127.0.0.1:9", timeout=2)
    result = send.post(iface, send.build(iface, "+1", "+2", "x"))
    assert result.outcome is Outcome.RETRY and "127.0.0.1:9" in result.detail
