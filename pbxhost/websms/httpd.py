"""websmsd's HTTP/1.1 server: connections on the daemon's asyncio loop,
requests parsed by waitress's parser (HTTPRequestParser: request line,
headers, Content-Length, chunked bodies, size limits), one coroutine per
request.

Why not waitress's own server: it hands every request from its socket
thread to a worker thread and back, and websmsd's worker then waits for the
journal's commit. With the GIL, those hand-offs cost more CPU than the
webhook itself: 0.75 ms of CPU per request, against 0.36-0.43 ms here, where
the loop parses every request that has arrived, the journal commits them
together, and the answers go out (docs/websms.md, "Benchmark").

Per connection: one request at a time (pipelined ones wait, reading is
paused meanwhile); a request must be complete within TIMEOUT of the
connection or of the previous answer (a slow sender is cut off); at most
MAX_CONNECTIONS at once (503 beyond), at most MAX_PER_SOURCE from one address
that is not KNOWN (an ITSP, our proxy), and a peer that ADMIT refuses gets
403 before anything is read; `Expect: 100-continue` is answered; a
request the parser refuses gets its status (400, 413, 431, 501) and the
connection is closed."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

from waitress.adjustments import Adjustments
from waitress.parser import HTTPRequestParser

from pbxhost.websms.inbound import Request

log = logging.getLogger("pbxhost.websms.httpd")
TIMEOUT = 30.0
LINGER = 2.0          # a refused connection is closed after this at the latest
MAX_CONNECTIONS = 100
MAX_PER_SOURCE = 8    # connections at once from one address that is not an ITSP
MAX_HEADER = 16384
SERVER = "websmsd"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# headers that are not HTTP_* in a WSGI environ (and so not in Request.headers)
PLAIN_HEADERS = {"CONTENT_TYPE", "CONTENT_LENGTH"}


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Awaitable[Reply]]


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _Date:
    """The Date header, formatted once a second."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def __call__(self) -> str:
        now = int(time.time())
        if now != self.second:
            self.second, self.text = now, formatdate(now, usegmt=True)
        return self.text


DATE = _Date()


def render(reply: Reply, keep_alive: bool, head: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {reply.status} {_reason(reply.status)}", f"Date: {DATE()}",
             f"Server: {SERVER}"]
    for name, value in reply.headers:
        if any(c in "\r\n" for c in name + value):  # our own headers; never split a line
            raise ValueError(f"header {name!r} has a line break")
        lines.append(f"{name}: {value}")
    lines += [f"Content-Length: {len(reply.body)}",
              f"Connection: {'keep-alive' if keep_alive else 'close'}", "", ""]
    head_bytes = "\r\n".join(lines).encode("latin-1")
    return head_bytes if head else head_bytes + reply.body


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


def to_request(parsed: HTTPRequestParser, peer: str) -> Request:
    # waitress gives the path as latin-1 text of its bytes; UTF-8 is what was sent
    path = "/" + parsed.path.lstrip("/")
    return Request(
        method=parsed.command.upper(),
        path=path.encode("latin-1").decode("utf-8", "replace"),
        query=parsed.query,
        content_type=parsed.headers.get("CONTENT_TYPE", "").strip(),
        body=parsed.get_body_stream().read(),
        remote_addr=peer,
        headers={f"HTTP_{k}": v.strip() for k, v in parsed.headers.items()
                 if k not in PLAIN_HEADERS},
    )


def _refusal(parsed: HTTPRequestParser) -> tuple[int, str] | None:
    """The parser's verdict; and what it lets through without a method or an
    HTTP/1.x version (TLS sent to this plain port, say)."""
    if parsed.error is not None:
        return parsed.error.code, parsed.error.reason
    if not parsed.command or parsed.version not in ("1.0", "1.1"):
        return 400, "Bad Request"
    return None


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.parser = HTTPRequestParser(server.adj)
        self.buffer = bytearray()
        self.busy = False         # a request is being answered
        self.refused = False      # answered at once (403, 503), closing
        self.continued = False    # 100 Continue sent for the request being read
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport, self.peer = transport, _peer(transport)
        self.server.connections.add(self)
        if self.server.admit is not None and not self.server.admit(self.peer):
            log.warning("HTTP connection from %s refused: not an allowed source", self.peer)
            self._refuse(Reply(403, b"source not allowed\n"))
        elif self.server.over_source_limit(self):
            log.warning("HTTP connection from %s refused: %d connections from it open",
                        self.peer, self.server.max_per_source)
            self._refuse(Reply(503, b"too many connections from you\n",
                               (("Retry-After", "10"),)))
        elif len(self.server.connections) > self.server.max_connections:
            log.warning("HTTP connection from %s refused: %d connections open", self.peer,
                        len(self.server.connections) - 1)
            self._refuse(Reply(503, b"too many connections\n", (("Retry-After", "10"),)))
        else:
            self._arm()

    def _refuse(self, reply: Reply) -> None:
        """Answer at once, before any request is read, and close once the client
        has had it: what it sends meanwhile is dropped, and the close waits for its
        EOF (or LINGER), so that it does not reset the connection under the answer."""
        assert self.transport is not None
        self.refused = True
        self.server.connections.discard(self)  # not counted while it lingers
        self.transport.write(render(reply, keep_alive=False))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.timer = asyncio.get_running_loop().call_later(LINGER, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        self.buffer += data
        self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        self.parser.close()
        # a request being answered goes on: its SMS is stored all the same

    # -- requests -----------------------------------------------------------------
    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(self.server.timeout, self._timeout)

    def _timeout(self) -> None:
        if not self.busy and self.transport is not None:
            log.info("HTTP client %s: no complete request in %.0fs; closed", self.peer,
                     self.server.timeout)
            self.transport.close()

    def _parse(self) -> None:
        while self.buffer and not self.busy and self.transport is not None \
                and not self.transport.is_closing():
            used = self.parser.received(bytes(self.buffer))
            del self.buffer[:used]
            parsed = self.parser
            if not parsed.completed:  # the headers alone, or a part of the body
                if parsed.expect_continue and parsed.headers_finished and not self.continued:
                    self.continued = True
                    self.transport.write(CONTINUE)
                if used == 0:
                    return
                continue
            self.parser, self.continued = HTTPRequestParser(self.server.adj), False
            if parsed.empty:  # blank lines between pipelined requests
                continue
            self.busy = True
            self.transport.pause_reading()
            task = asyncio.ensure_future(self._serve(parsed))
            self.server.tasks.add(task)
            task.add_done_callback(self.server.tasks.discard)

    async def _serve(self, parsed: HTTPRequestParser) -> None:
        keep_alive = not parsed.connection_close
        refused = _refusal(parsed)
        try:
            if refused is not None:
                keep_alive = False
                reply = Reply(refused[0], f"{refused[1]}\n".encode())
                log.warning("HTTP request from %s refused: %s %s", self.peer, *refused)
            else:
                reply = await self.server.handler(to_request(parsed, self.peer))
        except Exception:
            log.exception("HTTP request from %s: handler failed", self.peer)
            reply, keep_alive = Reply(500, b"internal error\n"), False
        finally:
            parsed.close()
        head = refused is None and parsed.command == "HEAD"
        self._finish(reply, keep_alive and not self.server.closing, head)

    def _finish(self, reply: Reply, keep_alive: bool, head: bool = False) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(render(reply, keep_alive, head))
        if not keep_alive:
            transport.close()
            return
        self.busy = False
        self._arm()
        transport.resume_reading()
        self._parse()  # a pipelined request may be waiting


def dual_stack(port: int) -> socket.socket:
    """A listening socket on [::]:PORT that takes IPv4 too."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    def __init__(self, handler: Handler, host: str | None, port: int, max_body: int,
                 timeout: float = TIMEOUT, max_connections: int = MAX_CONNECTIONS,
                 admit: Callable[[str], bool] | None = None,
                 known: Callable[[str], bool] | None = None,
                 max_per_source: int = MAX_PER_SOURCE) -> None:
        """ADMIT: whether a peer address may send requests at all (None: any).
        KNOWN: a peer (an ITSP, our proxy) not held to MAX_PER_SOURCE
        connections at once (None: every peer is)."""
        self.handler, self.host, self.port, self.admit = handler, host, port, admit
        self.known, self.max_per_source = known, max_per_source
        self.timeout, self.max_connections = timeout, max_connections
        # bodies stay in memory (never a temp file): the overflow limit is above any body
        self.adj = Adjustments(max_request_body_size=max_body + 1,
                               max_request_header_size=MAX_HEADER,
                               inbuf_overflow=max_body + 65536,
                               clear_untrusted_proxy_headers=False)  # not used by the parser
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Future[None]] = set()
        self.server: asyncio.base_events.Server | None = None
        self.closing = False

    def over_source_limit(self, conn: _Connection) -> bool:
        """A stranger (not KNOWN) already holds MAX_PER_SOURCE connections: a
        flood from a few sources cannot take every connection and the loop."""
        if self.known is not None and self.known(conn.peer):
            return False
        same = sum(1 for c in self.connections if c.peer == conn.peer)
        return same > self.max_per_source

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.host == "::":
            # asyncio makes every IPv6 socket IPV6_V6ONLY; `bindaddr = ::` means
            # every address, IPv4 (as ::ffff:a.b.c.d) and IPv6, on one socket
            self.server = await loop.create_server(lambda: _Connection(self),
                                                   sock=dual_stack(self.port), backlog=1024)
            return
        self.server = await loop.create_server(
            lambda: _Connection(self), host=self.host, port=self.port, backlog=1024,
            reuse_address=True)

    def where(self) -> str:
        assert self.server is not None
        out = []
        for sock in self.server.sockets:
            host, port = sock.getsockname()[:2]
            out.append(f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}")
        return ", ".join(out)

    async def close(self, grace: float = 5.0) -> None:
        """No new connections; the requests being answered finish (their SMS may
        be stored already), then every connection is closed."""
        self.closing = True
        if self.server is not None:
            self.server.close()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=grace)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
