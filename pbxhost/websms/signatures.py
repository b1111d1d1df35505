"""Verification of the signatures ITSPs put on their webhooks. Pure: the
request, the secret and the clock come in as arguments; the only state is
ReplayGuard, a bounded memory of signed requests already taken.

One entry point, `verify(scheme, secret, method, url, headers, body, params,
now)`, raises SignatureError(reason) or returns Verified. Schemes:

- `twilio`, `signalwire`: base64(HMAC-SHA1(token, URL + sorted form fields)),
  header X-Twilio-Signature / X-SignalWire-Signature; a JSON body is bound by
  the `bodySHA256` query parameter. Twilio's SharedKey (HMAC-SHA256, header
  X-Twilio-Webhooks-Signature-Settings) too. No timestamp, no nonce: a replay
  cannot be told from a retry, so duplicates are left to the provider's
  message id (MessageSid).
- `telnyx`: Ed25519 over `timestamp|body` (telnyx-signature-ed25519,
  telnyx-timestamp), the timestamp within `max_age`; a signature seen once
  is refused within that window.
- `plivo`: V3, base64(HMAC-SHA256(token, URL + fields + "." + nonce)); no
  timestamp, so a nonce seen once is refused while remembered.
- `vonage`: SMS API signed webhooks, the `sig` field: hex HMAC (MD5, SHA-1,
  SHA-256 or SHA-512, told apart by length) over the sorted `&key=value`
  fields; `timestamp` within `max_age`. The legacy "MD5 hash" method is not
  supported (the vonage SDK dropped it too): choose an HMAC in the dashboard.
- `vonage-jwt`: Messages API, `Authorization: Bearer` HS256 JWT whose
  `payload_hash` is the SHA-256 of the body (a JWT without it is refused: it
  would vouch for any body), `iat` within `max_age`.

The replay key of a scheme with a timestamp or nonce is the decoded
signature (for an HMAC, ours) and the SHA-256 of the body, so another
spelling of the same signature (flipped unused base64 bits) is no new request.
- `zadarma`: header `Signature` = base64(hex(HMAC-SHA1(secret, result))) for
  event SMS, as Zadarma's PHP client (user-api-v1) computes it. No timestamp.
- `basic`: `Authorization: Basic` equal to `user:password` in the secret, for
  providers that only offer credentials in the callback URL.
- `none`: nothing checked.

`url` is the URL as the provider called it (scheme, host, port, path and
query): behind a reverse proxy that is the public URL, not ours."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, quote, urlsplit, urlunsplit

SCHEMES = ("none", "twilio", "signalwire", "telnyx", "plivo", "vonage", "vonage-jwt",
           "zadarma", "basic")
DEFAULT_MAX_AGE = 300          # seconds a timestamped signature stays valid (Telnyx's SDK: 300)
NONCE_TTL = 86400              # a Plivo nonce is remembered this long
MAX_HEADER = 4096              # longer signature headers are refused before decoding
Params = Sequence[tuple[str, str]]
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"  # what a path keeps unquoted (RFC 3986 pchar)
Fields = list[tuple[str, str]]


class SignatureError(Exception):
    """The request is not signed as the interface's provider signs: answer 403."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Verified:
    """A good signature. Once the message is durably stored, pass REPLAY_KEY
    to ReplayGuard.remember so the same signed request is refused later (not
    before: a request answered 503 must stay acceptable when it is retried)."""

    scheme: str
    replay_key: str = ""       # empty: the scheme has no timestamp or nonce
    replay_ttl: float = 0.0


class ReplayGuard:
    """Signed requests already taken, each until its expiry; at most CAPACITY
    (the oldest are forgotten first). Thread-safe, though websmsd calls it
    from its event loop only.

    With PATH, the memory survives a restart: each key is appended to PATH as
    `expiry key` (a write to the page cache, no fsync on the event loop: a
    process crash keeps it; a power loss may forget the last keys, and then a
    replay is a duplicate, as with at-least-once delivery), read back at
    start, and the file is rewritten without the expired keys when it has
    grown to twice what is remembered."""

    def __init__(self, capacity: int = 100_000, path: Path | None = None,
                 now: float | None = None) -> None:
        self.capacity, self.path = capacity, path
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._lines = 0
        self._file: Any = None
        if path is not None:
            self._load(path, time.time() if now is None else now)

    def _load(self, path: Path, now: float) -> None:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                for line in f:
                    expiry, _, key = line.rstrip("\n").partition(" ")
                    with contextlib.suppress(ValueError):
                        if key and float(expiry) > now:
                            self._seen[key] = float(expiry)
                            self._seen.move_to_end(key)
        except FileNotFoundError:
            pass
        self._prune(now)
        self._rewrite()

    def _rewrite(self) -> None:
        """PATH holds what is remembered now (temporary file, then rename)."""
        assert self.path is not None
        if self._file is not None:
            self._file.close()
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="ascii") as f:
            f.writelines(f"{expiry:.0f} {key}\n" for key, expiry in self._seen.items())
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", encoding="ascii")  # noqa: SIM115 (kept open)
        self._lines = len(self._seen)

    def _prune(self, now: float) -> None:
        while self._seen and (len(self._seen) > self.capacity
                              or next(iter(self._seen.values())) <= now):
            self._seen.popitem(last=False)

    def seen(self, key: str, now: float) -> bool:
        with self._lock:
            expiry = self._seen.get(key)
            return expiry is not None and expiry > now

    def remember(self, key: str, now: float, ttl: float) -> None:
        if not key:
            return
        with self._lock:
            self._seen[key] = now + ttl
            self._seen.move_to_end(key)
            self._prune(now)
            if self._file is not None:
                self._file.write(f"{now + ttl:.0f} {key}\n")
                self._file.flush()
                self._lines += 1
                if self._lines > 2 * len(self._seen) + 1000:
                    self._rewrite()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __len__(self) -> int:
        return len(self._seen)


# ---------------------------------------------------------------- helpers


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name in any case; WSGI environ keys (HTTP_X_TWILIO_SIGNATURE) too."""
    want = name.lower().replace("_", "-")
    for key, value in headers.items():
        k = key.lower().replace("_", "-")
        if k == want or (k.startswith("http-") and k[5:] == want):
            return value
    return None


def _required(headers: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = header(headers, name)
        if value:
            if len(value) > MAX_HEADER:
                raise SignatureError(f"{name} header too long")
            return value.strip()
    raise SignatureError(f"missing {' or '.join(names)} header")


def _same(a: str | bytes, b: str | bytes) -> bool:
    if isinstance(a, str):
        a = a.encode("utf-8", "surrogatepass")
    if isinstance(b, str):
        b = b.encode("utf-8", "surrogatepass")
    return hmac.compare_digest(a, b)


def _form(body: bytes, headers: Mapping[str, str]) -> Fields:
    """The POST fields when the body is a urlencoded form, else none."""
    media = (header(headers, "Content-Type") or "").split(";", 1)[0].strip().lower()
    if media not in ("application/x-www-form-urlencoded", "") or body.lstrip()[:1] in (b"{", b"["):
        return []
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise SignatureError("form body is not UTF-8") from None


def _fields(body: bytes, headers: Mapping[str, str], params: Params | None) -> Fields:
    return list(params) if params is not None else _form(body, headers)


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{what} is not base64") from None


def _timestamp(text: str, now: float, max_age: int, what: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise SignatureError(f"{what} is not a Unix time")
    stamp = int(text)
    if abs(now - stamp) > max_age:
        raise SignatureError(f"{what} {stamp} is {int(now - stamp)} s off (more than {max_age})")
    return stamp


# ---------------------------------------------------------------- Twilio and SignalWire


def _with_port(url: str) -> str:
    parts = urlsplit(url)
    if parts.port or not parts.hostname:
        return url
    port = 443 if parts.scheme == "https" else 80
    return urlunsplit(parts._replace(netloc=f"{parts.netloc}:{port}"))


def _without_port(url: str) -> str:
    parts = urlsplit(url)
    if not parts.port:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit(":", 1)[0]))


def twilio_signature(token: str, url: str, fields: Params, digest: str = "sha1") -> str:
    """As Twilio computes it: URL, then each name and value sorted (duplicates once)."""
    values: dict[str, set[str]] = {}
    for name, value in fields:
        values.setdefault(name, set()).add(value)
    data = url + "".join(name + value for name in sorted(values) for value in sorted(values[name]))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), digest).digest()).decode()


def _twilio_digest(headers: Mapping[str, str]) -> str:
    """X-Twilio-Webhooks-Signature-Settings names the SharedKey's algorithm."""
    settings = header(headers, "X-Twilio-Webhooks-Signature-Settings") or ""
    for part in settings.split(","):
        name, _, value = part.partition("=")
        if name.strip() == "algorithm" and value.strip():
            algo = value.strip().upper()
            if algo not in ("HMAC_SHA1", "HMAC_SHA256"):
                raise SignatureError(f"unsupported signature algorithm {algo}")
            return "sha256" if algo == "HMAC_SHA256" else "sha1"
    return "sha1"


def _twilio(secret: str, url: str, headers: Mapping[str, str], body: bytes,
            fields: Fields, names: tuple[str, ...]) -> None:
    given = _required(headers, *names)
    digest = _twilio_digest(headers)
    body_hash = parse_qs(urlsplit(url).query).get("bodySHA256")
    if body_hash:  # a JSON body: its hash is in the signed URL, no fields are signed
        if not _same(hashlib.sha256(body).hexdigest(), body_hash[0]):
            raise SignatureError("body does not match bodySHA256")
        fields = []
    # Twilio signs the URL with or without the default port, depending on the product
    for candidate in dict.fromkeys((url, _without_port(url), _with_port(url))):
        if _same(twilio_signature(secret, candidate, fields, digest), given):
            return
    raise SignatureError("signature does not match (wrong token, URL or fields)")


# ---------------------------------------------------------------- Telnyx


def _ed25519_key(secret: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    text = secret.strip()
    if text.startswith("-----BEGIN"):
        key = load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise SignatureError("sign_secret is not an Ed25519 public key")
        return key
    raw = _b64(text, "sign_secret (Telnyx public key)")
    if len(raw) != 32:
        raise SignatureError("sign_secret is not a 32-byte Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)


def _telnyx(secret: str, headers: Mapping[str, str], body: bytes, now: float,
            max_age: int) -> bytes:
    from cryptography.exceptions import InvalidSignature
    given = _required(headers, "telnyx-signature-ed25519")
    stamp = _required(headers, "telnyx-timestamp")
    _timestamp(stamp, now, max_age, "telnyx-timestamp")
    signature = _b64(given, "telnyx-signature-ed25519")
    if len(signature) != 64:
        raise SignatureError("telnyx-signature-ed25519 is not 64 bytes")
    try:
        _ed25519_key(secret).verify(signature, stamp.encode() + b"|" + body)
    except InvalidSignature:
        raise SignatureError("signature does not match (wrong key, timestamp or body)") from None
    return signature  # decoded: base64 spellings of one signature are one key


# ---------------------------------------------------------------- Plivo


def _plivo_query(url: str) -> str:
    pairs = parse_qs(urlsplit(url).query, keep_blank_values=True)
    return "&".join(f"{k}={v}" for k in sorted(pairs) for v in sorted(pairs[k]))


def plivo_base(method: str, url: str, fields: Params) -> str:
    """The string Plivo's V3 signs, before ".nonce" (plivo.utils.signature_v3)."""
    parts = urlsplit(url)
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    query = _plivo_query(url)
    if method.upper() == "GET":
        return base + ("?" + query if query else "")
    values: dict[str, list[str]] = {}
    for name, value in fields:
        values.setdefault(name, []).append(value)
    if values or query:
        base += "?" + query
    if values and query:
        base += "."
    return base + "".join(k + v for k in sorted(values) for v in sorted(values[k]))


def _plivo(secret: str, method: str, url: str, headers: Mapping[str, str],
           fields: Fields) -> bytes:
    given = _required(headers, "X-Plivo-Signature-V3")
    nonce = _required(headers, "X-Plivo-Signature-V3-Nonce")
    data = f"{plivo_base(method, url, fields)}.{nonce}".encode()
    mac = hmac.new(secret.encode(), data, hashlib.sha256).digest()
    mine = base64.b64encode(mac).decode()
    # the header lists several signatures while Plivo rotates the token
    if not any(_same(mine, sig.strip()) for sig in given.split(",")):
        raise SignatureError("signature does not match (wrong token, URL, method or fields)")
    return mac  # ours, so canonical (it covers the nonce)


# ---------------------------------------------------------------- Vonage

_VONAGE_DIGESTS = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}


def _json_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _vonage_fields(method: str, url: str, body: bytes, fields: Fields) -> dict[str, str]:
    """Query (GET), form (POST) or JSON (POST-JSON) fields; a field twice is refused."""
    pairs = parse_qsl(urlsplit(url).query, keep_blank_values=True) if method == "GET" else fields
    if method != "GET" and not pairs and body.lstrip()[:1] == b"{":
        try:
            doc = json.loads(body, parse_float=str, parse_int=str)
        except ValueError:
            raise SignatureError("JSON body is malformed") from None
        if not isinstance(doc, dict):
            raise SignatureError("JSON body is not an object")
        pairs = [(k, _json_scalar(v)) for k, v in doc.items()]
    out: dict[str, str] = {}
    for key, value in pairs:
        if key in out:
            raise SignatureError(f"field {key!r} given twice")
        out[key] = value
    return out


def vonage_signature(secret: str, fields: Mapping[str, str], digest: str) -> str:
    """Hex HMAC over `&key=value` of the sorted fields, & and = in values made _."""
    mac = hmac.new(secret.encode(), digestmod=digest)
    for key in sorted(fields):
        value = fields[key].replace("&", "_").replace("=", "_")
        mac.update(f"&{key}={value}".encode())
    return mac.hexdigest()


def _vonage(secret: str, method: str, url: str, body: bytes, fields: Fields,
            now: float, max_age: int) -> bytes:
    values = _vonage_fields(method.upper(), url, body, fields)
    given = values.pop("sig", "").lower()
    if not given:
        raise SignatureError("missing sig field")
    digest = _VONAGE_DIGESTS.get(len(given))
    if digest is None:
        raise SignatureError("sig has no known length (use an HMAC signing method)")
    _timestamp(values.get("timestamp", ""), now, max_age, "timestamp")
    mine = vonage_signature(secret, values, digest)
    if not _same(mine, given):
        raise SignatureError("sig does not match (wrong secret, method or fields)")
    return bytes.fromhex(mine)


def _b64url(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise SignatureError("JWT is not base64url") from None


def _vonage_jwt(secret: str, headers: Mapping[str, str], body: bytes, now: float,
                max_age: int) -> bytes:
    auth = _required(headers, "Authorization")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or token.count(".") != 2:
        raise SignatureError("Authorization is not a Bearer JWT")
    head, claims, sig = token.strip().split(".")
    try:
        alg = json.loads(_b64url(head)).get("alg")
        payload = json.loads(_b64url(claims))
    except (ValueError, AttributeError):
        raise SignatureError("JWT is malformed") from None
    if alg != "HS256" or not isinstance(payload, dict):
        raise SignatureError("JWT is not HS256")  # never "none", never a public-key algorithm
    mac = hmac.new(secret.encode(), f"{head}.{claims}".encode(), hashlib.sha256).digest()
    if not _same(mac, _b64url(sig)):
        raise SignatureError("JWT signature does not match (wrong secret)")
    _timestamp(str(payload.get("iat", "")), now, max_age, "JWT iat")
    if "payload_hash" not in payload:  # else the JWT would vouch for any body
        raise SignatureError("JWT has no payload_hash")
    if not _same(str(payload["payload_hash"]), hashlib.sha256(body).hexdigest()):
        raise SignatureError("body does not match the JWT's payload_hash")
    return mac


# ---------------------------------------------------------------- Zadarma and Basic


def zadarma_signature(secret: str, text: str) -> str:
    """base64(hex(HMAC-SHA1)): PHP's base64_encode(hash_hmac('sha1', ...))."""
    mac = hmac.new(secret.encode(), text.encode(), hashlib.sha1).hexdigest()
    return base64.b64encode(mac.encode()).decode()


def _zadarma(secret: str, headers: Mapping[str, str], fields: Fields) -> None:
    given = _required(headers, "Signature")
    values = dict(fields)
    if values.get("event") != "SMS" or "result" not in values:
        raise SignatureError("not a Zadarma SMS notification (event=SMS with result)")
    if not _same(zadarma_signature(secret, values["result"]), given):
        raise SignatureError("signature does not match (wrong secret or result)")


def _basic(secret: str, headers: Mapping[str, str]) -> None:
    auth = _required(headers, "Authorization")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "basic":
        raise SignatureError("Authorization is not Basic")
    if not _same(_b64(token.strip(), "Basic credentials"), secret.encode()):
        raise SignatureError("wrong user or password")


# ---------------------------------------------------------------- the entry point


def replay_key(scheme: str, signature: bytes, body: bytes) -> str:
    """The decoded signature and the body's hash: a request told apart from
    another by its bytes, not by how its signature header is spelled."""
    return (f"{scheme}:{hashlib.sha256(signature).hexdigest()[:32]}:"
            f"{hashlib.sha256(body).hexdigest()[:32]}")


def _check(scheme: str, secret: str, method: str, url: str, headers: Mapping[str, str],
           body: bytes, fields: Fields, now: float, max_age: int) -> Verified:
    window = 2.0 * max_age  # a timestamped signature is remembered while it could pass
    if scheme in ("twilio", "signalwire"):
        names = ("X-Twilio-Signature",) if scheme == "twilio" else (
            "X-SignalWire-Signature", "X-Twilio-Signature")
        _twilio(secret, url, headers, body, fields, names)
        return Verified(scheme)
    if scheme == "telnyx":
        sig = _telnyx(secret, headers, body, now, max_age)
        return Verified(scheme, replay_key(scheme, sig, body), window)
    if scheme == "plivo":
        sig = _plivo(secret, method, url, headers, fields)
        return Verified(scheme, replay_key(scheme, sig, body), NONCE_TTL)
    if scheme == "vonage":
        sig = _vonage(secret, method, url, body, fields, now, max_age)
        return Verified(scheme, replay_key(scheme, sig, body), window)
    if scheme == "vonage-jwt":
        sig = _vonage_jwt(secret, headers, body, now, max_age)
        return Verified(scheme, replay_key(scheme, sig, body), window)
    if scheme == "zadarma":
        _zadarma(secret, headers, fields)
    else:
        _basic(secret, headers)
    return Verified(scheme)


def verify(scheme: str, secret: str, method: str, url: str, headers: Mapping[str, str],
           body: bytes, params: Params | None, now: float, *,
           max_age: int = DEFAULT_MAX_AGE, replay: ReplayGuard | None = None) -> Verified:
    """Check one webhook request; SignatureError(reason) when it is not signed right.

    PARAMS are the POST form fields; None: parsed from BODY when it is a
    urlencoded form. REPLAY, when given, refuses a signed request remembered
    earlier (see Verified)."""
    if scheme == "none":
        return Verified("none")
    if scheme not in SCHEMES:
        raise SignatureError(f"unknown signature scheme {scheme!r}")
    if not secret:
        raise SignatureError("no sign_secret configured")
    done = _check(scheme, secret, method.upper(), url, headers, body,
                  _fields(body, headers, params), now, max_age)
    if replay is not None and done.replay_key and replay.seen(done.replay_key, now):
        raise SignatureError("replay of a signed request already taken")
    return done


def request_url(sign_url: str, scheme: str, host: str, path: str, query: str) -> str:
    """The URL the provider called. SIGN_URL (the webhook URL as configured at
    the provider; its own query is replaced by the request's) wins: behind a
    proxy, scheme, host and port are the proxy's. Without it, the request's
    own scheme, Host header and path (WSGI decodes it: quoted again here)."""
    if sign_url:
        base = sign_url.split("?", 1)[0]
    else:
        base = f"{scheme}://{host}{quote(path, safe=_PATH_SAFE)}"
    return f"{base}?{query}" if query else base
