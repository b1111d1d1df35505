"""Webhook signatures. Every signature accepted or refused here is made by the
provider's official SDK from PyPI (packaging/pip-test-deps.txt), so our code
never checks itself: twilio's RequestValidator, plivo's signature_v3, vonage's
Auth.sign_params and vonage_jwt, telnyx's verify_webhook_signature (Telnyx's
SDK only verifies: the test makes the Ed25519 key pair, signs as the SDK
documents, and shows the SDK accepts it too). Zadarma has no SDK on PyPI: its
vector was computed with PHP from the reference client, cited below."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from urllib.parse import urlencode

import pytest

from pbxhost.websms.signatures import (
    ReplayGuard,
    SignatureError,
    Verified,
    replay_key,
    request_url,
    verify,
)

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
NOW = 1_700_000_000.0


def refused(*args, **kwargs) -> str:
    with pytest.raises(SignatureError) as exc:
        verify(*args, **kwargs)
    return exc.value.reason


# ---------------------------------------------------------------- Twilio / SignalWire

URL = "https://pbx.example.com/sms/in"
TWILIO_FIELDS = {"MessageSid": "SM1f0e8ae6ade43cb3c0ce4525424e404f", "AccountSid":
                 "AC00000000000000000000000000000001", "From": "+14017122661",
                 "To": "+15558675310", "Body": "Hi & bye = 100% ✓", "NumMedia": "0"}
TOKEN = "12345abcdef"


@pytest.fixture(name="twilio")
def _twilio():
    return pytest.importorskip("twilio.request_validator")


def twilio_post(url: str, fields: dict[str, str], signature: str,
                name: str = "X-Twilio-Signature") -> dict:
    return {"method": "POST", "url": url, "headers": {**FORM, name: signature},
            "body": urlencode(fields).encode(), "params": None, "now": NOW}


def call(scheme: str, secret: str, req: dict, **kw) -> Verified:
    return verify(scheme, secret, req["method"], req["url"], req["headers"], req["body"],
                  req["params"], req["now"], **kw)


def test_twilio_documented_example_from_the_sdk(twilio):
    # Twilio's own docs example: token 12345, this URL and these fields
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    fields = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
              "From": "+12349013030", "To": "+18005551212"}
    sig = twilio.RequestValidator("12345").compute_signature(url, fields)
    assert sig == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert call("twilio", "12345", twilio_post(url, fields, sig)) == Verified("twilio")


def test_twilio_valid_and_tampered(twilio):
    rv = twilio.RequestValidator(TOKEN)
    sig = rv.compute_signature(URL, TWILIO_FIELDS)
    assert rv.validate(URL, TWILIO_FIELDS, sig)
    call("twilio", TOKEN, twilio_post(URL, TWILIO_FIELDS, sig))
    tampered = {**TWILIO_FIELDS, "Body": "Hi & bye = 1000% ✓"}
    assert not rv.validate(URL, tampered, sig)
    assert "does not match" in refused("twilio", TOKEN, **twilio_post(URL, tampered, sig))
    extra = {**TWILIO_FIELDS, "To": "+15558675311"}
    refused("twilio", TOKEN, **twilio_post(URL, extra, sig))
    refused("twilio", TOKEN, **twilio_post(URL + "?x=1", TWILIO_FIELDS, sig))
    refused("twilio", TOKEN, **twilio_post("https://evil.example/sms/in", TWILIO_FIELDS, sig))


def test_twilio_wrong_secret_and_missing_header(twilio):
    sig = twilio.RequestValidator("another-token").compute_signature(URL, TWILIO_FIELDS)
    refused("twilio", TOKEN, **twilio_post(URL, TWILIO_FIELDS, sig))
    req = twilio_post(URL, TWILIO_FIELDS, "x")
    del req["headers"]["X-Twilio-Signature"]
    assert "missing X-Twilio-Signature" in refused("twilio", TOKEN, **req)
    assert "no sign_secret" in refused("twilio", "", **twilio_post(URL, TWILIO_FIELDS, "x"))


def test_twilio_with_and_without_the_default_port(twilio):
    rv = twilio.RequestValidator(TOKEN)
    sig = rv.compute_signature("https://pbx.example.com:443/sms/in", TWILIO_FIELDS)
    call("twilio", TOKEN, twilio_post(URL, TWILIO_FIELDS, sig))
    sig = rv.compute_signature(URL, TWILIO_FIELDS)
    call("twilio", TOKEN, twilio_post("https://pbx.example.com:443/sms/in", TWILIO_FIELDS, sig))


def test_twilio_behind_a_proxy_needs_the_public_url(twilio):
    """Twilio signs the URL it called (the proxy's https one); websmsd sees
    http://127.0.0.1:8080. sign_url gives the public URL back."""
    rv = twilio.RequestValidator(TOKEN)
    public = "https://pbx.example.com/sms/in?tenant=7"
    sig = rv.compute_signature(public, TWILIO_FIELDS)
    local = request_url("", "http", "127.0.0.1:8080", "/sms/in", "tenant=7")
    assert local == "http://127.0.0.1:8080/sms/in?tenant=7"
    refused("twilio", TOKEN, **twilio_post(local, TWILIO_FIELDS, sig))
    seen = request_url("https://pbx.example.com/sms/in", "http", "127.0.0.1:8080", "/sms/in",
                       "tenant=7")
    assert seen == public
    call("twilio", TOKEN, twilio_post(seen, TWILIO_FIELDS, sig))


def test_twilio_json_body_via_body_sha256(twilio):
    rv = twilio.RequestValidator(TOKEN)
    body = json.dumps({"To": "+15558675310", "Body": "hello"})
    url = f"{URL}?bodySHA256={rv.compute_hash(body)}"
    sig = rv.compute_signature(url, {})
    assert rv.validate(url, body, sig)
    req = {"method": "POST", "url": url, "body": body.encode(), "params": None, "now": NOW,
           "headers": {"Content-Type": "application/json", "X-Twilio-Signature": sig}}
    call("twilio", TOKEN, req)
    bad = {**req, "body": body.replace("hello", "hellO").encode()}
    assert not rv.validate(url, bad["body"].decode(), sig)
    assert "bodySHA256" in refused("twilio", TOKEN, **bad)


def test_twilio_shared_key_hmac_sha256(twilio):
    rv = twilio.RequestValidator("shared-key-secret")
    sig = rv.compute_signature(URL, TWILIO_FIELDS, twilio.HMAC_SHA256)
    req = twilio_post(URL, TWILIO_FIELDS, sig)
    req["headers"]["X-Twilio-Webhooks-Signature-Settings"] = "key=WS123,algorithm=HMAC_SHA256"
    assert rv.validate(URL, TWILIO_FIELDS, sig, twilio.get_signature_algorithm(
        req["headers"]["X-Twilio-Webhooks-Signature-Settings"]))
    call("twilio", "shared-key-secret", req)
    del req["headers"]["X-Twilio-Webhooks-Signature-Settings"]  # then it is HMAC-SHA1
    refused("twilio", "shared-key-secret", **req)


def test_twilio_repeated_fields_and_wsgi_header_names(twilio):
    rv = twilio.RequestValidator(TOKEN)

    class Multi(dict):
        def getall(self, key):
            return self[key]
    sig = rv.compute_signature(URL, Multi({"MediaUrl": ["b", "a"], "Body": ["x"]}))
    req = {"method": "POST", "url": URL, "body": b"MediaUrl=b&MediaUrl=a&Body=x", "now": NOW,
           "params": None, "headers": {"CONTENT_TYPE": "application/x-www-form-urlencoded",
                                       "HTTP_X_TWILIO_SIGNATURE": sig}}
    call("twilio", TOKEN, req)


def test_signalwire_uses_its_header_and_the_compatible_scheme(twilio):
    # SignalWire's LaML webhooks are signed as Twilio signs (its SDK subclasses
    # twilio's RequestValidator), with the Signing Key, in X-SignalWire-Signature
    sig = twilio.RequestValidator("PSKsigningkey").compute_signature(URL, TWILIO_FIELDS)
    call("signalwire", "PSKsigningkey",
         twilio_post(URL, TWILIO_FIELDS, sig, "X-SignalWire-Signature"))
    call("signalwire", "PSKsigningkey", twilio_post(URL, TWILIO_FIELDS, sig))
    refused("signalwire", "PSKother", **twilio_post(URL, TWILIO_FIELDS, sig,
                                                    "X-SignalWire-Signature"))


# ---------------------------------------------------------------- Telnyx


@pytest.fixture(name="telnyx")
def _telnyx():
    pytest.importorskip("nacl")
    return pytest.importorskip("telnyx.lib.webhook_verification")


def telnyx_signed(body: bytes, stamp: int):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    # the SDK's documented scheme: Ed25519 over "{timestamp}|{payload}"
    sig = base64.b64encode(key.sign(f"{stamp}|".encode() + body)).decode()
    headers = {"Content-Type": "application/json", "telnyx-signature-ed25519": sig,
               "telnyx-timestamp": str(stamp)}
    return public.decode(), headers


TELNYX_BODY = json.dumps({"data": {"event_type": "message.received", "payload": {
    "text": "Hello ✓", "id": "84cca175-9755-4859-b67f-4730d7f58aa3"}}}).encode()


def test_telnyx_valid_tampered_wrong_key(telnyx):
    now = int(time.time())  # the SDK checks the timestamp against the real clock
    public, headers = telnyx_signed(TELNYX_BODY, now)
    telnyx.verify_webhook_signature(TELNYX_BODY, headers, public)  # the SDK accepts it
    done = verify("telnyx", public, "POST", URL, headers, TELNYX_BODY, None, now)
    assert done.replay_key and done.replay_ttl == 600
    tampered = TELNYX_BODY.replace(b"Hello", b"Hellp")
    with pytest.raises(telnyx.WebhookVerificationError):
        telnyx.verify_webhook_signature(tampered, headers, public)
    assert "does not match" in refused("telnyx", public, "POST", URL, headers, tampered, None,
                                       now)
    other, _ = telnyx_signed(TELNYX_BODY, now)
    with pytest.raises(telnyx.WebhookVerificationError):
        telnyx.verify_webhook_signature(TELNYX_BODY, headers, other)
    refused("telnyx", other, "POST", URL, headers, TELNYX_BODY, None, now)
    moved = {**headers, "telnyx-timestamp": str(now + 1)}  # the timestamp is signed too
    refused("telnyx", public, "POST", URL, moved, TELNYX_BODY, None, now)


def test_telnyx_old_timestamp_and_missing_headers(telnyx):
    now = int(time.time())
    public, headers = telnyx_signed(TELNYX_BODY, now - 301)
    with pytest.raises(telnyx.WebhookVerificationError, match="too old"):
        telnyx.verify_webhook_signature(TELNYX_BODY, headers, public)
    assert "off" in refused("telnyx", public, "POST", URL, headers, TELNYX_BODY, None, now)
    verify("telnyx", public, "POST", URL, headers, TELNYX_BODY, None, now, max_age=600)
    for name in ("telnyx-signature-ed25519", "telnyx-timestamp"):
        partial = {k: v for k, v in headers.items() if k != name}
        assert "missing" in refused("telnyx", public, "POST", URL, partial, TELNYX_BODY, None,
                                    now, max_age=600)


def test_telnyx_replay_within_the_window_is_refused(telnyx):
    now = int(time.time())
    public, headers = telnyx_signed(TELNYX_BODY, now)
    guard = ReplayGuard()
    done = verify("telnyx", public, "POST", URL, headers, TELNYX_BODY, None, now, replay=guard)
    verify("telnyx", public, "POST", URL, headers, TELNYX_BODY, None, now, replay=guard)
    guard.remember(done.replay_key, now, done.replay_ttl)  # stored: now it is taken
    assert "replay" in refused("telnyx", public, "POST", URL, headers, TELNYX_BODY, None,
                               now + 10, replay=guard)


def test_telnyx_pem_public_key(telnyx):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    now = int(time.time())
    public, headers = telnyx_signed(TELNYX_BODY, now)
    pem = Ed25519PublicKey.from_public_bytes(base64.b64decode(public)).public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    verify("telnyx", pem, "POST", URL, headers, TELNYX_BODY, None, now)


# ---------------------------------------------------------------- Plivo


@pytest.fixture(name="plivo")
def _plivo():
    return pytest.importorskip("plivo.utils.signature_v3")


PLIVO_FIELDS = {"From": "14155551234", "To": "14155556789", "Text": "Hello ✓ & more",
                "Type": "sms", "MessageUUID": "bc3d8f54-5ad0-11ee-b2f7-0242ac110003"}
PLIVO_TOKEN = "MzA1ZDg3YzZhNjA2ZmNmYjE0NmU1ZWFhZjRkOTc3"


def plivo_signed(plivo, method: str, url: str, fields: dict[str, str], nonce: str,
                 token: str = PLIVO_TOKEN) -> dict[str, str]:
    base = (plivo.construct_get_url(url, dict(fields)) if method == "GET"
            else plivo.construct_post_url(url, dict(fields)))
    # as validate_v3_signature calls it: the base URL as text (UTF-8), nonce and token as bytes
    sig = plivo.get_signature_v3(token.encode(), base.decode(), nonce.encode()).decode()
    assert plivo.validate_v3_signature(method, url, nonce, token, sig, dict(fields))
    return {**FORM, "X-Plivo-Signature-V3": sig, "X-Plivo-Signature-V3-Nonce": nonce}


def test_plivo_post_valid_and_tampered(plivo):
    url = "https://pbx.example.com/sms/in?tenant=7"
    headers = plivo_signed(plivo, "POST", url, PLIVO_FIELDS, "12345678901234567890")
    body = urlencode(PLIVO_FIELDS).encode()
    done = verify("plivo", PLIVO_TOKEN, "POST", url, headers, body, None, NOW)
    assert done.replay_key.startswith("plivo:") and done.replay_key.endswith(
        hashlib.sha256(body).hexdigest()[:32])
    tampered = urlencode({**PLIVO_FIELDS, "Text": "Hello"}).encode()
    assert not plivo.validate_v3_signature("POST", url, "12345678901234567890", PLIVO_TOKEN,
                                           headers["X-Plivo-Signature-V3"],
                                           {**PLIVO_FIELDS, "Text": "Hello"})
    refused("plivo", PLIVO_TOKEN, "POST", url, headers, tampered, None, NOW)
    refused("plivo", PLIVO_TOKEN, "POST", URL, headers, body, None, NOW)
    refused("plivo", PLIVO_TOKEN, "GET", url, headers, body, None, NOW)
    refused("plivo", "wrong-token", "POST", url, headers, body, None, NOW)
    other_nonce = {**headers, "X-Plivo-Signature-V3-Nonce": "99999999999999999999"}
    refused("plivo", PLIVO_TOKEN, "POST", url, other_nonce, body, None, NOW)


def test_plivo_post_without_query_and_get(plivo):
    headers = plivo_signed(plivo, "POST", URL, PLIVO_FIELDS, "n1")
    verify("plivo", PLIVO_TOKEN, "POST", URL, headers, urlencode(PLIVO_FIELDS).encode(),
           None, NOW)
    # the SDK parses a GET query as ASCII only: an ASCII text here
    url = URL + "?" + urlencode({**PLIVO_FIELDS, "Text": "Hello & more"})
    headers = plivo_signed(plivo, "GET", url, {}, "n2")
    verify("plivo", PLIVO_TOKEN, "GET", url, headers, b"", None, NOW)
    refused("plivo", PLIVO_TOKEN, "GET", url.replace("Hello", "Hallo"), headers, b"", None, NOW)


def test_plivo_missing_headers_and_rotated_tokens(plivo):
    headers = plivo_signed(plivo, "POST", URL, PLIVO_FIELDS, "n3")
    body = urlencode(PLIVO_FIELDS).encode()
    for name in ("X-Plivo-Signature-V3", "X-Plivo-Signature-V3-Nonce"):
        partial = {k: v for k, v in headers.items() if k != name}
        assert "missing" in refused("plivo", PLIVO_TOKEN, "POST", URL, partial, body, None, NOW)
    old = plivo_signed(plivo, "POST", URL, PLIVO_FIELDS, "n3", token="old-token")
    both = {**headers, "X-Plivo-Signature-V3": old["X-Plivo-Signature-V3"] + ","
            + headers["X-Plivo-Signature-V3"]}
    verify("plivo", PLIVO_TOKEN, "POST", URL, both, body, None, NOW)


def test_plivo_replayed_nonce_is_refused(plivo):
    headers = plivo_signed(plivo, "POST", URL, PLIVO_FIELDS, "n4")
    body = urlencode(PLIVO_FIELDS).encode()
    guard = ReplayGuard()
    done = verify("plivo", PLIVO_TOKEN, "POST", URL, headers, body, None, NOW, replay=guard)
    guard.remember(done.replay_key, NOW, done.replay_ttl)
    assert "replay" in refused("plivo", PLIVO_TOKEN, "POST", URL, headers, body, None,
                               NOW + 3600, replay=guard)
    # forgotten after its time: then only the MessageUUID dedup protects
    verify("plivo", PLIVO_TOKEN, "POST", URL, headers, body, None, NOW + 86401, replay=guard)


# ---------------------------------------------------------------- Vonage


@pytest.fixture(name="vonage")
def _vonage():
    return pytest.importorskip("vonage_http_client.auth")


VONAGE_FIELDS = {"msisdn": "447700900001", "to": "447700900000", "messageId":
                 "0A0000000123ABCD1", "text": "Hello & welcome = ✓", "type": "unicode",
                 "keyword": "HELLO", "api-key": "abcd1234",
                 "message-timestamp": "2023-11-14 22:13:20", "nonce": "6a6b2c1f-9c1e"}
VONAGE_SECRET = "sig-secret-0123456789"


def vonage_signed(vonage, method: str, secret: str = VONAGE_SECRET,
                  stamp: int = int(NOW)) -> dict[str, str]:
    auth = vonage.Auth(api_key="abcd1234", signature_secret=secret, signature_method=method)
    fields = {**VONAGE_FIELDS, "timestamp": str(stamp)}
    fields["sig"] = auth.sign_params(dict(fields))
    assert auth.check_signature(dict(fields))
    return fields


@pytest.mark.parametrize("method", ["md5", "sha1", "sha256", "sha512"])
def test_vonage_hmac_methods_get_post_json(vonage, method):
    fields = vonage_signed(vonage, method)
    verify("vonage", VONAGE_SECRET, "GET", URL + "?" + urlencode(fields), {}, b"", None, NOW)
    verify("vonage", VONAGE_SECRET, "POST", URL, FORM, urlencode(fields).encode(), None, NOW)
    body = json.dumps(fields).encode()
    done = verify("vonage", VONAGE_SECRET, "POST", URL, {"Content-Type": "application/json"},
                  body, None, NOW)
    assert done.replay_key == replay_key("vonage", bytes.fromhex(fields["sig"]), body)


def test_vonage_tampered_wrong_secret_missing_old(vonage):
    fields = vonage_signed(vonage, "sha256")
    tampered = {**fields, "text": "Hello & welcome = ✗"}
    assert not vonage.Auth(api_key="k", signature_secret=VONAGE_SECRET,
                           signature_method="sha256").check_signature(dict(tampered))
    refused("vonage", VONAGE_SECRET, "POST", URL, FORM, urlencode(tampered).encode(), None, NOW)
    refused("vonage", "other-secret", "POST", URL, FORM, urlencode(fields).encode(), None, NOW)
    unsigned = {k: v for k, v in fields.items() if k != "sig"}
    assert "missing sig" in refused("vonage", VONAGE_SECRET, "POST", URL, FORM,
                                    urlencode(unsigned).encode(), None, NOW)
    old = vonage_signed(vonage, "sha256", stamp=int(NOW) - 3600)
    assert "timestamp" in refused("vonage", VONAGE_SECRET, "POST", URL, FORM,
                                  urlencode(old).encode(), None, NOW)
    wrong_method = vonage_signed(vonage, "sha1")  # signed with SHA-1, sig shortened to look MD5
    wrong_method["sig"] = wrong_method["sig"][:32]
    refused("vonage", VONAGE_SECRET, "POST", URL, FORM, urlencode(wrong_method).encode(), None,
            NOW)


def test_vonage_replayed_nonce_refused(vonage):
    fields = vonage_signed(vonage, "sha512")
    guard = ReplayGuard()
    body = urlencode(fields).encode()
    done = verify("vonage", VONAGE_SECRET, "POST", URL, FORM, body, None, NOW, replay=guard)
    guard.remember(done.replay_key, NOW, done.replay_ttl)
    refused("vonage", VONAGE_SECRET, "POST", URL, FORM, body, None, NOW + 5, replay=guard)


def test_vonage_messages_api_jwt(vonage):
    jwt_check = pytest.importorskip("vonage_jwt.verify_jwt")
    jwt = pytest.importorskip("jwt")
    body = json.dumps({"channel": "sms", "message_uuid": "aaaaaaaa-bbbb", "to": "447700900000",
                       "from": "447700900001", "text": "Hello ✓"}).encode()
    claims = {"iat": int(NOW), "jti": "c0ffee", "iss": "Vonage",
              "payload_hash": hashlib.sha256(body).hexdigest(), "api_key": "abcd1234",
              "application_id": "aaaaaaaa-0000"}
    token = jwt.encode(claims, VONAGE_SECRET, algorithm="HS256")
    assert jwt_check.verify_signature(token, VONAGE_SECRET)   # the SDK's own check
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    done = verify("vonage-jwt", VONAGE_SECRET, "POST", URL, headers, body, None, NOW + 10)
    assert done.replay_key.startswith("vonage-jwt:")
    unhashed = jwt.encode({k: v for k, v in claims.items() if k != "payload_hash"},
                          VONAGE_SECRET, algorithm="HS256")
    assert "no payload_hash" in refused(   # it would vouch for any body
        "vonage-jwt", VONAGE_SECRET, "POST", URL,
        {**headers, "Authorization": f"Bearer {unhashed}"}, b'{"text": "forged"}', None, NOW)
    assert "payload_hash" in refused("vonage-jwt", VONAGE_SECRET, "POST", URL, headers,
                                     body.replace(b"Hello", b"Hallo"), None, NOW)
    assert not jwt_check.verify_signature(token, "other-secret")
    refused("vonage-jwt", "other-secret", "POST", URL, headers, body, None, NOW)
    refused("vonage-jwt", VONAGE_SECRET, "POST", URL, headers, body, None, NOW + 3600)
    none_alg = jwt.encode(claims, None, algorithm="none")
    refused("vonage-jwt", VONAGE_SECRET, "POST", URL,
            {"Authorization": f"Bearer {none_alg}"}, body, None, NOW)
    refused("vonage-jwt", VONAGE_SECRET, "POST", URL, {}, body, None, NOW)


# ---------------------------------------------------------------- Zadarma (no SDK on PyPI)

# Reference client github.com/zadarma/user-api-v1: lib/Webhook/NotifySms.php signs
# `result` (getSignatureString), lib/Client.php encodeSignature() is
# base64_encode(hash_hmac('sha1', $signatureString, $secret)). Vector made with
# PHP 8.2 running exactly that expression and json_encode/http_build_query:
ZADARMA_SECRET = "a3f5c1d2e4b6978812ab34cd56ef7890"
ZADARMA_BODY = (b"event=SMS&result=%7B%22caller_id%22%3A%22%2B34911234567%22%2C%22caller_did"
                b"%22%3A%22%2B442039963012%22%2C%22text%22%3A%22Hola+%5Cu2713%5Cnline+2%22%7D")
ZADARMA_SIG = "OTA5YmQ5ZmE3ZDgyYzdjNDgzMWMwOWU0YWQ2NzQ3N2I0NzNjNjk5OA=="


def test_zadarma_reference_vector():
    headers = {**FORM, "Signature": ZADARMA_SIG}
    assert verify("zadarma", ZADARMA_SECRET, "POST", URL, headers, ZADARMA_BODY, None,
                  NOW) == Verified("zadarma")
    tampered = ZADARMA_BODY.replace(b"Hola", b"Hole")
    refused("zadarma", ZADARMA_SECRET, "POST", URL, headers, tampered, None, NOW)
    refused("zadarma", "b3f5c1d2e4b6978812ab34cd56ef7890", "POST", URL, headers, ZADARMA_BODY,
            None, NOW)
    assert "missing Signature" in refused("zadarma", ZADARMA_SECRET, "POST", URL, FORM,
                                          ZADARMA_BODY, None, NOW)
    other_event = ZADARMA_BODY.replace(b"event=SMS", b"event=NOTIFY_START")
    refused("zadarma", ZADARMA_SECRET, "POST", URL, headers, other_event, None, NOW)


# ---------------------------------------------------------------- Basic, none, misc


def test_basic_credentials():
    urllib3 = pytest.importorskip("urllib3")
    good = urllib3.util.make_headers(basic_auth="hook:s3cret")
    verify("basic", "hook:s3cret", "POST", URL, good, b"", None, NOW)
    bad = urllib3.util.make_headers(basic_auth="hook:s3cre7")
    refused("basic", "hook:s3cret", "POST", URL, bad, b"", None, NOW)
    refused("basic", "hook:s3cret", "POST", URL, {"Authorization": "Bearer x"}, b"", None, NOW)
    refused("basic", "hook:s3cret", "POST", URL, {}, b"", None, NOW)


def _flip_unused_bits(b64: str) -> str:
    """The same bytes, another spelling: a 64-byte signature's base64 ends in
    `==` after a character whose low 4 bits are not decoded."""
    import string
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
    last = b64.rstrip("=")
    i = alphabet.index(last[-1])
    other = alphabet[i ^ 1]
    flipped = last[:-1] + other + "=" * (len(b64) - len(last))
    assert flipped != b64 and base64.b64decode(flipped) == base64.b64decode(b64)
    return flipped


def test_telnyx_replay_with_another_spelling_of_its_signature_is_refused(telnyx):
    now = int(time.time())
    public, headers = telnyx_signed(TELNYX_BODY, now)
    guard = ReplayGuard()
    done = verify("telnyx", public, "POST", URL, headers, TELNYX_BODY, None, now, replay=guard)
    guard.remember(done.replay_key, now, done.replay_ttl)
    respelled = {**headers, "telnyx-signature-ed25519":
                 _flip_unused_bits(headers["telnyx-signature-ed25519"])}
    assert "replay" in refused("telnyx", public, "POST", URL, respelled, TELNYX_BODY, None,
                               now + 1, replay=guard)


def test_replay_memory_survives_a_restart(tmp_path, telnyx):
    now = int(time.time())
    public, headers = telnyx_signed(TELNYX_BODY, now)
    path = tmp_path / "replay"
    guard = ReplayGuard(path=path, now=now)
    done = verify("telnyx", public, "POST", URL, headers, TELNYX_BODY, None, now, replay=guard)
    guard.remember(done.replay_key, now, done.replay_ttl)
    guard.remember("short-lived", now, 5)
    guard.close()
    again = ReplayGuard(path=path, now=now + 10)  # websmsd restarted
    assert "replay" in refused("telnyx", public, "POST", URL, headers, TELNYX_BODY, None,
                               now + 10, replay=again)
    assert len(again) == 1 and path.read_text().count("\n") == 1  # the expired one is gone
    again.close()
    busy = ReplayGuard(path=tmp_path / "busy", now=now)
    for i in range(5000):  # the file is rewritten, not grown for ever
        busy.remember(f"k{i}", now + i // 10, 1)  # each expired a second later
    assert (tmp_path / "busy").read_text().count("\n") < 2000


def test_none_and_unknown_scheme():
    assert verify("none", "", "POST", URL, {}, b"", None, NOW) == Verified("none")
    assert "unknown" in refused("hmac", "x", "POST", URL, {}, b"", None, NOW)


def test_replay_guard_is_bounded_and_expires():
    guard = ReplayGuard(capacity=3)
    for i in range(5):
        guard.remember(f"k{i}", NOW, 60)
    assert len(guard) == 3 and not guard.seen("k0", NOW) and guard.seen("k4", NOW)
    assert not guard.seen("k4", NOW + 61)
    guard.remember("k5", NOW + 61, 60)
    assert len(guard) == 1
    guard.remember("", NOW, 60)
    assert len(guard) == 1


def test_request_url_rules():
    assert request_url("https://p.example/sms/in?old=1", "http", "x", "/sms/in", "y=2") == \
        "https://p.example/sms/in?y=2"
    assert request_url("", "http", "127.0.0.1:8080", "/sms/ä b", "") == \
        "http://127.0.0.1:8080/sms/%C3%A4%20b"
