"""The edge: an ITSP's webhook request → a validated SMS, or a refusal with
an HTTP status. Pure (no I/O), so every rule is tested fast and fuzzed.

Rules: the source address is the TCP peer, unless the peer is a trusted
proxy (`prox_addr`), whose `prox_header` then names the client; the
interface is picked by URL path and source; to/from/body are found by key
in the query, a form, multipart, JSON, or JSON inside a form field, at any
depth, and must be unambiguous; `to`/`from` are phone numbers or SIP user
names; the text is valid Unicode without control characters (tab, line
feed and carriage return excepted) and is kept byte for byte."""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import time
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from typing import Any
from urllib.parse import parse_qsl

from pbxhost.websms import providers, signatures
from pbxhost.websms.config import PROXY_AUTH, Incoming, Webhook, environ_key

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NUMBER = re.compile(r"\+?[0-9]{1,20}", re.ASCII)
SIP_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
MAX_FIELDS = 200
MAX_DEPTH = 32
MAX_ID = 200
MAX_ECHO = 200
ALLOWED_CONTROLS = "\t\n\r"
PROXY_AUTH_KEY = environ_key(PROXY_AUTH)


class Refused(Exception):
    """The request is not taken; STATUS is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str = ""                      # raw query string
    content_type: str = ""
    body: bytes = b""
    remote_addr: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)  # WSGI keys: HTTP_X_FORWARDED_FOR
    url_scheme: str = "http"             # wsgi.url_scheme (a signed URL is rebuilt from it)


@dataclass(frozen=True)
class Echo:
    """An "are you there" probe: answer with TEXT."""

    text: str


@dataclass(frozen=True)
class Message:
    iface: Incoming
    client: str
    to: str
    sender: str
    body: str
    provider_id: str = ""
    replay_key: str = ""                 # ReplayGuard.remember it once stored
    replay_ttl: float = 0.0
    part: providers.Part | None = None   # one part of a multi-part SMS (Vonage concat-*)


@dataclass(frozen=True)
class Ignored:
    """A provider's event that is no SMS (a delivery report): 2xx, nothing stored."""

    iface: Incoming
    reason: str


@dataclass(frozen=True)
class Batch:
    """Several SMS in one request (Bandwidth posts an array of events)."""

    messages: tuple[Message, ...]


# ---------------------------------------------------------------- who and where


def _address(text: str) -> IPAddress:
    text = text.strip()
    if text.startswith("[") and "]" in text:          # [2001:db8::1]:443
        text = text[1:text.index("]")]
    elif text.count(":") == 1:                          # 192.0.2.1:443
        text = text.split(":", 1)[0]
    addr = ipaddress.ip_address(text)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _within(addr: IPAddress, nets: tuple[Any, ...]) -> bool:
    return any(addr.version == n.version and addr in n for n in nets)


def client_address(req: Request, webhook: Webhook) -> IPAddress:
    """The peer; behind a trusted proxy, the last address the proxy did not add itself."""
    try:
        peer = _address(req.remote_addr)
    except ValueError:
        raise Refused(400, "no usable peer address") from None
    header = req.headers.get(webhook.prox_header)
    if not webhook.prox_addr or not _within(peer, webhook.prox_addr) or header is None:
        return peer  # a forwarded-for header from anyone else is ignored
    if webhook.prox_secret and not hmac.compare_digest(
            req.headers.get(PROXY_AUTH_KEY, "").encode(), webhook.prox_secret.encode()):
        return peer  # from the proxy's address, but not the proxy: a local user, say
    try:
        hops = [_address(h) for h in header.split(",") if h.strip()]
    except ValueError:
        raise Refused(400, f"bad {webhook.prox_header} from the proxy") from None
    for hop in reversed(hops):
        if not _within(hop, webhook.prox_addr):
            return hop
    return hops[0] if hops else peer


def admits_peer(peer: str, webhook: Webhook, interfaces: tuple[Incoming, ...]) -> bool:
    """Worth reading a request from PEER (the TCP peer) at all: an interface takes
    any source, PEER is in an interface's remt_addr, or it is a trusted proxy.
    Decided when the connection opens, so strangers cannot hold connections."""
    if any(not iface.remt_addr for iface in interfaces):
        return True
    try:
        addr = _address(peer)
    except ValueError:
        return False
    return _within(addr, webhook.prox_addr) or any(_within(addr, iface.remt_addr)
                                                   for iface in interfaces)


def known_peer(peer: str, webhook: Webhook, interfaces: tuple[Incoming, ...]) -> bool:
    """PEER is an ITSP (in a remt_addr) or our proxy: not held to the per-source
    connection limit that strangers get."""
    try:
        addr = _address(peer)
    except ValueError:
        return False
    return _within(addr, webhook.prox_addr) or any(_within(addr, iface.remt_addr)
                                                   for iface in interfaces)


def choose_interface(path: str, client: IPAddress,
                     interfaces: tuple[Incoming, ...]) -> Incoming:
    path_matches = [i for i in interfaces if not i.url_path or path in i.url_path]
    for iface in path_matches:
        if not iface.remt_addr or _within(client, iface.remt_addr):
            return iface
    if path_matches:
        raise Refused(403, f"source {client} not allowed")
    raise Refused(404, "no webhook here")


# ---------------------------------------------------------------- fields


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen and seen[key] != value:
            raise Refused(400, f"JSON key {key!r} given twice")
        seen[key] = value
    return seen


def _reject_constant(name: str) -> Any:
    raise Refused(400, f"JSON {name} is not a value")


def _json(text: str) -> Any:
    """JSON with numbers kept as written (1.50 stays "1.50")."""
    try:
        return json.loads(text, parse_float=str, parse_int=str,
                          parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError):
        raise Refused(400, "malformed JSON") from None


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, f"{what} is not UTF-8") from None


def _form(text: str, what: str) -> list[tuple[str, Any]]:
    try:
        return parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict",
                         max_num_fields=MAX_FIELDS)
    except UnicodeDecodeError:
        raise Refused(400, f"{what} is not UTF-8") from None
    except ValueError:
        raise Refused(413, f"too many fields in {what}") from None


def _multipart(content_type: str, body: bytes) -> list[tuple[str, Any]]:
    if "\r" in content_type or "\n" in content_type:
        raise Refused(400, "bad Content-Type")
    raw = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    msg = BytesParser(policy=policy.HTTP).parsebytes(raw)
    if not msg.is_multipart():
        raise Refused(400, "malformed multipart body")
    pairs = []
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or part.get_filename() is not None:
            continue  # files are not SMS fields
        payload = part.get_payload(decode=True)
        pairs.append((name, _utf8(payload if isinstance(payload, bytes) else b"", "form field")))
        if len(pairs) > MAX_FIELDS:
            raise Refused(413, "too many fields")
    return pairs


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _body_pairs(req: Request) -> list[tuple[str, Any]]:
    media = _media_type(req.content_type)
    if not req.body.strip():
        return []
    if media == "multipart/form-data":
        return _multipart(req.content_type, req.body)
    text = _utf8(req.body, "request body")
    looks_json = text.lstrip()[:1] in ("{", "[")
    if media == "application/json" or media.endswith("+json") or (
            media in ("", "text/plain") and looks_json):
        doc = _json(text)
        if isinstance(doc, dict):
            return list(doc.items())
        if isinstance(doc, list):
            return [("", item) for item in doc]
        raise Refused(400, "JSON body is not an object")
    if media in ("", "application/x-www-form-urlencoded", "text/plain"):
        return _form(text, "form body")
    raise Refused(415, f"unsupported Content-Type {media}")


def request_pairs(req: Request) -> list[tuple[str, Any]]:
    """Top-level (key, value) pairs of the query and, for POST, the body."""
    pairs = _form(req.query, "query string") if req.query else []
    if req.method == "POST":
        pairs += _body_pairs(req)
    return pairs


def _nested(value: Any) -> Any:
    """A form field holding JSON (Zadarma's `result`) is searched too."""
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        try:
            return _json(value)
        except Refused:
            return None  # plain text that merely starts with a brace
    return value


def walk(pairs: list[tuple[str, Any]], keys: frozenset[str],
         depth: int = 0) -> Iterator[tuple[str, Any]]:
    """Every (key, value) with a key in KEYS, at any depth; matched values are
    not searched inside (the SMS text may itself look like JSON)."""
    if depth > MAX_DEPTH:
        raise Refused(400, "nested too deeply")
    for key, value in pairs:
        if key in keys:
            yield key, value
            continue
        inner = _nested(value)
        if isinstance(inner, dict):
            yield from walk(list(inner.items()), keys, depth + 1)
        elif isinstance(inner, list):
            yield from walk([("", v) for v in inner], keys, depth + 1)


def lookup(pairs: list[tuple[str, Any]], keys: list[str]) -> dict[str, Any]:
    """The one value of each key found; two different values of a key → 400."""
    found: dict[str, Any] = {}
    for key, value in walk(pairs, frozenset(k for k in keys if k)):
        if key in found and found[key] != value:
            raise Refused(400, f"{key!r} given twice with different values")
        found[key] = value
    return found


# ---------------------------------------------------------------- values


def _scalar(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise Refused(422, f"{name} is not a string or number")
    return value


def valid_party(value: Any, name: str) -> str:
    """A phone number (+ and up to 20 digits) or a SIP user name."""
    text = _scalar(value, name)
    if NUMBER.fullmatch(text):
        return text
    if SIP_USER.fullmatch(text) and ".." not in text and not text.endswith("."):
        return text
    raise Refused(422, f"{name} is neither a phone number nor a user name")


def valid_text(value: Any, limit: int) -> str:
    text = _scalar(value, "body")
    if not text:
        raise Refused(422, "empty body")
    if len(text) > limit:
        raise Refused(413, f"body longer than {limit} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Refused(400, "body is not valid Unicode (lone surrogate)") from None
    for c in text:
        if unicodedata.category(c) == "Cc" and c not in ALLOWED_CONTROLS:
            raise Refused(422, f"body holds control character U+{ord(c):04X}")
    return text


def _printable(value: Any, name: str, limit: int) -> str:
    text = _scalar(value, name)
    if not 0 < len(text) <= limit or not text.isprintable():
        raise Refused(400, f"{name} must be 1..{limit} printable characters")
    return text


def check_signature(req: Request, iface: Incoming, now: float,
                    replay: signatures.ReplayGuard | None = None) -> signatures.Verified:
    """The interface's signature scheme on REQ; 403 when it fails."""
    url = signatures.request_url(iface.sign_url, req.url_scheme,
                                 req.headers.get("HTTP_HOST", ""), req.path, req.query)
    headers = {**req.headers, "Content-Type": req.content_type}
    try:
        return signatures.verify(iface.sign_scheme, iface.sign_secret, req.method, url, headers,
                                 req.body, None, now, max_age=iface.sign_maxage, replay=replay)
    except signatures.SignatureError as exc:
        raise Refused(403, f"bad signature: {exc.reason}") from None


def _adapted(req: Request, webhook: Webhook, iface: Incoming, client: str,
             verified: signatures.Verified) -> Ignored | Message | Batch:
    """The provider's own webhook format (providers.adapt), then the same checks."""
    try:
        got = providers.adapt(iface.provider, req.method, req.content_type, req.query, req.body)
    except providers.NotInbound as exc:
        raise Refused(400, f"not a {iface.provider} SMS webhook: {exc}") from None
    if not got.messages:
        return Ignored(iface, got.ignored)
    messages = tuple(Message(
        iface=iface, client=client, to=valid_party(m.to, "to"),
        sender=valid_party(m.sender, "from"), body=valid_text(m.body, webhook.body_maxlen),
        provider_id=_printable(m.message_id, "message id", MAX_ID) if m.message_id else "",
        replay_key=verified.replay_key, replay_ttl=verified.replay_ttl, part=m.part)
        for m in got.messages)
    return messages[0] if len(messages) == 1 else Batch(messages)


def _probe(req: Request, iface: Incoming) -> Echo | None:
    """An "are you there" probe (Zadarma's GET ?zd_echo=...): in the query
    string only, which the header limit bounds; the body is not read for it."""
    if not iface.key_echo or not req.query:
        return None
    probe = [v for k, v in _form(req.query, "query string") if k == iface.key_echo]
    return Echo(_printable(probe[0], iface.key_echo, MAX_ECHO)) if probe else None


def _fields(req: Request, webhook: Webhook, iface: Incoming, client: str,
            verified: signatures.Verified) -> Ignored | Message | Batch:
    """The provider's adapter, or the interface's keys anywhere in the request."""
    keys = {"key_to": iface.key_to, "key_from": iface.key_from, "key_body": iface.key_body,
            "key_id": iface.key_id}
    if providers.adapter_applies(iface.provider, keys):
        return _adapted(req, webhook, iface, client, verified)
    wanted = [iface.key_to, iface.key_from, iface.key_body, iface.key_id]
    found = lookup(request_pairs(req), wanted)
    missing = [k for k in wanted[:3] if k not in found]
    if missing:
        raise Refused(400, f"missing {', '.join(missing)}")
    provider_id = ""
    if iface.key_id and iface.key_id in found:
        provider_id = _printable(found[iface.key_id], iface.key_id, MAX_ID)
    return Message(iface=iface, client=client,
                   to=valid_party(found[iface.key_to], "to"),
                   sender=valid_party(found[iface.key_from], "from"),
                   body=valid_text(found[iface.key_body], webhook.body_maxlen),
                   provider_id=provider_id, replay_key=verified.replay_key,
                   replay_ttl=verified.replay_ttl)


def parse(req: Request, webhook: Webhook, interfaces: tuple[Incoming, ...], *,
          now: float | None = None, replay: signatures.ReplayGuard | None = None,
          ) -> Echo | Ignored | Message | Batch:
    """The whole edge, one pipeline in this order, each step on what the
    previous one let through; nothing is parsed for a request that is not
    authenticated yet (a 60 KB multipart body costs nothing before its 403):

    1. method and size           405, 413
    2. source                    the TCP peer, or a trusted proxy's header (400)
    3. interface                 by path and source (404, 403)
    4. probe                     key_echo in the query string
    5. signature                 over the raw bytes as received (403, replays too)
    6. provider adapter / keys   the body parsed, once (400, 415)
    7. field checks              to, from, text, id (422, 413, 400)

    then, in webhook.handle: durable accept, and the reply.
    REPLAY refuses a signed request already taken (see signatures.Verified)."""
    if req.method not in ("GET", "POST"):
        raise Refused(405, "only GET and POST")
    if len(req.body) > webhook.req_maxsize:
        raise Refused(413, "request too large")
    client = client_address(req, webhook)
    iface = choose_interface(req.path, client, interfaces)
    echo = _probe(req, iface)
    if echo is not None:
        return echo
    verified = signatures.Verified("none")
    if iface.sign_scheme != "none":
        verified = check_signature(req, iface, time.time() if now is None else now, replay)
    return _fields(req, webhook, iface, str(client), verified)
