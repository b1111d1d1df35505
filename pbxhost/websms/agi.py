"""The dialplan's way out: FastAGI at agi://127.0.0.1:4573/websms (the
contracts), and the same conversation as a plain AGI script (`websms agi`)
when the daemon does not answer.

    AGI(agi://127.0.0.1:4573/websms,TO,FROM,BODY,INDEX,USER)

BODY is percent-encoded (URIENCODE) so commas and line breaks survive; any
argument left out is read from the message itself (MESSAGE(to),
MESSAGE(from), MESSAGE(body) as base64, WEBSMS_INDEX). USER is the sending
endpoint: it is told when sending fails, and without INDEX its interface is
its set_var WEBSMS_INDEX in pjsip.conf. A TO that is one of our users (a hint
in hint_context) is queued for that user's phones; anything else is sent
through the ITSP. WEBSMS_STATUS is set to SENT, QUEUED or FAILED."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import pwd
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote

from pbxhost import service
from pbxhost.websms import guards, inbound, peercred
from pbxhost.websms.config import AGI_ADDR, WebsmsConfig, user_set_vars
from pbxhost.websms.deliver import hint_candidates
from pbxhost.websms.model import INBOUND, Sms, new_id
from pbxhost.websms.outbox import Outbox, outgoing
from pbxhost.websms.spool import SpoolError

log = logging.getLogger("pbxhost.websms.agi")
SCRIPT = "websms"
_REPLY = re.compile(r"(\d{3}) result=(-?\d+)(?: \((.*)\))?.*", re.S)
_SIP_USER = re.compile(r"sips?:([^@;>:]+)@")
MAX_LINE = 65536
INDEX_TTL = 30.0  # seconds the users' set_var (WEBSMS_INDEX, TOLL_ALLOW) are trusted
READ_TIMEOUT = 10.0   # every line Asterisk owes us: its environment and each reply
MAX_CONNECTIONS = 32  # FastAGI conversations at once; Asterisk needs one per SMS in flight
TOLL_SUB = "sub_toll_class"  # the dialplan's number classes (extensions.conf)


class AgiError(Exception):
    """The AGI conversation broke (hang-up, bad reply, closed stream)."""


class BodyRefused(inbound.Refused):
    """The text is refused, but who sent it to whom is known: the sender is told."""

    def __init__(self, refused: inbound.Refused, to: str, sender: str) -> None:
        super().__init__(refused.status, refused.reason)
        self.to, self.sender = to, sender


def parse_reply(line: str) -> tuple[int, int, str | None]:
    """`200 result=1 (value)` → (200, 1, "value")."""
    m = _REPLY.fullmatch(line.strip())
    if not m:
        raise AgiError(f"unexpected AGI reply {line[:80]!r}")
    return int(m.group(1)), int(m.group(2)), m.group(3)


def sip_user(uri: str) -> str:
    """`"Jane" <sip:+12025550183@pbx>` → +12025550183."""
    m = _SIP_USER.search(uri)
    return m.group(1) if m else uri.strip()


class Session:
    """One AGI conversation over a line reader and a writer."""

    def __init__(self, readline: Callable[[], Awaitable[bytes]],
                 write: Callable[[bytes], Awaitable[None]],
                 timeout: float = READ_TIMEOUT) -> None:
        self.readline, self.write, self.timeout = readline, write, timeout

    async def _line(self) -> str:
        """One line, within the deadline: a peer that stops talking is cut off."""
        try:
            raw = await asyncio.wait_for(self.readline(), self.timeout)
        except TimeoutError:
            raise AgiError(f"no AGI line within {self.timeout:.0f}s") from None
        if not raw:
            raise AgiError("AGI stream closed")
        if len(raw) > MAX_LINE:
            raise AgiError("AGI line too long")
        return raw.decode("utf-8", "replace").rstrip("\r\n")

    async def environment(self) -> dict[str, str]:
        env: dict[str, str] = {}
        while line := await self._line():
            key, sep, value = line.partition(":")
            if sep:
                env[key.strip()] = value.strip()
        return env

    async def command(self, line: str) -> tuple[int, str | None]:
        await self.write(line.encode("utf-8") + b"\n")
        while True:
            reply = await self._line()
            # a hang-up notice precedes the reply; GOSUB answers "100 Trying" first
            if not reply.startswith(("HANGUP", "100 ")):
                break
        code, result, value = parse_reply(reply)
        if code != 200:
            raise AgiError(f"{line.split()[0]} refused: {reply[:80]}")
        return result, value

    async def get(self, expression: str) -> str:
        """The value of a dialplan expression, "" when unset."""
        result, value = await self.command(f'GET FULL VARIABLE "{expression}"')
        return value or "" if result == 1 else ""

    async def set(self, name: str, value: str) -> None:
        await self.command(f'SET VARIABLE {name} "{value}"')

    async def toll_class(self, number: str) -> str:
        """The dialplan's class of NUMBER (premium, international, domestic),
        by running its sub_toll_class; "" when the dialplan has none. Its
        TOLL_HOME global says it has: a GOSUB to a missing label would end
        the AGI with FAILURE, and sub_websms would run the plain script too."""
        if not await self.get("${TOLL_HOME}"):
            return ""
        result, _ = await self.command(f"GOSUB {TOLL_SUB} s 1 {number}")  # res_agi adds the ()
        if result != 0:
            return ""
        return (await self.get("${GOSUB_RETVAL}")).strip().lower()


@dataclass(frozen=True)
class Request:
    to: str
    sender: str
    body: str
    index: str
    user: str = ""  # the sending endpoint, when the dialplan names it


def _arg(env: dict[str, str], n: int) -> str:
    return env.get(f"agi_arg_{n}", "").strip()


async def _body(session: Session, encoded: str) -> str:
    """The text: the percent-encoded argument, else MESSAGE(body) via base64."""
    try:
        if encoded:
            return unquote(encoded, errors="strict")
        b64 = await session.get("${BASE64_ENCODE(${MESSAGE(body)})}")
        return base64.b64decode(b64, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise inbound.Refused(400, "the text is not UTF-8") from None


async def read_request(session: Session, env: dict[str, str]) -> Request:
    """The SMS from the arguments, or from the message where an argument is missing.
    Raises inbound.Refused when to/from break the rules of the edge, BodyRefused
    when only the text does."""
    to, sender, encoded, index, user = (_arg(env, n) for n in (1, 2, 3, 4, 5))
    if not to:
        to = sip_user(await session.get("${MESSAGE(to)}"))
    if not sender:
        sender = sip_user(await session.get("${MESSAGE(from)}"))
    if not index:
        index = await session.get("${WEBSMS_INDEX}")
    to, sender = inbound.valid_party(to, "to"), inbound.valid_party(sender, "from")
    user = inbound.valid_party(user, "user") if user else sender
    try:
        body = inbound.valid_text(await _body(session, encoded), 100_000)
    except inbound.Refused as exc:
        raise BodyRefused(exc, to, user) from None
    return Request(to=to, sender=sender, body=body, index=index, user=user)


async def local_user(session: Session, to: str, hint_context: str) -> str | None:
    """The number as our dialplan knows it, when it is one of our users."""
    for exten in hint_candidates(to):
        if await session.get(f"${{HINT({exten}@{hint_context})}}"):
            return exten
    return None


class Handler:
    """What websms does with one AGI request: queue for a local user, or send out."""

    def __init__(self, cfg: WebsmsConfig, outbox: Outbox,
                 deliver_local: Callable[[Sms], None], wait: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 rate: guards.Limiter | None = None) -> None:
        """RATE: where the per-user rate is counted; default in memory (websmsd's
        FastAGI); the plain AGI fallback counts in files (ratestore)."""
        self.cfg, self.outbox, self.deliver_local = cfg, outbox, deliver_local
        self.wait = cfg.retry.agi_wait if wait is None else wait
        self._vars: tuple[float, dict[str, dict[str, str]]] = (-INDEX_TTL - 1, {})
        self.rate = rate or guards.RateLimit(cfg.guards.rate_limit, cfg.guards.rate_window,
                                             clock)
        self._warned_toll = False

    def user_var(self, user: str, name: str) -> str | None:
        """The user's set_var NAME (pjsip.conf, read again after INDEX_TTL)."""
        read_at, found = self._vars
        if time.monotonic() - read_at > INDEX_TTL:
            found = user_set_vars(self.cfg.path.parent)
            self._vars = (time.monotonic(), found)
        return found.get(user, {}).get(name)

    def index_of(self, user: str) -> str:
        """The user's WEBSMS_INDEX."""
        return self.user_var(user, "WEBSMS_INDEX") or ""

    async def refusal(self, session: Session, req: Request) -> tuple[str, str] | None:
        """(WEBSMS_STATUS, reason) when this SMS may not go out; None when it may.
        Toll guards as for calls; then the user's rate (only SMS that may go count)."""
        toll_class = await session.toll_class(req.to)
        if not toll_class and not self._warned_toll:
            self._warned_toll = True
            log.warning("the dialplan has no TOLL_HOME (nor %s): SMS to the outside are "
                        "not toll-guarded", TOLL_SUB)
        allow = ""
        if guards.toll_refusal(toll_class, "") is not None:  # only then ask what is allowed
            found = self.user_var(req.user, "TOLL_ALLOW")
            # no set_var: the global default of extensions_local.conf
            allow = found if found is not None else await session.get("${TOLL_ALLOW}")
        why = guards.toll_refusal(toll_class, allow)
        if why is not None:
            return "TOLL_REFUSED", why
        if not self.rate.take(req.user):
            g = self.cfg.guards
            return "RATE_LIMITED", f"more than {g.rate_limit} SMS in {g.rate_window}s"
        return None

    async def handle(self, session: Session, env: dict[str, str]) -> str:
        try:
            req = await read_request(session, env)
        except BodyRefused as exc:
            # Asterisk empties a MESSAGE body over 1023 bytes: say so, the phone showed it sent
            why = ("the text was empty or longer than Asterisk takes (1023 bytes)"
                   if exc.reason == "empty body" else exc.reason)
            log.warning("SMS from %s to %s refused: %s", exc.sender, exc.to, why)
            await self.outbox.tell(outgoing(exc.to, exc.sender, "", "", exc.sender, time.time(),
                                      self.cfg.retry.expire), why)
            status = "FAILED"
        except inbound.Refused as exc:
            log.warning("SMS from the dialplan refused: %s", exc.reason)
            status = "FAILED"
        else:
            status = await self._route(session, req)
        await session.set("WEBSMS_STATUS", status)
        return status

    async def _route(self, session: Session, req: Request) -> str:
        now = time.time()
        local = await local_user(session, req.to, self.cfg.queue.hint_context)
        try:
            if local is not None:
                sms = Sms(kind=INBOUND, id=new_id(), to=local, sender=req.sender, body=req.body,
                          created=now, expires=now + self.cfg.queue.expire)
                await self.outbox.spool.accept(sms)
                self.deliver_local(sms)
                log.info("SMS %s from %s to our user %s queued for its phones", sms.id,
                         req.sender, local)
                return "QUEUED"
            index = req.index or self.index_of(req.user)
            sms = outgoing(req.to, req.sender, req.body, index, req.user, now,
                           self.cfg.retry.expire)
            refused = await self.refusal(session, req)
            if refused is not None:
                status, why = refused
                log.log(service.NOTICE, "SMS from %s (%s) to %s refused: %s", req.user, req.sender,
                        req.to, why, extra={"SMS_TO": req.to})
                await self.outbox.tell(sms, why)
                return status
            return await self.outbox.submit(sms, self.wait)
        except SpoolError as exc:
            log.error("SMS from %s to %s not taken: %s", req.sender, req.to, exc)
            return "FAILED"


# ---------------------------------------------------------------- FastAGI server


def agi_uids(users: tuple[str, ...]) -> frozenset[int]:
    """Who may use FastAGI: root, websmsd's own user (both can read the ITSP
    credentials anyway) and USERS (names or uids; Asterisk's). A name this
    host does not know is left out, with a warning."""
    uids = {0, os.geteuid()}
    for user in users:
        if user.isdigit():
            uids.add(int(user))
            continue
        try:
            uids.add(pwd.getpwnam(user).pw_uid)
        except KeyError:
            log.warning("agi_users: no user %r on this host", user)
    return frozenset(uids)


class FastAgiServer:
    """agi://127.0.0.1:4573/websms: one connection per message, no process per message.

    Only Asterisk may talk to it (decision): FastAGI is TCP (Asterisk has no
    Unix-socket FastAGI), so any local user can connect, and whoever talks
    AGI here sends SMS at the owner's cost. The kernel knows the uid that owns
    the peer's socket (peercred: sock_diag, /proc/net/tcp); a peer not owned by
    Asterisk's user (agi_users), root or websms is closed before a byte is
    read. No secret to seed or leak, nothing in the dialplan or in nftables to
    keep in step, and the same check covers IPv4 and IPv6."""

    def __init__(self, handler: Handler, addr: tuple[str, int] = AGI_ADDR,
                 uids: frozenset[int] | None = None,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.handler, self.addr = handler, addr
        self.uids = agi_uids(handler.cfg.guards.agi_users) if uids is None else uids
        self.max_connections, self.open = max_connections, 0
        self.server: asyncio.Server | None = None

    def admits(self, writer: asyncio.StreamWriter) -> bool:
        peer, local = writer.get_extra_info("peername"), writer.get_extra_info("sockname")
        if self.open >= self.max_connections:
            log.warning("FastAGI connection from %s refused: %d open", peer, self.open)
            return False
        try:
            uid = peercred.peer_uid(peer[:2], local[:2])
        except (OSError, ValueError) as exc:  # fail closed: the dialplan's plain AGI remains
            log.error("FastAGI connection from %s refused: its owner is unknown (%s); websmsd "
                      "needs AF_NETLINK (sock_diag) or /proc/net/tcp: add AF_NETLINK to the "
                      "unit's RestrictAddressFamilies", peer, exc)
            return False
        if uid not in self.uids:
            log.warning("FastAGI connection from %s refused: uid %s is not Asterisk's",
                        peer, uid)
            return False
        return True

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._connection, *self.addr, limit=MAX_LINE)
        log.info("FastAGI listening on agi://%s:%d/%s", *self.addr, SCRIPT)

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        async def write(data: bytes) -> None:
            writer.write(data)
            await writer.drain()
        if not self.admits(writer):
            writer.close()
            return
        self.open += 1
        session = Session(reader.readline, write)
        try:
            env = await asyncio.wait_for(session.environment(), READ_TIMEOUT)
            script = env.get("agi_network_script", "").strip("/")
            if script != SCRIPT:
                log.warning("FastAGI request for %r refused (only %r)", script, SCRIPT)
                return
            await self.handler.handle(session, env)
        except (AgiError, OSError, TimeoutError, ValueError) as exc:
            log.warning("FastAGI conversation ended early: %s", exc)
        finally:
            self.open -= 1
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


# ---------------------------------------------------------------- the plain AGI script


async def script(handler: Handler) -> str:
    """AGI on stdin/stdout (Asterisk runs `websms agi ...` for each message).
    stdin is read on the loop (a pipe from Asterisk), not in a thread, so a
    read past its deadline is cancelled and the script ends."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE + 1)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def readline() -> bytes:
        try:
            return await reader.readline()
        except ValueError:  # longer than the limit
            raise AgiError("AGI line too long") from None

    async def write(data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    session = Session(readline, write)
    env = await session.environment()
    return await handler.handle(session, env)
