"""websmsd's HTTP server on a real loopback socket: what the handler gets,
keep-alive and pipelining, chunked bodies, 100-continue, the parser's
refusals, slow senders, too many connections, a failing handler, and a
client that goes away while its request is being stored."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from pbxhost.websms.httpd import CONTINUE, HttpServer, Reply, _Connection, render
from pbxhost.websms.inbound import Request

OK = Reply(200, b"OK\n", (("Content-Type", "text/plain"),))


@contextlib.asynccontextmanager
async def served(handler: Callable[[Request], Awaitable[Reply]] | None = None,
                 **kw) -> AsyncIterator[tuple[HttpServer, list[Request]]]:
    seen: list[Request] = []

    async def record(req: Request) -> Reply:
        seen.append(req)
        return OK
    server = HttpServer(handler or record, "127.0.0.1", 0, max_body=kw.pop("max_body", 1000),
                        **kw)
    await server.start()
    try:
        yield server, seen
    finally:
        await server.close()


def port(server: HttpServer) -> int:
    assert server.server is not None
    return server.server.sockets[0].getsockname()[1]


async def exchange(server: HttpServer, data: bytes, read_until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port(server))
    writer.write(data)
    await writer.drain()
    try:
        if read_until_close:
            return await asyncio.wait_for(reader.read(), 5)
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


def post(body: bytes, path: str = "/sms/in", version: str = "1.1", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/{version}\r\nHost: pbx\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def status_lines(data: bytes) -> list[str]:
    return [m.decode() for m in re.findall(rb"HTTP/1\.1 \d{3} [^\r]*", data)]


def test_the_handler_gets_the_request_as_sent():
    async def scenario() -> None:
        async with served() as (server, seen):
            data = await exchange(server, post(b"To=%2B1&Body=x", path="//sms/%C3%A9?a=1",
                                               version="1.0", extra="X-Real-IP: 192.0.2.9\r\n"))
            assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\nOK\n")
            assert b"Connection: close\r\n" in data and b"Content-Length: 3\r\n" in data
            [req] = seen
            assert (req.method, req.path, req.query) == ("POST", "/sms/é", "a=1")
            assert req.body == b"To=%2B1&Body=x" and req.remote_addr == "127.0.0.1"
            assert req.content_type == "application/x-www-form-urlencoded"
            assert req.headers["HTTP_X_REAL_IP"] == "192.0.2.9"
            assert "HTTP_CONTENT_LENGTH" not in req.headers
    asyncio.run(scenario())


def test_keep_alive_and_pipelined_requests_are_answered_in_order():
    async def echo(req: Request) -> Reply:
        await asyncio.sleep(0.01 if req.body == b"first" else 0)
        return Reply(200, req.body)

    async def scenario() -> None:
        async with served(echo) as (server, _):
            pipelined = post(b"first") + b"\r\n" + post(b"second") + post(b"third", extra=(
                "Connection: close\r\n"))
            data = await exchange(server, pipelined)
            assert status_lines(data) == ["HTTP/1.1 200 OK"] * 3
            assert data.index(b"first") < data.index(b"second") < data.index(b"third")
            assert data.count(b"Connection: keep-alive") == 2
    asyncio.run(scenario())


def test_chunked_body_and_expect_100_continue():
    async def scenario() -> None:
        async with served() as (server, seen):
            reader, writer = await asyncio.open_connection("127.0.0.1", port(server))
            writer.write(b"POST /sms/in HTTP/1.1\r\nHost: pbx\r\nExpect: 100-continue\r\n"
                         b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            assert await asyncio.wait_for(reader.readline(), 5) == b"HTTP/1.1 100 Continue\r\n"
            writer.write(b"4\r\nBody\r\n3\r\n=hi\r\n0\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert status_lines(data) == ["HTTP/1.1 200 OK"]
            assert seen[0].body == b"Body=hi"
    asyncio.run(scenario())


@pytest.mark.parametrize("request_bytes, status", [
    (post(b"x" * 1001), 413),                                        # body over the limit
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"3e9\r\n" + b"x" * 1001, 413),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),  # headers over 16 KiB
    (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n", 400),
    (b"GET /\nX HTTP/1.1\r\n\r\n", 400),                               # a bare LF in the line
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),    # TLS to a plain port
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
])
def test_what_the_parser_refuses_gets_its_status_and_the_connection_closes(request_bytes, status):
    async def scenario() -> None:
        async with served() as (server, seen):
            data = await exchange(server, request_bytes)
            assert status_lines(data)[0].split()[1] == str(status)
            assert b"Connection: close" in data
            assert seen == []
    asyncio.run(scenario())


def test_a_body_of_exactly_the_limit_is_taken():
    async def scenario() -> None:
        async with served() as (server, seen):
            data = await exchange(server, post(b"x" * 1000, extra="Connection: close\r\n"))
            assert status_lines(data) == ["HTTP/1.1 200 OK"] and len(seen[0].body) == 1000
    asyncio.run(scenario())


def test_a_slow_sender_is_cut_off():
    async def scenario() -> None:
        async with served(timeout=0.3) as (server, seen):
            reader, writer = await asyncio.open_connection("127.0.0.1", port(server))
            writer.write(b"POST /sms/in HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
            writer.close()
            assert seen == []
    asyncio.run(scenario())


def test_connections_over_the_limit_get_503():
    async def scenario() -> None:
        async with served(max_connections=2) as (server, _):
            held = [await asyncio.open_connection("127.0.0.1", port(server)) for _ in range(2)]
            data = await exchange(server, post(b"x"))
            assert status_lines(data) == ["HTTP/1.1 503 Service Unavailable"]
            assert b"Retry-After: 10" in data
            for _, writer in held:
                writer.close()
    asyncio.run(scenario())


def test_a_stranger_gets_a_few_connections_an_itsp_any():
    async def scenario(known) -> list[str]:
        async with served(max_per_source=2, known=known) as (server, _):
            held = [await asyncio.open_connection("127.0.0.1", port(server)) for _ in range(2)]
            data = await exchange(server, post(b"x", extra="Connection: close\r\n"))
            for _, writer in held:
                writer.close()
            return status_lines(data)
    assert asyncio.run(scenario(None)) == ["HTTP/1.1 503 Service Unavailable"]
    assert asyncio.run(scenario(lambda peer: peer == "127.0.0.1")) == ["HTTP/1.1 200 OK"]


def test_a_source_not_admitted_gets_403_before_anything_is_read():
    async def scenario() -> None:
        async with served(admit=lambda peer: peer != "127.0.0.1") as (server, seen):
            start = asyncio.get_running_loop().time()
            data = await exchange(server, post(b"x" * 500))
            assert status_lines(data) == ["HTTP/1.1 403 Forbidden"]
            assert data.endswith(b"source not allowed\n") and seen == []
            while server.connections and asyncio.get_running_loop().time() - start < 5:
                await asyncio.sleep(0.01)
            # closed at the client's EOF, not at the LINGER deadline
            assert not server.connections and asyncio.get_running_loop().time() - start < 1
        async with served(admit=lambda peer: peer == "127.0.0.1") as (server, seen):
            data = await exchange(server, post(b"x", extra="Connection: close\r\n"))
            assert status_lines(data) == ["HTTP/1.1 200 OK"] and len(seen) == 1
    asyncio.run(scenario())


def test_bindaddr_any_ipv6_serves_ipv4_and_ipv6():
    """`bindaddr = ::` is every address: an IPv4 client (::ffff:127.0.0.1) and an
    IPv6 one are both served, on one socket."""
    async def go():
        seen: list[Request] = []

        async def record(req: Request) -> Reply:
            seen.append(req)
            return OK
        server = HttpServer(record, "::", 0, max_body=1000)
        await server.start()
        try:
            answers = []
            for host in ("127.0.0.1", "::1"):
                reader, writer = await asyncio.open_connection(host, port(server))
                writer.write(post(b"To=1", extra="Connection: close\r\n"))
                answers.append(await asyncio.wait_for(reader.read(), 5))
                writer.close()
            return answers, [r.remote_addr for r in seen], server.where()
        finally:
            await server.close()
    answers, peers, where = asyncio.run(go())
    assert [status_lines(a) for a in answers] == [["HTTP/1.1 200 OK"]] * 2
    assert peers == ["::ffff:127.0.0.1", "::1"] and where.startswith("[::]:")


def test_a_failing_handler_is_a_500_and_the_server_goes_on():
    calls = []

    async def flaky(req: Request) -> Reply:
        calls.append(req)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return OK

    async def scenario() -> None:
        async with served(flaky) as (server, _):
            first = await exchange(server, post(b"a"))
            assert status_lines(first) == ["HTTP/1.1 500 Internal Server Error"]
            assert b"boom" not in first
            second = await exchange(server, post(b"b", extra="Connection: close\r\n"))
            assert status_lines(second) == ["HTTP/1.1 200 OK"]
    asyncio.run(scenario())


def test_a_client_gone_mid_way_does_not_stop_the_store():
    stored = asyncio.Event()

    async def slow_store(req: Request) -> Reply:
        await asyncio.sleep(0.2)  # the journal's write
        stored.set()
        return OK

    async def scenario() -> None:
        async with served(slow_store) as (server, _):
            _, writer = await asyncio.open_connection("127.0.0.1", port(server))
            writer.write(post(b"To=%2B1"))
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.close()  # the ITSP gives up; it will send the request again
            await asyncio.wait_for(stored.wait(), 5)
    asyncio.run(scenario())


def test_head_has_no_body_and_close_waits_for_requests_being_answered():
    release = asyncio.Event()

    async def held(req: Request) -> Reply:
        if req.method == "POST":
            await release.wait()
        return OK

    async def scenario() -> None:
        async with served(held) as (server, _):
            head = await exchange(server, b"HEAD / HTTP/1.0\r\n\r\n")
            assert head.endswith(b"Content-Length: 3\r\nConnection: close\r\n\r\n")
            reader, writer = await asyncio.open_connection("127.0.0.1", port(server))
            writer.write(post(b"x"))
            await writer.drain()
            await asyncio.sleep(0.05)
            closing = asyncio.ensure_future(server.close())
            await asyncio.sleep(0.05)
            release.set()
            await closing
            data = await asyncio.wait_for(reader.read(), 5)
            assert status_lines(data) == ["HTTP/1.1 200 OK"] and b"Connection: close" in data
            writer.close()
    asyncio.run(scenario())


def test_render_refuses_a_header_with_a_line_break():
    with pytest.raises(ValueError):
        render(Reply(200, b"", (("X-A", "b\r\nSet-Cookie: x"),)), keep_alive=False)


# ---------------------------------------------------------------- fuzz: bytes in any pieces

class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data) -> None:  # type: ignore[override]
        assert not self.closed, "written after close"
        self.out += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name, default=None):
        return ("192.0.2.20", 40000) if name == "peername" else default


PIECES = [b"POST /sms/in HTTP/1.1\r\n", b"GET / HTTP/1.0\r\n", b"Content-Length: 5\r\n",
          b"Transfer-Encoding: chunked\r\n", b"Expect: 100-continue\r\n",
          b"Connection: close\r\n", b"\r\n", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"\n", b"\r",
          b"\x00", b"\xff\xfe", b" ", b":", b"X-A: b\r\n", b"Content-Length: 99999999\r\n"]


WHOLE = st.builds(lambda body, extra: post(body, extra=extra), st.binary(max_size=30),
                  st.sampled_from(["", "Connection: close\r\n", "Expect: 100-continue\r\n",
                                   "X-Forwarded-For: 192.0.2.1\r\n"]))


@settings(max_examples=400, deadline=None, database=None)
@given(st.lists(st.one_of(WHOLE, st.sampled_from(PIECES), st.binary(max_size=40)), max_size=10),
       st.integers(min_value=1, max_value=64))
def test_any_bytes_in_any_pieces_get_answers_or_a_close(pieces, chunk):
    """Whatever arrives, in whatever pieces: the server never raises, every
    answer is a whole HTTP/1.1 response (or a 100 Continue), and the handler
    gets only requests the parser completed."""
    data = b"".join(pieces)
    seen: list[Request] = []

    async def record(req: Request) -> Reply:
        assert isinstance(req.body, bytes) and req.method and req.path.startswith("/")
        seen.append(req)
        return OK

    async def scenario() -> FakeTransport:
        server = HttpServer(record, "127.0.0.1", 0, max_body=1000, timeout=5)
        conn = _Connection(server)
        transport = FakeTransport()
        conn.connection_made(transport)
        for start in range(0, len(data), chunk):
            conn.data_received(data[start:start + chunk])
            await asyncio.sleep(0)  # requests being answered run
        for _ in range(3):
            await asyncio.sleep(0)
        conn.connection_lost(None)
        return transport

    transport = asyncio.run(scenario())
    out = bytes(transport.out).replace(CONTINUE, b"")
    answers = re.findall(rb"HTTP/1\.1 (\d{3}) ", out)
    event(f"handled {min(len(seen), 2)}+, answers {sorted(set(answers))[:3]}")
    assert len(answers) >= len(seen)
    assert out == b"" or out.startswith(b"HTTP/1.1 ")
    assert all(b"\r\n\r\n" in part for part in out.split(b"HTTP/1.1 ")[1:])
