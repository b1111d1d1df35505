"""`websmsd`'s HTTP side: the ITSP's incoming-SMS webhook, served by
pbxhost.websms.httpd on the daemon's event loop. A request is answered 2xx
only once its SMS is durable (the journal); when it cannot be stored the
answer is 503, so the ITSP tries again. The console script `websmsd` starts
the whole daemon (pbxhost.websms.daemon)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from pbxhost.websms import httpd, inbound, providers, signatures
from pbxhost.websms.config import WebsmsConfig
from pbxhost.websms.httpd import Reply
from pbxhost.websms.spool import SpoolError, is_disk_full

log = logging.getLogger("pbxhost.websms.webhook")
RETRY_AFTER = "60"
# Returns True for a new SMS, False for a duplicate (both are answered 2xx).
Accept = Callable[[inbound.Message], Awaitable[bool]]
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
           extra: dict[str, str] | None = None) -> Reply:
    headers = {"Content-Type": content_type, "X-Content-Type-Options": "nosniff",
               "Cache-Control": "no-store", **(extra or {})}
    return Reply(status, body.encode("utf-8"), tuple(headers.items()))


def _ack(iface: inbound.Incoming) -> Reply:
    """The 2xx answer: the provider's (TwiML, an empty 200), resp_ack, or OK."""
    special = providers.ack(iface.provider, iface.resp_ack)
    if special is not None:
        return _reply(200, special.body, special.content_type)
    ack = iface.resp_ack
    return _reply(200, ack, _media_type(ack)) if ack else _reply(200, "OK\n")


async def handle(cfg: WebsmsConfig, accept: Accept, req: inbound.Request,
                 replay: signatures.ReplayGuard = REPLAY) -> Reply:
    peer = req.remote_addr or "?"
    now = time.time()
    try:
        if len(req.body) > cfg.webhook.req_maxsize:
            raise inbound.Refused(413, "request too large")
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
            new = await accept(message)
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


def server(cfg: WebsmsConfig, accept: Accept,
           replay: signatures.ReplayGuard = REPLAY) -> httpd.HttpServer:
    hook = cfg.webhook
    assert hook.port is not None
    host = hook.bindaddr.strip("[]") or None  # None: every address, IPv4 and IPv6

    async def handler(req: inbound.Request) -> Reply:
        return await handle(cfg, accept, req, replay)
    def admit(peer: str) -> bool:
        return inbound.admits_peer(peer, hook, cfg.incoming)

    def known(peer: str) -> bool:
        return inbound.known_peer(peer, hook, cfg.incoming)
    return httpd.HttpServer(handler, host, hook.port, max_body=hook.req_maxsize, admit=admit,
                            known=known)


def main(argv: list[str] | None = None) -> int:
    from pbxhost.websms import daemon  # the daemon imports this module
    return daemon.main(argv)
