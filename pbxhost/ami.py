"""The one AMI client of pbxhost: panoramisk's message model and action
matching, driven by a connection loop of our own that panoramisk 1.4 lacks:
login failures are reported and retried, a dead link is noticed by a Ping with
a reply deadline, reconnects back off, a handler's exception never drops the
session, and UTF-8 split across TCP segments is decoded intact."""

from __future__ import annotations

import asyncio
import codecs
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from panoramisk import actions
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message

log = logging.getLogger("pbxhost.ami")
EOL = "\r\n"
EventHandler = Callable[[Message], Awaitable[None] | None]


class AmiError(Exception):
    """The AMI refused something (login, an action) or the link died."""


@dataclass(frozen=True)
class AmiSettings:
    host: str = "127.0.0.1"
    port: int = 5038
    username: str = ""
    secret: str = ""
    events: str = "on"          # the Events: filter sent at login ("on" = all we may read)
    ping_interval: float = 10   # seconds between liveness pings
    ping_timeout: float = 5     # no Pong within this → the link is dead
    backoff_min: float = 1
    # Asterisk is local: a retry is cheap, and events sent while we are away
    # are lost (an attacker's guesses unseen), so the wait stays short.
    backoff_max: float = 5


SEP = ": "
_new = object.__new__


def parse_message(block: str) -> Message | None:
    """The Message `Message.from_line(block.strip())` gives, built faster for an event.

    A flood is events (autoban's hot path): an event's headers fill its
    case-insensitive dict in one loop, instead of from_line's and panoramisk's
    __setitem__ per header. The result is the same Message (the same `_store`,
    the same attributes). What from_line treats specially goes through
    from_line itself: responses (a body, Output lines), a repeated header (it
    becomes a list), a quoted key (`Result`, unquoted), a line without ': '
    anywhere but last."""
    block = block.strip()
    if not block.startswith("Event: "):
        return Message.from_line(block)
    lines = block.split(EOL)
    if SEP not in lines[-1]:
        # from_line skips a line without ': '; the usual one is the last, a
        # header with an empty value ("ExpectedResponse: ") that strip() cut
        lines.pop()
    store: dict[str, tuple[str, str]] = {}
    for line in lines:
        key, sep, value = line.partition(SEP)
        lower = key.lower()
        if not sep or lower in store:
            return Message.from_line(block)
        store[lower] = (key, value)  # what CaseInsensitiveDict.__setitem__ stores
    if not store.keys().isdisjoint(Message.quoted_keys):
        return Message.from_line(block)
    store["content"] = ("content", "")  # Message.__init__'s content=''
    message = _new(Message)
    message.__dict__ = {"_store": store, "manager": None}  # what Message.__init__ sets
    return message


def header(message: Message, key: str, default: Any = "") -> Any:
    """MESSAGE's header KEY, any case: Message.get's answer, read straight from
    the `_store` panoramisk keeps (and parse_message fills); Message.get takes
    two Python calls per header, and a flood's events are read several each."""
    return message._store.get(key.lower(), (None, default))[1]


def parse_messages(text: str) -> tuple[list[Message], str]:
    """Split complete AMI messages off TEXT; returns them and the unfinished rest."""
    *blocks, rest = text.split(EOL + EOL)
    messages = [m for b in blocks if (m := parse_message(b)) is not None]
    return messages, rest


class _Protocol(AMIProtocol):
    """panoramisk's protocol with incremental decoding and our lifecycle."""

    def __init__(self, client: AmiClient) -> None:
        self.client = client
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.buffer = ""
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reset()

    def _reset(self) -> None:
        self.responses: dict[str, Any] = {}
        self.version: str | None = None
        self.closed = False
        self.factory = self.client  # panoramisk's handle_message dispatches events to it
        self.log = log
        self.encoding = "utf-8"

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._reset()

    def data_received(self, data: bytes) -> None:
        text = self.buffer + self.decoder.decode(data)
        if self.version is None:
            if EOL not in text:  # the banner line is not complete yet
                self.buffer = text
                return
            banner, _, text = text.partition(EOL)
            self.version = banner.partition("/")[2].strip()
        messages, self.buffer = parse_messages(text)
        dispatch = self.client.dispatch
        for message in messages:
            # panoramisk's handle_message, minus its work for a plain event (no
            # ActionID/CommandID an action could wait for, not Shutdown): dispatch
            store = message._store
            event = store.get("event")
            if (event is None or "actionid" in store or "commandid" in store
                    or type(event[1]) is not str or event[1].lower() == "shutdown"):
                self.handle_message(message)
            else:
                dispatch(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for action in list(self.responses.values()):
            if not action.future.done():
                action.future.set_exception(AmiError("AMI connection lost"))
        self.responses.clear()
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()


class AmiClient:
    """Keeps one AMI session alive and hands every event to `on_event`."""

    def __init__(self, settings: AmiSettings, on_event: EventHandler,
                 on_state: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.on_event = on_event
        self.on_state = on_state or (lambda state: None)
        self.protocol: _Protocol | None = None
        self.connected = asyncio.Event()

    # Called by panoramisk's handle_message for every event.
    def dispatch(self, event: Message) -> None:
        try:
            result = self.on_event(event)
            if result is not None and asyncio.iscoroutine(result):  # None: a plain function
                task = asyncio.ensure_future(result)
                task.add_done_callback(self._handler_done)
        except Exception:
            log.exception("AMI event handler failed on %s; session kept", event.get("Event"))

    @staticmethod
    def _handler_done(task: asyncio.Future[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("AMI event handler failed; session kept", exc_info=task.exception())

    async def action(self, fields: dict[str, Any], timeout: float = 10) -> Message:
        """Send an action on the live session and await its response."""
        if self.protocol is None or self.protocol.closed:
            raise AmiError("AMI not connected")
        action = (actions.Command if fields.get("Action") == "Command" else actions.Action)(fields)
        try:
            return await asyncio.wait_for(self.protocol.send(action), timeout)
        except TimeoutError as exc:
            raise AmiError(f"AMI: no reply to {fields.get('Action')} within {timeout}s") from exc

    async def run(self) -> None:
        """Connect, log in, serve; on any failure back off and do it again. Never returns."""
        backoff = self.settings.backoff_min
        said = ""  # the failure last logged: the same one again goes to debug
        while True:
            try:
                await self._session()
                backoff, said = self.settings.backoff_min, ""  # a session that lived
            except AmiError as exc:
                said = self._failed(logging.ERROR, str(exc), backoff, said)
            except OSError as exc:
                said = self._failed(logging.WARNING, f"AMI {self.settings.host}:"
                                    f"{self.settings.port} unreachable ({exc.strerror or exc})",
                                    backoff, said)
            self.on_state("disconnected")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.backoff_max)

    @staticmethod
    def _failed(level: int, why: str, backoff: float, said: str) -> str:
        """Log a failed attempt; while Asterisk is down (every few seconds) only
        the first of the same failures is a warning."""
        log.log(level if why != said else logging.DEBUG, "%s; retrying in %.0fs", why, backoff)
        return why

    async def login(self) -> _Protocol:
        """Connect and log in (AmiError when refused); the session is then live."""
        s = self.settings
        loop = asyncio.get_running_loop()
        _, protocol = await asyncio.wait_for(
            loop.create_connection(lambda: _Protocol(self), s.host, s.port), s.ping_timeout)
        self.protocol = protocol
        reply = await self.action({"Action": "Login", "Username": s.username,
                                   "Secret": s.secret, "Events": s.events}, s.ping_timeout)
        if not reply.success:
            raise AmiError(f"AMI login as {s.username!r} refused: {reply.get('Message')}")
        return protocol

    async def _session(self) -> None:
        s = self.settings
        try:
            protocol = await self.login()
            log.info("AMI connected to %s:%s as %s", s.host, s.port, s.username)
            self.connected.set()
            self.on_state("connected")
            while not protocol.lost.done():
                await asyncio.wait([protocol.lost], timeout=s.ping_interval)
                if not protocol.lost.done():
                    await self.action({"Action": "Ping"}, s.ping_timeout)
            raise AmiError("AMI connection closed by Asterisk")
        finally:
            self.connected.clear()
            if self.protocol is not None:
                self.protocol.close()
            self.protocol = None


async def check_login(settings: AmiSettings, timeout: float = 5) -> str | None:
    """None when SETTINGS log in to AMI, else why not (for health checks)."""
    client = AmiClient(replace(settings, events="off", ping_timeout=timeout), lambda e: None)
    try:
        await client.login()
        await client.action({"Action": "Logoff"}, timeout)
        return None
    except AmiError as exc:
        return str(exc)
    except (OSError, TimeoutError) as exc:
        return f"AMI {settings.host}:{settings.port} unreachable: {exc.strerror or exc}"
    finally:
        if client.protocol is not None:
            client.protocol.close()
