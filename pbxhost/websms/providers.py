"""Provider presets: `provider = twilio` in an interface of websms.conf fills
in what that ITSP needs, so a user writes credentials and numbers, not field
names. Pure (no I/O).

A preset is, first, DEFAULTS for the generic websms.conf keys ([websms]:
url_host, url_path, auth_method, key_to, resp_check, ...; [websmsd]: key_to,
key_id, key_echo, resp_ack, sign_scheme, ...). Keys the user writes win over
the preset (`merge`, `apply_preset`). Second, what no generic key says
(`Preset`): the reply's Content-Type, an empty reply, the HTTP method and
Content-Type of the outgoing request, `to` as a list, a Unicode flag; and an
adapter per provider that reads its documented webhook into (to, from,
body, message id), or tells an event that is no incoming SMS (`adapt`).
Vonage's multi-part SMS are joined by `Concat`.

Where a fact comes from, and what is assumed, is in docs/providers/."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from pbxhost.conf import ConfigError, Item, Section
from pbxhost.websms import text

INCOMING = "websmsd"
OUTGOING = "websms"
TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
# keys an URL template may name; account_id defaults to auth_user (Twilio: the Account SID)
URL_VALUES = ("auth_user", "account_id")


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    inbound: str                         # form | json | jsonapi | json-array | get | form/json
    incoming: Mapping[str, str]          # [websmsd] key defaults, as a user would write them
    outgoing: Mapping[str, str]          # [websms] key defaults
    sign_secret: str = ""                # what to paste into sign_secret (messages, docs)
    ack_type: str = ""                   # Content-Type of resp_ack; empty: webhook.py guesses
    ack_empty: bool = False              # answer 200 with no body at all
    out_method: str = "POST"             # GET: the fields go into the query string
    out_type: str = ""                   # Content-Type of the outgoing body, when not the usual
    to_list: bool = False                # the outgoing `to` is a JSON array
    unicode_flag: tuple[str, str] | None = None  # field added when the text is not GSM-7
    numform: str = ""                    # NANP: 10-digit numbers (val_numform knows E164 only)
    required: tuple[str, ...] = ("auth_user", "auth_secret")  # [websms] keys without a default
    concat: bool = False                 # multi-part SMS arrive part by part


def _p(name: str, title: str, inbound: str, incoming: dict[str, str],
       outgoing: dict[str, str], **extra: Any) -> Preset:
    return Preset(name=name, title=title, inbound=inbound, incoming=incoming,
                  outgoing=outgoing, **extra)


_TWILIO_IN = {"key_to": "To", "key_from": "From", "key_body": "Body", "key_id": "MessageSid",
              "resp_ack": TWIML_EMPTY}

PRESETS: dict[str, Preset] = {p.name: p for p in (
    _p("twilio", "Twilio", "form",
       {**_TWILIO_IN, "sign_scheme": "twilio"},
       {"url_host": "https://api.twilio.com",
        "url_path": "/2010-04-01/Accounts/{account_id}/Messages.json",
        "auth_method": "basic", "key_to": "To", "key_from": "From", "key_body": "Body",
        "req_format": "form", "resp_check": r'/"sid"\s*:\s*"[SM]M[0-9a-f]{32}"/'},
       sign_secret="the Auth Token (or the SharedKey secret)", ack_type="text/xml"),
    _p("signalwire", "SignalWire", "form",
       {**_TWILIO_IN, "sign_scheme": "signalwire"},
       {"url_path": "/api/laml/2010-04-01/Accounts/{account_id}/Messages.json",
        "auth_method": "basic", "key_to": "To", "key_from": "From", "key_body": "Body",
        "req_format": "form", "resp_check": r'/"sid"\s*:\s*"[0-9a-f-]{36}"/'},
       sign_secret="the Signing Key", ack_type="text/xml",
       required=("url_host", "auth_user", "auth_secret")),
    _p("telnyx", "Telnyx", "json",
       {"key_to": "to", "key_from": "from", "key_body": "text", "key_id": "id",
        "sign_scheme": "telnyx"},
       {"url_host": "https://api.telnyx.com", "url_path": "/v2/messages",
        "auth_method": "bearer", "key_to": "to", "key_from": "from", "key_body": "text",
        "req_format": "json", "resp_check": "record_type=message"},
       sign_secret="the public key (base64)", required=("auth_secret",)),
    _p("46elks", "46elks", "form",
       {"key_to": "to", "key_from": "from", "key_body": "message", "key_id": "id",
        "resp_ack": "", "sign_scheme": "none"},
       {"url_host": "https://api.46elks.com", "url_path": "/a1/sms", "auth_method": "basic",
        "key_to": "to", "key_from": "from", "key_body": "message", "req_format": "form",
        "resp_check": "status=created"},
       ack_empty=True),
    _p("zadarma", "Zadarma", "form",
       {"key_to": "caller_did", "key_from": "caller_id", "key_body": "text",
        "key_echo": "zd_echo", "sign_scheme": "zadarma"},
       {"url_host": "https://api.zadarma.com", "url_path": "/v1/sms/send/",
        "auth_method": "zadarma", "key_to": "number", "key_from": "caller_id",
        "key_body": "message", "val_numform": "E164", "req_format": "form",
        "resp_check": "status=success"},
       sign_secret="the API secret (the same as auth_secret)"),
    _p("voipms", "VoIP.ms", "get",
       {"key_to": "to", "key_from": "from", "key_body": "message", "key_id": "id",
        "resp_ack": "ok", "sign_scheme": "none"},
       {"url_host": "https://voip.ms", "url_path": "/api/v1/rest.php", "auth_method": "plain",
        "key_user": "api_username", "key_secret": "api_password", "key_to": "dst",
        "key_from": "did", "key_body": "message", "val_numform": "E164",
        "val_static": "method=sendSMS", "req_format": "form", "resp_check": "status=success"},
       out_method="GET", numform="NANP"),
    _p("flowroute", "Flowroute", "jsonapi",
       {"key_to": "to", "key_from": "from", "key_body": "body", "key_id": "id",
        "sign_scheme": "none"},
       {"url_host": "https://api.flowroute.com", "url_path": "/v2.1/messages",
        "auth_method": "basic", "key_to": "to", "key_from": "from", "key_body": "body",
        "val_numform": "E164", "req_format": "json", "resp_check": "type=message"},
       out_type="application/vnd.api+json"),
    _p("bandwidth", "Bandwidth", "json-array",
       {"key_to": "to", "key_from": "from", "key_body": "text", "key_id": "id",
        "sign_scheme": "none"},
       {"url_host": "https://messaging.bandwidth.com",
        "url_path": "/api/v2/users/{account_id}/messages", "auth_method": "basic",
        "key_to": "to", "key_from": "from", "key_body": "text", "req_format": "json",
        "resp_check": "direction=out"},
       to_list=True, required=("auth_user", "auth_secret", "account_id", "val_static")),
    _p("vonage", "Vonage (SMS API)", "form/json",
       {"key_to": "to", "key_from": "msisdn", "key_body": "text", "key_id": "messageId",
        "sign_scheme": "vonage"},
       {"url_host": "https://rest.nexmo.com", "url_path": "/sms/json", "auth_method": "plain",
        "key_user": "api_key", "key_secret": "api_secret", "key_to": "to", "key_from": "from",
        "key_body": "text", "val_numform": "E164", "req_format": "form",
        "resp_check": "status=0"},
       sign_secret="the signature secret", unicode_flag=("type", "unicode"), concat=True),
    _p("plivo", "Plivo", "form",
       {"key_to": "To", "key_from": "From", "key_body": "Text", "key_id": "MessageUUID",
        "resp_ack": "<Response></Response>", "sign_scheme": "plivo"},
       {"url_host": "https://api.plivo.com", "url_path": "/v1/Account/{account_id}/Message/",
        "auth_method": "basic", "key_to": "dst", "key_from": "src", "key_body": "text",
        "val_numform": "E164", "req_format": "json",
        "resp_check": "message=message(s) queued"},
       sign_secret="the Auth Token", ack_type="text/xml"),
)}
NAMES = tuple(PRESETS)


class PresetError(ValueError):
    """A preset cannot be applied: KEY is the key to point at."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def get(name: str) -> Preset:
    try:
        return PRESETS[name.strip().lower()]
    except KeyError:
        raise PresetError("provider", f"unknown provider {name!r} "
                                      f"(known: {', '.join(NAMES)})") from None


def defaults(name: str, side: str) -> dict[str, str]:
    """The preset's values for the generic keys of SIDE ("websms" or "websmsd")."""
    preset = get(name)
    return dict(preset.outgoing if side == OUTGOING else preset.incoming)


# ---------------------------------------------------------------- merging


def expand(template: str, values: Mapping[str, str]) -> str:
    """{account_id} and {auth_user} in an URL template, path-quoted."""
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in URL_VALUES:
            raise PresetError("url_path", f"unknown placeholder {{{name}}}")
        value = values.get(name) or (values.get("auth_user", "") if name == "account_id" else "")
        if not value:
            raise PresetError(name, f"needed in the URL {template}")
        return quote(value, safe="")
    return _PLACEHOLDER.sub(one, template)


def merge(name: str, side: str, user: Mapping[str, str]) -> dict[str, str]:
    """The keys of one interface: the preset's defaults, the user's keys over
    them (an empty value the user wrote counts), URL placeholders filled.
    Without a provider the user's keys come back unchanged."""
    if not name.strip():
        return dict(user)
    preset = get(name)
    keys = {**defaults(name, side), **{k.lower(): v for k, v in user.items()}}
    keys["provider"] = preset.name
    if side == OUTGOING:
        missing = [k for k in preset.required if not keys.get(k, "").strip()]
        if missing:
            raise PresetError(missing[0], f"provider {preset.name} needs "
                                          f"{' and '.join(missing)}")
        for key in ("url_host", "url_path"):
            if key in keys:
                keys[key] = expand(keys[key], keys)
    elif keys.get("sign_scheme", "none") != "none" and not keys.get("sign_secret", "").strip():
        raise PresetError("sign_secret", f"provider {preset.name} signs its webhooks: set "
                                         f"sign_secret to {preset.sign_secret}, or "
                                         "sign_scheme = none to take unsigned requests")
    return keys


def _interface_items(section: Section, idx: str | None) -> list[Item]:
    """The user's items that apply to interface IDX, plain ones first, as plain keys."""
    plain = [i for i in section.items if i.index is None]
    own = [replace(i, index=None) for i in section.items if idx is not None and i.index == idx]
    return plain + own


def apply_preset(section: Section, idx: str | None, side: str) -> Section:
    """Interface IDX of SECTION as one plain section with its provider's
    defaults in front: every lookup of config.py (with or without idx) then
    finds the user's key first and the preset's otherwise. Errors name the
    file and line of the `provider` key (or of the key concerned)."""
    items = _interface_items(section, idx)
    user = {i.key.lower(): i.value.strip() for i in items}
    name = user.get("provider", "")
    if not name:
        return replace(section, items=items)
    try:
        keys = merge(name, side, user)
    except PresetError as exc:
        where = next((i for i in reversed(items) if i.key.lower() in (exc.key, "provider")), None)
        raise ConfigError(exc.message if exc.key == "provider" else str(exc),
                          where.path if where else section.path,
                          where.line if where else section.line) from None
    origin = next(i for i in reversed(items) if i.key.lower() == "provider")
    preset_items = [Item(k, v, None, origin.path, origin.line)
                    for k, v in defaults(name, side).items()]
    filled = [Item(k, keys[k], None, origin.path, origin.line) for k in ("url_host", "url_path")
              if k in keys and keys[k] != user.get(k, defaults(name, side).get(k))]
    return replace(section, items=preset_items + items + filled)


# ---------------------------------------------------------------- outgoing


def format_number(value: str, numform: str) -> str:
    """NUMFORM empty: as written; E164 drops a leading + or 00 (as val_numform
    does); NANP gives the 10 digits of a +1 number (VoIP.ms), others as E164."""
    form = numform.upper().replace(".", "")
    if form not in ("E164", "NANP"):
        return value
    digits = value[1:] if value.startswith("+") else value[2:] if value.startswith("00") else value
    if form == "NANP" and len(digits) == 11 and digits.startswith("1"):
        return digits[1:]
    return digits


@dataclass(frozen=True)
class OutRequest:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def _form_fixed(preset: Preset, body: bytes, body_text: str, keys: tuple[str, str]) -> bytes:
    """The form with NANP numbers and the Unicode flag, re-encoded sorted by key."""
    pairs = dict(parse_qsl(body.decode("ascii"), keep_blank_values=True))
    for key in keys if preset.numform else ():
        if key in pairs:
            pairs[key] = format_number(pairs[key], preset.numform)
    if preset.unicode_flag and not text.is_gsm7(body_text):
        pairs.setdefault(*preset.unicode_flag)
    return urlencode(sorted(pairs.items())).encode("ascii")


def _to_list(body: bytes, key_to: str) -> bytes:
    doc = json.loads(body)
    if isinstance(doc, dict) and isinstance(doc.get(key_to), str):
        doc[key_to] = [doc[key_to]]
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def adjust_request(name: str, request: OutRequest, body_text: str, key_to: str = "To",
                   key_from: str = "From") -> OutRequest:
    """What send.build cannot know: the fields in a GET query, another
    Content-Type, `to` as a list, NANP numbers, the Unicode flag. BODY_TEXT is
    the SMS text, KEY_TO/KEY_FROM the interface's keys. No provider: REQUEST."""
    if not name:
        return request
    preset = get(name)
    headers, body, url = dict(request.headers), request.body, request.url
    media = headers.get("Content-Type", "").split(";", 1)[0].strip()
    flag = preset.unicode_flag is not None and not text.is_gsm7(body_text)
    if media == "application/x-www-form-urlencoded" and (preset.numform or flag):
        body = _form_fixed(preset, body, body_text, (key_to, key_from))
    elif media == "application/json" and preset.to_list:
        body = _to_list(body, key_to)
    if preset.out_type:
        headers["Content-Type"] = preset.out_type
    if preset.out_method == "GET":
        url = url + ("&" if "?" in url else "?") + body.decode("ascii")
        headers.pop("Content-Type", None)
        return OutRequest("GET", url, headers, b"")
    return OutRequest(request.method, url, headers, body)


# ---------------------------------------------------------------- the reply to a webhook


@dataclass(frozen=True)
class Ack:
    body: str
    content_type: str


def ack(name: str, resp_ack: str) -> Ack | None:
    """The 2xx answer to a webhook when the preset knows better than the
    generic one ("OK", or resp_ack with a guessed type); None: the generic."""
    if not name:
        return None
    preset = get(name)
    if preset.ack_empty and not resp_ack:
        return Ack("", "text/plain; charset=utf-8")  # 46elks would send a body back as SMS
    if preset.ack_type and resp_ack.lstrip().startswith("<"):
        return Ack(resp_ack, preset.ack_type)
    return None


# ---------------------------------------------------------------- incoming


class NotInbound(ValueError):
    """The request is not the provider's documented webhook: answer 400."""


@dataclass(frozen=True)
class Part:
    """One part of a multi-part SMS (Vonage concat-*)."""

    ref: str
    total: int
    number: int


@dataclass(frozen=True)
class Inbound:
    to: str
    sender: str
    body: str
    message_id: str = ""
    part: Part | None = None


@dataclass(frozen=True)
class Adapted:
    """The SMS of one webhook request; none, with a reason, for other events
    (delivery reports, status callbacks): answer 2xx and store nothing."""

    messages: tuple[Inbound, ...] = ()
    ignored: str = ""


def _fields(method: str, content_type: str, query: str, body: bytes) -> dict[str, Any]:
    """Query and form fields, or the JSON body (object or array)."""
    pairs = parse_qsl(query, keep_blank_values=True)
    media = content_type.split(";", 1)[0].strip().lower()
    if method.upper() == "POST" and body.strip():
        if media.endswith("json") or body.lstrip()[:1] in (b"{", b"["):
            doc = _json(body)
            return doc if isinstance(doc, dict) else {"": doc}  # the query is not read then
        try:
            pairs += parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise NotInbound("form body is not UTF-8") from None
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found and found[key] != value:
            raise NotInbound(f"field {key!r} given twice")
        found[key] = value
    return found


def _json(data: bytes | str) -> Any:
    try:
        return json.loads(data, parse_float=str, parse_int=str)  # 1.50 stays "1.50"
    except ValueError:
        raise NotInbound("malformed JSON") from None


def _str(doc: Any, *path: str | int) -> str:
    node = doc
    for step in path:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            raise NotInbound(f"no {'.'.join(map(str, path))}") from None
    if not isinstance(node, str):
        raise NotInbound(f"{'.'.join(map(str, path))} is not text")
    return node


def _flat(f: dict[str, Any], to: str, sender: str, body: str, mid: str) -> Adapted:
    """Flat fields (form, query or a flat JSON object) by the provider's names."""
    got = Inbound(_str(f, to), _str(f, sender), _str(f, body), str(f.get(mid, "")))
    return Adapted((got,))


def _twilio(f: dict[str, Any]) -> Adapted:
    if "Body" not in f and ("MessageStatus" in f or "SmsStatus" in f):
        return Adapted(ignored=f"status callback {f.get('MessageStatus', f.get('SmsStatus'))}")
    return _flat(f, "To", "From", "Body", "MessageSid")


def _plivo(f: dict[str, Any]) -> Adapted:
    if "Text" not in f and "Status" in f:
        return Adapted(ignored=f"delivery report {f['Status']}")
    return _flat(f, "To", "From", "Text", "MessageUUID")


def _elks(f: dict[str, Any]) -> Adapted:
    if "message" not in f and "status" in f:
        return Adapted(ignored=f"delivery report {f['status']}")
    if f.get("direction", "incoming") != "incoming":
        return Adapted(ignored=f"direction {f['direction']}")
    return _flat(f, "to", "from", "message", "id")


def _zadarma(f: dict[str, Any]) -> Adapted:
    if f.get("event") != "SMS":
        return Adapted(ignored=f"event {f.get('event', '(none)')}")
    result = _json(_str(f, "result"))
    return Adapted((Inbound(_str(result, "caller_did"), _str(result, "caller_id"),
                            _str(result, "text")),))


def _nanp(number: str) -> str:
    """VoIP.ms writes its (NANP) numbers as 10 digits; hints and replies want +1…"""
    return "+1" + number if len(number) == 10 and number.isdigit() else number


def _voipms(f: dict[str, Any]) -> Adapted:
    got = _flat(f, "to", "from", "message", "id").messages[0]
    return Adapted((replace(got, to=_nanp(got.to), sender=_nanp(got.sender)),))


def _vonage(f: dict[str, Any]) -> Adapted:
    if "text" not in f and ("status" in f or "err-code" in f):
        return Adapted(ignored=f"delivery receipt {f.get('status', '')}")
    if f.get("type") == "binary":
        return Adapted(ignored="binary message")
    got = _flat(f, "to", "msisdn", "text", "messageId").messages[0]
    if str(f.get("concat", "")).lower() == "true":
        try:
            part = Part(_str(f, "concat-ref"), int(_str(f, "concat-total")),
                        int(_str(f, "concat-part")))
        except ValueError:
            raise NotInbound("concat-total/concat-part are not numbers") from None
        if not 1 <= part.number <= part.total <= 255:
            raise NotInbound("concat-part out of range")
        got = replace(got, part=part)
    return Adapted((got,))


def _telnyx(f: dict[str, Any]) -> Adapted:
    kind = f.get("data", {}).get("event_type") if isinstance(f.get("data"), dict) else None
    if kind != "message.received":
        return Adapted(ignored=f"event {kind}")
    payload = f["data"].get("payload")
    to = _str(payload, "to", 0, "phone_number")  # the first recipient: our number
    return Adapted((Inbound(to, _str(payload, "from", "phone_number"), _str(payload, "text"),
                            _str(payload, "id")),))


def _bandwidth(f: dict[str, Any]) -> Adapted:
    events = f.get("", f)
    if not isinstance(events, list):
        raise NotInbound("not a JSON array of events")
    messages, other = [], []
    for event in events:
        kind = event.get("type") if isinstance(event, dict) else None
        if kind != "message-received":
            other.append(str(kind))
            continue
        messages.append(Inbound(_str(event, "to"), _str(event, "message", "from"),
                                _str(event, "message", "text"), _str(event, "message", "id")))
    return Adapted(tuple(messages), "" if messages else f"events {', '.join(other)}")


def _flowroute(f: dict[str, Any]) -> Adapted:
    attrs = f.get("data", {}).get("attributes") if isinstance(f.get("data"), dict) else None
    if not isinstance(attrs, dict):
        raise NotInbound("not a JSON:API message")
    if attrs.get("direction", "inbound") != "inbound":
        return Adapted(ignored=f"direction {attrs['direction']}")
    return Adapted((Inbound(_str(attrs, "to"), _str(attrs, "from"), _str(attrs, "body"),
                            _str(f, "data", "id")),))


_ADAPTERS = {"twilio": _twilio, "signalwire": _twilio, "plivo": _plivo, "46elks": _elks,
             "zadarma": _zadarma, "voipms": _voipms, "vonage": _vonage, "telnyx": _telnyx,
             "bandwidth": _bandwidth, "flowroute": _flowroute}


def adapt(name: str, method: str, content_type: str, query: str, body: bytes) -> Adapted:
    """The provider's webhook as SMS (raw strings: inbound.py still validates
    them), before and instead of the generic key search. NotInbound when the
    request is not what the provider documents."""
    return _ADAPTERS[get(name).name](_fields(method, content_type, query, body))


def adapter_applies(name: str, keys: Mapping[str, str]) -> bool:
    """Use `adapt` unless the user changed the field keys of the preset: then
    the generic parser reads the keys the user wrote."""
    if not name:
        return False
    preset = get(name).incoming
    return all(keys.get(k, preset.get(k, "")) == preset.get(k, "")
               for k in ("key_to", "key_from", "key_body", "key_id"))


# ---------------------------------------------------------------- multi-part SMS


@dataclass
class _Set:
    total: int
    first: float
    parts: dict[int, tuple[str, str]] = field(default_factory=dict)  # number → (text, id)


class Concat:
    """Joins multi-part SMS: parts in any order, a part twice taken once, a
    set still incomplete after TIMEOUT delivered with the gaps marked (never
    dropped). Holds plain data only: `state()` / `from_state()` let the spool
    keep the parts across restarts; every method takes the time."""

    def __init__(self, timeout: float = 3600.0, done_ttl: float = 86400.0) -> None:
        self.timeout = timeout
        self.done_ttl = done_ttl
        self._sets: dict[str, _Set] = {}
        self._done: dict[str, float] = {}   # part ids of joined sets → forget after

    @staticmethod
    def _key(msg: Inbound) -> str:
        assert msg.part is not None
        return json.dumps([msg.sender, msg.to, msg.part.ref, msg.part.total])

    def add(self, msg: Inbound, now: float) -> Inbound | None:
        """MSG whole, when it is no part or its set is now complete; else None."""
        if msg.part is None or msg.part.total == 1:
            return replace(msg, part=None)
        if msg.message_id and msg.message_id in self._done:
            return None  # a late duplicate of a part already delivered
        key = self._key(msg)
        group = self._sets.setdefault(key, _Set(msg.part.total, now))
        group.parts.setdefault(msg.part.number, (msg.body, msg.message_id))
        if len(group.parts) < group.total:
            return None
        return self._join(key, now)

    def _join(self, key: str, now: float) -> Inbound:
        group = self._sets.pop(key)
        sender, to, _ref, total = json.loads(key)
        texts = [group.parts.get(n, (f"[part {n} of {total} missing]", ""))[0]
                 for n in range(1, total + 1)]
        ids = [group.parts[n][1] for n in sorted(group.parts) if group.parts[n][1]]
        for part_id in ids:
            self._done[part_id] = now + self.done_ttl
        # the id of the lowest part names the whole: stable however the parts came
        return Inbound(to, sender, "".join(texts), ids[0] if ids else "")

    def expired(self, now: float) -> list[Inbound]:
        """Sets waiting longer than the timeout, delivered as they are."""
        self._done = {k: t for k, t in self._done.items() if t > now}
        late = [k for k, s in self._sets.items() if now - s.first >= self.timeout]
        return [self._join(k, now) for k in late]

    def pending(self) -> int:
        return len(self._sets)

    def state(self) -> dict[str, Any]:
        """JSON-able: what the spool keeps."""
        return {"sets": {k: {"total": s.total, "first": s.first,
                             "parts": {str(n): list(p) for n, p in s.parts.items()}}
                         for k, s in self._sets.items()},
                "done": dict(self._done)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], timeout: float = 3600.0,
                   done_ttl: float = 86400.0) -> Concat:
        joined = cls(timeout, done_ttl)
        for key, s in state.get("sets", {}).items():
            joined._sets[key] = _Set(int(s["total"]), float(s["first"]),
                                     {int(n): (str(p[0]), str(p[1]))
                                      for n, p in s["parts"].items()})
        joined._done = {str(k): float(t) for k, t in state.get("done", {}).items()}
        return joined
