"""`websmsd`'s HTTP side: a bottle app for the ITSP's incoming-SMS webhook,
served by waitress in its own threads. A request is answered 2xx only once
its SMS is durably in the spool (fsync'ed); when it cannot be stored the
answer is 503, so the ITSP tries again. The console script `websmsd` starts
the whole daemon (pbxhost.websms.daemon)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import bottle
import waitress.server

from pbxhost.websms import inbound, providers, signatures
from pbxhost.websms.config import WebsmsConfig
from pbxhost.websms.spool import SpoolError, is_disk_full

log = logging.getLogger("pbxhost.websms.webhook")
RETRY_AFTER = "60"
# Returns True for a new SMS, False for a duplicate (both are answered 2xx).
Accept = Callable[[inbound.Message], bool]
# signed requests taken by this process (refused when sent again)
REPLAY = signatures.ReplayGuard()


def _media_type(text: str) -> str:
    stripped = text.lstrip()
    if stripped.startswith("<"):
        return "application/xml"
    if stripped.startswith(("{", "[")):
        return "application/json"
    return "text/plain; charset=utf-8"


def _reply(status: int, body: str, content_type: str = "text/plain; charset=utf-8",
           extra: dict[str, str] | None = None) -> bottle.HTTPResponse:
    headers = {"Content-Type": content_type, "X-Content-Type-Options": "nosniff",
               "Cache-Control": "no-store", **(extra or {})}
    return bottle.HTTPResponse(body=body.encode("utf-8"), status=status, headers=headers)


def _read_body(environ: dict[str, Any], limit: int) -> bytes:
    """At most LIMIT + 1 bytes: one more than allowed is enough to refuse."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise inbound.Refused(400, "bad Content-Length") from None
    if length > limit:
        raise inbound.Refused(413, "request too large")
    return environ["wsgi.input"].read(length) if length > 0 else b""


def request_of(environ: dict[str, Any], limit: int) -> inbound.Request:
    # WSGI hands the path as latin-1 text of its bytes; UTF-8 is what was sent
    path = environ.get("PATH_INFO", "/").encode("latin-1").decode("utf-8", "replace")
    return inbound.Request(
        method=environ.get("REQUEST_METHOD", ""),
        path=path or "/",
        query=environ.get("QUERY_STRING", ""),
        content_type=environ.get("CONTENT_TYPE", ""),
        body=_read_body(environ, limit),
        remote_addr=environ.get("REMOTE_ADDR", ""),
        headers={k: v for k, v in environ.items() if k.startswith("HTTP_")},
        url_scheme=environ.get("wsgi.url_scheme", "http"),
    )


def _ack(iface: inbound.Incoming) -> bottle.HTTPResponse:
    """The 2xx answer: the provider's (TwiML, an empty 200), resp_ack, or OK."""
    special = providers.ack(iface.provider, iface.resp_ack)
    if special is not None:
        return _reply(200, special.body, special.content_type)
    ack = iface.resp_ack
    return _reply(200, ack, _media_type(ack)) if ack else _reply(200, "OK\n")


def handle(cfg: WebsmsConfig, accept: Accept, environ: dict[str, Any],
           replay: signatures.ReplayGuard = REPLAY) -> bottle.HTTPResponse:
    peer = environ.get("REMOTE_ADDR", "?")
    now = time.time()
    try:
        req = request_of(environ, cfg.webhook.req_maxsize)
        result = inbound.parse(req, cfg.webhook, cfg.incoming, now=now, replay=replay)
    except inbound.Refused as exc:
        log.warning("webhook request from %s refused: %s", peer, exc,
                    extra={"CLIENT": peer, "HTTP_STATUS": exc.status})
        return _reply(exc.status, f"{exc.reason}\n")
    if isinstance(result, inbound.Echo):
        log.info("echo probe from %s answered", peer)
        return _reply(200, result.text)
    if isinstance(result, inbound.Ignored):
        log.info("webhook request from %s taken, no SMS: %s", peer, result.reason)
        return _ack(result.iface)
    messages = result.messages if isinstance(result, inbound.Batch) else (result,)
    for message in messages:
        try:
            new = accept(message)
        except SpoolError as exc:
            log.error("SMS from %s to %s not stored, answered 503%s: %s", message.sender,
                      message.to, " (disk full)" if is_disk_full(exc) else "", exc)
            return _reply(503, "cannot store the message now\n",
                          extra={"Retry-After": RETRY_AFTER})
        if not new:
            log.info("SMS %s from %s again (id %s): already taken", message.to, message.sender,
                     message.provider_id)
    # stored: the same signed request is a replay from now on (not before: a retry after 503)
    replay.remember(messages[0].replay_key, now, messages[0].replay_ttl)
    return _ack(messages[0].iface)


def make_app(cfg: WebsmsConfig, accept: Accept) -> bottle.Bottle:
    app = bottle.Bottle(catchall=True)

    def any_path(path: str = "") -> bottle.HTTPResponse:
        return handle(cfg, accept, bottle.request.environ)

    app.route("/", method="ANY", callback=any_path)
    app.route("/<path:path>", method="ANY", callback=any_path)
    return app


class WebhookServer:
    """waitress in a thread of its own; its worker threads call ACCEPT."""

    def __init__(self, cfg: WebsmsConfig, accept: Accept) -> None:
        hook = cfg.webhook
        host = hook.bindaddr or "*"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        # bodies stay in memory (never a temp file): both limits above the largest request
        bottle.BaseRequest.MEMFILE_MAX = max(bottle.BaseRequest.MEMFILE_MAX, hook.req_maxsize + 1)
        self.server = waitress.server.create_server(
            make_app(cfg, accept), listen=f"{host}:{hook.port}", threads=hook.threads,
            max_request_body_size=hook.req_maxsize, inbuf_overflow=4 * hook.req_maxsize + 65536,
            max_request_header_size=16384, channel_timeout=30, ident="websmsd",
            expose_tracebacks=False, clear_untrusted_proxy_headers=False)
        self.thread = threading.Thread(target=self.server.run, name="webhook", daemon=True)

    def start(self) -> None:
        self.thread.start()
        log.info("webhook listening on %s", self.where())

    def where(self) -> str:
        listen = getattr(self.server, "effective_listen", None)
        if listen is None:
            listen = [(self.server.effective_host, self.server.effective_port)]
        return ", ".join(f"[{h}]:{p}" if ":" in str(h) else f"{h}:{p}" for h, p in listen)

    def close(self) -> None:
        self.server.close()


def main(argv: list[str] | None = None) -> int:
    from pbxhost.websms import daemon  # the daemon imports this module
    return daemon.main(argv)
