"""The webhook edge: every form an ITSP sends, the strict rules for
to/from/body, source checks with and without a trusted proxy, and a
hypothesis fuzz: whatever arrives, the parser answers with a refusal or a
message whose parties and text obey the rules — never anything else."""

from __future__ import annotations

import ipaddress
import json
import tempfile
from pathlib import Path
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from pbxhost.websms.config import Incoming, Webhook
from pbxhost.websms.inbound import (
    NUMBER,
    SIP_USER,
    Echo,
    Message,
    Refused,
    Request,
    admits_peer,
    parse,
    valid_party,
)

NET = ipaddress.ip_network
ITSP = "185.45.152.42"
IFACE = Incoming(url_path=("/sms",), remt_addr=(NET("185.45.152.0/24"), NET("2001:db8::/32")),
                 key_echo="zd_echo", key_id="id")
HOOK = Webhook(port=8080)
FIELDS = {"To": "+12025550160", "From": "+15017122661", "Body": "Hi ✓"}
# hypothesis keeps caches in ./.hypothesis otherwise: not in the work tree
set_hypothesis_home_dir(str(Path(tempfile.gettempdir()) / "pbxhost-hypothesis"))


def post(body: bytes, content_type: str = "application/x-www-form-urlencoded", path: str = "/sms",
         peer: str = ITSP, query: str = "", headers: dict[str, str] | None = None,
         hook: Webhook = HOOK, ifaces: tuple[Incoming, ...] = (IFACE,)) -> Echo | Message:
    return parse(Request("POST", path, query, content_type, body, peer, headers or {}),
                 hook, ifaces)


def refused(status: int, *args, **kwargs) -> str:
    with pytest.raises(Refused) as err:
        post(*args, **kwargs)
    assert err.value.status == status, err.value
    return err.value.reason


def test_form():
    msg = post(urlencode(FIELDS).encode())
    assert isinstance(msg, Message)
    assert (msg.to, msg.sender, msg.body, msg.client) == ("+12025550160", "+15017122661",
                                                         "Hi ✓", ITSP)


def test_json_keeps_numbers_as_written():
    doc = {"data": {"To": 12025550160, "From": "+15017122661", "Body": "1.50 EUR", "id": 1.50}}
    raw = json.dumps(doc).replace("1.5}", "1.50}").encode()
    msg = post(raw, "application/json")
    assert isinstance(msg, Message)
    assert msg.to == "12025550160" and msg.provider_id == "1.50" and msg.body == "1.50 EUR"


def test_get_query():
    req = Request("GET", "/sms", urlencode(FIELDS), "", b"", ITSP, {})
    msg = parse(req, HOOK, (IFACE,))
    assert isinstance(msg, Message) and msg.body == "Hi ✓"


def test_json_in_a_form_field_as_zadarma_sends():
    result = json.dumps({"caller_id": "x", "To": "+12025550160", "From": "+15017122661",
                         "Body": "multi\nline"})
    msg = post(urlencode({"event": "SMS", "result": result}).encode())
    assert isinstance(msg, Message) and msg.body == "multi\nline"


def test_multipart_form():
    boundary = "XyZ"
    parts = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                    for k, v in FIELDS.items())
    body = (parts + f"--{boundary}--\r\n").encode()
    msg = post(body, f"multipart/form-data; boundary={boundary}")
    assert isinstance(msg, Message) and msg.body == "Hi ✓"


def test_body_that_looks_like_json_is_kept_as_text():
    msg = post(urlencode({**FIELDS, "Body": '{"To": "+1999", "Body": "x"}'}).encode())
    assert isinstance(msg, Message) and msg.body == '{"To": "+1999", "Body": "x"}'
    assert msg.to == FIELDS["To"]


def test_json_without_content_type_and_text_plain():
    assert isinstance(post(json.dumps(FIELDS).encode(), ""), Message)
    assert isinstance(post(json.dumps(FIELDS).encode(), "text/plain"), Message)


def test_echo_probe():
    req = Request("GET", "/sms", "zd_echo=abc123", "", b"", ITSP, {})
    assert parse(req, HOOK, (IFACE,)) == Echo("abc123")
    bad = Request("GET", "/sms", "zd_echo=a%0Ab", "", b"", ITSP, {})
    with pytest.raises(Refused):
        parse(bad, HOOK, (IFACE,))


@pytest.mark.parametrize("value", ["+12025550160", "12025550160", "0046701234567", "jane",
                                   "john.doe", "user_1-2", "1001"])
def test_parties_allowed(value):
    assert valid_party(value, "to") == value


@pytest.mark.parametrize("value", ["", "+", "+1 202 555", "jane\n", "jane\r\nX: y", "a;b",
                                   "a/b", "../etc", "jane..doe", "jane.", ".jane", "-jane",
                                   "a" * 65, "+" + "1" * 21, "jäne", "a,b", "a@b", "${x}", "(a)",
                                   "+1202\x00", 12025550160, None, ["+1"]])
def test_parties_refused(value):
    with pytest.raises(Refused) as err:
        valid_party(value, "to")
    assert err.value.status == 422


@pytest.mark.parametrize(("fields", "status"), [
    ({**FIELDS, "Body": ""}, 422),
    ({**FIELDS, "Body": "a\x00b"}, 422),
    ({**FIELDS, "Body": "bell\x07"}, 422),
    ({**FIELDS, "Body": "x" * 5001}, 413),
    ({"To": FIELDS["To"], "Body": "x"}, 400),
])
def test_body_rules(fields, status):
    refused(status, urlencode(fields).encode())


def test_line_breaks_and_tabs_are_text():
    msg = post(urlencode({**FIELDS, "Body": "a\r\nb\tc\n"}).encode())
    assert isinstance(msg, Message) and msg.body == "a\r\nb\tc\n"


@pytest.mark.parametrize(("body", "ctype", "status"), [
    (b"To=%FF", "application/x-www-form-urlencoded", 400),
    (b'{"To": "\\ud800"}', "application/json", 400),
    (b'{"To": 1, "To": 2}', "application/json", 400),
    (b'{"Body": NaN}', "application/json", 400),
    (b"[" * 3000, "application/json", 400),
    (b'"just a string"', "application/json", 400),
    (b"<sms/>", "application/xml", 415),
    (b"&".join([b"a=1"] * 300), "application/x-www-form-urlencoded", 413),
])
def test_malformed_bodies(body, ctype, status):
    refused(status, body, ctype)


def test_ambiguous_fields_are_refused_same_values_are_fine():
    assert "given twice" in refused(400, urlencode(FIELDS).encode(), query="To=%2B1999")
    assert isinstance(post(urlencode(FIELDS).encode(), query="To=%2B12025550160"), Message)


def test_size_bound():
    refused(413, b"x" * (HOOK.req_maxsize + 1))


def test_source_and_path():
    assert refused(403, urlencode(FIELDS).encode(), peer="203.0.113.9")
    assert refused(404, urlencode(FIELDS).encode(), path="/other")
    assert isinstance(post(urlencode(FIELDS).encode(), peer="::ffff:185.45.152.7"), Message)
    assert isinstance(post(urlencode(FIELDS).encode(), peer="2001:db8::7"), Message)
    with pytest.raises(Refused) as err:
        parse(Request("DELETE", "/sms", "", "", b"", ITSP, {}), HOOK, (IFACE,))
    assert err.value.status == 405


def test_forwarded_for_only_from_the_trusted_proxy():
    xff = {"HTTP_X_FORWARDED_FOR": f"198.51.100.1, {ITSP}"}
    form = urlencode(FIELDS).encode()
    assert refused(403, form, peer="203.0.113.9", headers=xff)        # no proxy configured
    behind = Webhook(port=80, prox_addr=(NET("10.0.0.0/8"),))
    msg = post(form, peer="10.1.2.3", headers=xff, hook=behind)
    assert isinstance(msg, Message) and msg.client == ITSP
    spoof = {"HTTP_X_FORWARDED_FOR": f"{ITSP}, 203.0.113.9"}          # proxy appended the truth
    assert refused(403, form, peer="10.1.2.3", headers=spoof, hook=behind)
    chain = {"HTTP_X_FORWARDED_FOR": f"{ITSP}, 10.9.9.9"}             # two proxies of ours
    assert isinstance(post(form, peer="10.1.2.3", headers=chain, hook=behind), Message)
    assert refused(400, form, peer="10.1.2.3", headers={"HTTP_X_FORWARDED_FOR": "bogus"},
                   hook=behind)
    real_ip = Webhook(port=80, prox_addr=(NET("10.0.0.0/8"),), prox_header="HTTP_X_REAL_IP")
    assert refused(403, form, peer="10.1.2.3", headers=xff, hook=real_ip)


def test_a_local_user_cannot_pass_as_the_proxy_without_its_secret():
    """websmsd on 127.0.0.1 behind a local proxy: a local user connects from
    127.0.0.1 too, with X-Forwarded-For naming the ITSP."""
    local = Webhook(port=80, prox_addr=(NET("127.0.0.1/32"),), prox_secret="s3cret-proxy-key")
    form = urlencode(FIELDS).encode()
    forged = {"HTTP_X_FORWARDED_FOR": ITSP}
    assert refused(403, form, peer="127.0.0.1", headers=forged, hook=local)
    wrong = {**forged, "HTTP_X_WEBSMS_PROXY": "guess"}
    assert refused(403, form, peer="127.0.0.1", headers=wrong, hook=local)
    proxy = {**forged, "HTTP_X_WEBSMS_PROXY": "s3cret-proxy-key"}
    msg = post(form, peer="127.0.0.1", headers=proxy, hook=local)
    assert isinstance(msg, Message) and msg.client == ITSP


def test_interface_by_path_then_address():
    a = Incoming(name="a", url_path=("/in",), remt_addr=(NET("192.0.2.0/24"),), key_body="text")
    b = Incoming(name="b", url_path=("/in",), remt_addr=(NET("198.51.100.0/24"),))
    form = urlencode({**FIELDS, "text": "via a"}).encode()
    msg = post(form, path="/in", peer="192.0.2.5", ifaces=(a, b))
    assert isinstance(msg, Message) and (msg.iface.name, msg.body) == ("a", "via a")
    msg = post(form, path="/in", peer="198.51.100.5", ifaces=(a, b))
    assert isinstance(msg, Message) and (msg.iface.name, msg.body) == ("b", "Hi ✓")


def test_which_peers_may_connect_at_all():
    a = Incoming(name="a", remt_addr=(NET("192.0.2.0/24"),))
    b = Incoming(name="b", remt_addr=(NET("2001:db8::/32"),))
    proxied = Webhook(port=80, prox_addr=(NET("10.0.0.0/8"),))
    for peer, admitted in (("192.0.2.7", True), ("2001:db8::7", True), ("::ffff:192.0.2.7", True),
                           ("198.51.100.1", False), ("10.1.2.3", True), ("", False),
                           ("bogus", False)):
        assert admits_peer(peer, proxied, (a, b)) is admitted, peer
    assert not admits_peer("10.1.2.3", HOOK, (a, b))               # no proxy trusted
    assert admits_peer("198.51.100.1", HOOK, (a, Incoming(name="any")))  # one takes anyone


# ---------------------------------------------------------------- fuzz

ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40) | st.sampled_from([
    "+12025550160", "jane", "a\nb", "..", "a;b", "\x00", "{\"To\":1}", '"\\ud800"'])


def json_values(depth: int = 3) -> st.SearchStrategy:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(ANY_TEXT, inner, max_size=4), max_leaves=12)


VALID = st.sampled_from(["+12025550160", "12025550160", "jane", "john.doe", "+1", "1001"])
HOSTILE = st.sampled_from(["jane\nApplication: System", "a;b", "../x", "jane..x", "a/b",
                          "+1 2", "a,b", "${SHELL(id)}", "\r\n", "", " jane"])
PARTIES = VALID | VALID | VALID | HOSTILE | ANY_TEXT


@st.composite
def requests(draw: st.DrawFn) -> Request:
    extra = st.sampled_from(["id", "zd_echo", "result", "x", "To", "Body"]) | ANY_TEXT
    fields = {"To": draw(PARTIES), "From": draw(PARTIES), "Body": draw(st.text(max_size=60))}
    if draw(st.integers(0, 3)) == 0:
        fields = {k: v for k, v in fields.items() if draw(st.booleans())}
    if draw(st.booleans()):
        fields |= draw(st.dictionaries(extra, ANY_TEXT | json_values().map(json.dumps),
                                       max_size=3))
    kind = draw(st.sampled_from(["form", "json", "nested", "raw", "multipart", "get"]))
    body, ctype, query = b"", "", ""
    if kind == "form":
        body, ctype = urlencode(fields).encode(), "application/x-www-form-urlencoded"
    elif kind in ("json", "nested"):
        doc = fields if kind == "json" else {"data": [draw(json_values()), {"sms": fields}]}
        body = json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()
        ctype = draw(st.sampled_from(["application/json", "", "text/plain"]))
    elif kind == "raw":
        body = draw(st.binary(max_size=300))
        ctype = draw(st.sampled_from(["", "application/json", "application/x-www-form-urlencoded",
                                      "multipart/form-data; boundary=x", "text/plain", "a/b"]))
    elif kind == "multipart":
        body = b"".join(b'--b\r\nContent-Disposition: form-data; name="' + k.encode() + b'"\r\n\r\n'
                        + v.encode() + b"\r\n" for k, v in fields.items())
        body += draw(st.sampled_from([b"--b--\r\n", b"", b"--b"]))
        ctype = "multipart/form-data; boundary=b"
    else:
        query = urlencode(fields)
    method = "GET" if kind == "get" else draw(st.sampled_from(["POST", "POST", "GET"]))
    headers = draw(st.dictionaries(st.just("HTTP_X_FORWARDED_FOR"),
                                   ANY_TEXT | st.just(ITSP), max_size=1))
    peer = draw(st.sampled_from([ITSP, ITSP, "10.1.2.3", "2001:db8::1", "203.0.113.9", "bogus"]))
    path = draw(st.sampled_from(["/sms", "/sms", "/sms", "/sms/../x", "/"]))
    return Request(method, path, query, ctype, body, peer, headers)


@settings(max_examples=1000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_fuzz_parser_refuses_or_returns_clean_values(req):
    hook = Webhook(port=80, prox_addr=(NET("10.0.0.0/8"),))
    try:
        result = parse(req, hook, (IFACE,))
    except Refused as exc:
        assert 400 <= exc.status < 500
        event(f"refused {exc.status}")
        return
    event(type(result).__name__)
    check_clean(result, hook)


def check_clean(result: Echo | Message, hook: Webhook) -> None:
    if isinstance(result, Echo):
        assert result.text.isprintable() and "\n" not in result.text
        return
    for party in (result.to, result.sender):
        assert NUMBER.fullmatch(party) or SIP_USER.fullmatch(party)
        assert not set(party) & set("\r\n;/,:@ ()$") and ".." not in party
    result.body.encode("utf-8")  # no lone surrogates
    assert all(c in "\t\n\r" or ord(c) >= 32 for c in result.body)
    assert result.body and len(result.body) <= hook.body_maxlen


@settings(max_examples=600, deadline=None, database=None)
@given(PARTIES, PARTIES, st.text(max_size=80) | HOSTILE, st.sampled_from(["form", "json", "get"]))
def test_fuzz_values_of_well_formed_requests(to, sender, body, kind):
    fields = {"To": to, "From": sender, "Body": body}
    if kind == "form":
        req = Request("POST", "/sms", "", "application/x-www-form-urlencoded",
                      urlencode(fields).encode(), ITSP, {})
    elif kind == "json":
        req = Request("POST", "/sms", "", "application/json", json.dumps(fields).encode(), ITSP, {})
    else:
        req = Request("GET", "/sms", urlencode(fields), "", b"", ITSP, {})
    try:
        result = parse(req, HOOK, (IFACE,))
    except Refused as exc:
        assert exc.status in (400, 413, 422)
        event(f"refused {exc.status}")
        return
    event(type(result).__name__)
    assert isinstance(result, Message) and result.body == body  # kept exactly
    check_clean(result, HOOK)
