"""Outgoing SMS: the HTTP request for an ITSP's API (pure), and the call
itself (urllib, TLS verified, no redirects) with its verdict: sent, retry
later (network trouble, 429, 5xx) or failed for good (other answers)."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import logging
import re
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import quote_plus, urlsplit

from pbxhost.websms import providers, text
from pbxhost.websms.config import Outgoing

log = logging.getLogger("pbxhost.websms.send")
USER_AGENT = "pbxhost-websms"
MAX_REPLY = 65536


@dataclass(frozen=True)
class HttpRequest:
    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"


class Outcome(Enum):
    SENT = "SENT"
    RETRY = "RETRY"    # the ITSP may take it later
    FAILED = "FAILED"  # it will not: report to the sender


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    detail: str
    status: int | None = None


# ---------------------------------------------------------------- building


def number(value: str, numform: str) -> str:
    """val_numform = E164: the ITSP wants 12025550160, not +12025550160 or 0012025550160."""
    if numform.upper().replace(".", "") == "E164":
        if value.startswith("+"):
            return value[1:]
        if value.startswith("00"):
            return value[2:]
    return value


def php_urlencode(pairs: list[tuple[str, str]]) -> str:
    """http_build_query as PHP writes it (Zadarma signs exactly these bytes)."""
    def enc(s: str) -> str:
        return quote_plus(s, safe="").replace("~", "%7E")
    return "&".join(f"{enc(k)}={enc(v)}" for k, v in pairs)


def fields_of(iface: Outgoing, to: str, sender: str, body: str) -> list[tuple[str, str]]:
    """The request's key/value pairs, quirks applied, sorted by key (as the seed did)."""
    if iface.val_unicode.upper() == "UCS-2":
        body = text.drop_non_bmp(body)
    pairs = {iface.key_to: number(to, iface.val_numform),
             iface.key_from: number(sender, iface.val_numform),
             iface.key_body: body}
    if iface.val_unicode and "=" in iface.val_unicode and text.has_non_bmp(body):
        key, _, value = iface.val_unicode.partition("=")
        pairs[key.strip()] = value.strip()
    pairs.update(dict(iface.val_static))
    if iface.auth_method == "plain":
        pairs[iface.key_user] = iface.auth_user
        pairs[iface.key_secret] = iface.auth_secret
    return sorted(pairs.items())


def zadarma_signature(path: str, query: str, secret: str) -> str:
    """base64(hex(HMAC-SHA1(secret, path + query + hex(md5(query))))), as Zadarma's PHP does."""
    md5 = hashlib.md5(query.encode()).hexdigest()  # the ITSP's scheme, not ours
    mac = hmac.new(secret.encode(), (path + query + md5).encode(), hashlib.sha1).hexdigest()
    return base64.b64encode(mac.encode()).decode()


def build(iface: Outgoing, to: str, sender: str, body: str) -> HttpRequest:
    pairs = fields_of(iface, to, sender, body)
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json, */*"}
    if iface.req_format == "json" and iface.auth_method != "zadarma":
        payload = json.dumps(dict(pairs), ensure_ascii=False).encode("utf-8")
        headers["Content-Type"] = "application/json; charset=utf-8"
    else:
        query = php_urlencode(pairs)
        payload = query.encode("ascii")
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    method = iface.auth_method
    if method == "basic":
        token = base64.b64encode(f"{iface.auth_user}:{iface.auth_secret}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    elif method == "bearer":
        headers["Authorization"] = f"Bearer {iface.auth_secret}"
    elif method == "zadarma":
        path = urlsplit(iface.url).path
        signature = zadarma_signature(path, payload.decode("ascii"), iface.auth_secret)
        headers["Authorization"] = f"{iface.auth_user}:{signature}"
    if not iface.provider:
        return HttpRequest(url=iface.url, body=payload, headers=headers)
    # what only the preset knows: GET, another Content-Type, `to` as a list, ...
    req = providers.adjust_request(iface.provider, providers.OutRequest(
        "POST", iface.url, headers, payload), body, iface.key_to, iface.key_from)
    return HttpRequest(url=req.url, body=req.body, headers=req.headers, method=req.method)


# ---------------------------------------------------------------- judging the reply


def _json_values(doc: Any) -> list[tuple[str, str]]:
    """Every key/value pair of a JSON document, scalars as written."""
    out: list[tuple[str, str]] = []
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, dict | list):
                    stack.append(v)
                else:
                    out.append((str(k), _scalar_text(v)))
        elif isinstance(node, list):
            stack.extend(node)
    return out


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def check_reply(resp_check: str, reply: bytes) -> str | None:
    """None when the reply satisfies resp_check, else why not. `key=value`
    must be found anywhere in a JSON reply; `/regex/` searches the raw text."""
    if not resp_check:
        return None
    body = reply.decode("utf-8", "replace")
    if len(resp_check) >= 2 and resp_check[0] == resp_check[-1] == "/":
        return None if re.search(resp_check[1:-1], body) else f"reply does not match {resp_check}"
    key, _, want = resp_check.partition("=")
    try:
        doc = json.loads(body, parse_float=str, parse_int=str)
    except ValueError:
        return f"reply is not JSON, so {resp_check} cannot be found"
    if (key.strip(), want.strip()) in _json_values(doc):
        return None
    return f"reply lacks {resp_check}"


def judge(status: int, reply: bytes, resp_check: str) -> Result:
    snippet = reply[:200].decode("utf-8", "replace").strip()
    if status == 429 or status >= 500:
        return Result(Outcome.RETRY, f"HTTP {status} {snippet}".strip(), status)
    if not 200 <= status < 300:
        return Result(Outcome.FAILED, f"HTTP {status} {snippet}".strip(), status)
    why = check_reply(resp_check, reply)
    if why:
        return Result(Outcome.FAILED, f"{why}: {snippet}", status)
    return Result(Outcome.SENT, f"HTTP {status}", status)


# ---------------------------------------------------------------- the call


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a POST is never replayed elsewhere; the 3xx is judged as it is


@functools.lru_cache(maxsize=16)
def _opener(cafile: str) -> urllib.request.OpenerDirector:
    """One per CA file for the life of the process: loading the system's CA
    bundle takes 30 ms, most of an SMS's way out (measured in bench/)."""
    context = ssl.create_default_context(cafile=cafile or None)  # verifies chain and host name
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=context),
                                       _NoRedirect())


def post(iface: Outgoing, request: HttpRequest) -> Result:
    """Blocking: run it in a worker thread."""
    req = urllib.request.Request(request.url, data=request.body or None, headers=request.headers,
                                 method=request.method)
    try:
        with _opener(iface.tls_cafile).open(req, timeout=iface.timeout) as resp:
            return judge(resp.status, resp.read(MAX_REPLY), iface.resp_check)
    except urllib.error.HTTPError as exc:
        return judge(exc.code, exc.read(MAX_REPLY) if exc.fp else b"", iface.resp_check)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Result(Outcome.RETRY, f"{urlsplit(request.url).netloc}: {reason}")


def send(iface: Outgoing, to: str, sender: str, body: str) -> Result:
    request = build(iface, to, sender, body)
    seg = text.segments(body)
    result = post(iface, request)
    log.info("SMS %s → %s via %s: %s, %s", sender, to, iface.name or "default",
             result.outcome.value, seg)
    return result
