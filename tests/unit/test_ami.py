"""pbxhost.ami: recorded transcripts of a real Asterisk 22 replayed through the
parser, and the connection loop against a loopback AMI server of our own."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from pbxhost import ami

FIXTURES = Path(__file__).parent.parent / "fixtures/ami"


def replay(name: str, chunk: int | None = None) -> list:
    """Feed a transcript through the protocol, optionally in CHUNK-byte pieces."""
    data = (FIXTURES / name).read_bytes()
    events: list = []
    proto = feed(data, events, chunk or len(data))
    assert proto.version == "11.0.0"  # the AMI banner of Asterisk 22
    return events


class Sink:
    def __init__(self, events: list) -> None:
        self.dispatch = events.append


def feed(data: bytes, events: list, chunk: int) -> ami._Protocol:
    async def run() -> ami._Protocol:
        proto = ami._Protocol(Sink(events))  # type: ignore[arg-type]
        for i in range(0, len(data), chunk):
            proto.data_received(data[i:i + chunk])
        return proto
    return asyncio.run(run())


@pytest.mark.parametrize(("name", "remote"), [
    ("challenge_response_failed_ipv4.txt", "IPV4/UDP/192.0.2.66/5070"),
    ("challenge_response_failed_ipv6.txt", "IPV6/UDP/2001:db8:1::42/5070"),
])
def test_security_event_names_attacker(name, remote):
    events = [e for e in replay(name) if e.event == "ChallengeResponseFailed"]
    assert [(e.remoteaddress, e.accountid, e.service) for e in events] == [
        (remote, "jane", "PJSIP")]


def test_contact_status_transcript():
    statuses = [e for e in replay("contact_status_ipv4.txt") if e.event == "ContactStatus"]
    assert [e.contactstatus for e in statuses][-1] == "Reachable"
    assert statuses[0].aor == "jane"


def test_byte_by_byte_gives_the_same_messages():
    whole = replay("contact_status_ipv6.txt")
    assert [dict(e) for e in replay("contact_status_ipv6.txt", chunk=1)] == [
        dict(e) for e in whole]


def test_utf8_split_across_segments_is_kept():
    events: list = []
    raw = "Asterisk Call Manager/11.0.0\r\nEvent: UserEvent\r\nBody: h\u00e9llo \U0001F600\r\n\r\n"
    feed(raw.encode(), events, 1)
    assert events[0]["Body"] == "h\u00e9llo \U0001F600"


class FakeAmi:
    """A loopback AMI server: banner, Login, Ping, scripted events."""

    def __init__(self, secret: str = "good", answer_pings: bool = True) -> None:
        self.secret, self.answer_pings = secret, answer_pings
        self.logins = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        writer.write(b"Asterisk Call Manager/11.0.0\r\n")
        while block := await reader.readuntil(b"\r\n\r\n"):
            fields = dict(line.split(": ", 1) for line in block.decode().split("\r\n") if line)
            aid = fields.get("ActionID", "")
            if fields["Action"] == "Login":
                self.logins += 1
                ok = fields["Secret"] == self.secret
                status = "Success\r\nMessage: Authentication accepted" if ok else \
                    "Error\r\nMessage: Authentication failed"
                writer.write(f"Response: {status}\r\nActionID: {aid}\r\n\r\n".encode())
            elif fields["Action"] == "Logoff":
                writer.write(f"Response: Goodbye\r\nActionID: {aid}\r\n\r\n".encode())
                writer.close()
                return
            elif fields["Action"] == "Ping" and self.answer_pings:
                writer.write(f"Response: Success\r\nActionID: {aid}\r\nPing: Pong\r\n\r\n".encode())

    def send_event(self, text: str) -> None:
        for w in self.writers:
            w.write(text.encode())

    def close(self) -> None:
        self.server.close()
        for w in self.writers:
            w.close()


async def until(predicate, timeout: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def settings(port: int, secret: str = "good") -> ami.AmiSettings:
    return ami.AmiSettings(port=port, username="autoban", secret=secret, ping_interval=0.2,
                           ping_timeout=0.2, backoff_min=0.05, backoff_max=0.1)


def test_events_reach_handler_and_a_failing_handler_keeps_the_session(caplog):
    async def main():
        server = FakeAmi()
        port = await server.start()
        seen = []

        def handler(event):
            seen.append(event.event)
            if event.event == "Boom":
                raise ValueError("handler bug")

        client = ami.AmiClient(settings(port), handler)
        task = asyncio.ensure_future(client.run())
        await asyncio.wait_for(client.connected.wait(), 5)
        server.send_event("Event: Boom\r\n\r\nEvent: InvalidPassword\r\n\r\n")
        await until(lambda: "InvalidPassword" in seen)
        assert server.logins == 1 and client.connected.is_set()
        task.cancel()
        server.close()
        return seen

    caplog.set_level(logging.ERROR)
    assert asyncio.run(main()) == ["Boom", "InvalidPassword"]
    assert "handler failed" in caplog.text


def test_wrong_secret_is_logged_and_retried(caplog):
    async def main():
        server = FakeAmi(secret="right")
        port = await server.start()
        client = ami.AmiClient(settings(port, secret="wrong"), lambda e: None)
        task = asyncio.ensure_future(client.run())
        await until(lambda: server.logins >= 3)
        assert not client.connected.is_set()
        task.cancel()
        server.close()

    caplog.set_level(logging.ERROR)
    asyncio.run(main())
    assert "login as 'autoban' refused: Authentication failed" in caplog.text


def test_dead_link_is_noticed_and_reconnected(caplog):
    async def main():
        server = FakeAmi(answer_pings=False)  # a half-open link: nothing comes back
        port = await server.start()
        client = ami.AmiClient(settings(port), lambda e: None)
        task = asyncio.ensure_future(client.run())
        await until(lambda: server.logins >= 2)
        task.cancel()
        server.close()

    caplog.set_level(logging.ERROR)
    asyncio.run(main())
    assert "no reply to Ping" in caplog.text


def test_unreachable_asterisk_is_retried(caplog):
    async def main():
        server = FakeAmi()
        port = await server.start()
        server.close()
        await server.server.wait_closed()
        states = []
        client = ami.AmiClient(settings(port), lambda e: None, states.append)
        task = asyncio.ensure_future(client.run())
        await until(lambda: len(states) >= 4)
        task.cancel()

    caplog.set_level(logging.DEBUG, logger=ami.log.name)
    asyncio.run(main())
    said = [r.levelno for r in caplog.records if "unreachable" in r.getMessage()]
    # Asterisk down for long: one warning, the same failure again only at debug
    assert said[0] == logging.WARNING and len(said) >= 4
    assert set(said[1:]) == {logging.DEBUG}


@pytest.mark.parametrize(("secret", "expect"), [("good", None), ("bad", "refused")])
def test_check_login_says_whether_the_login_works(secret, expect):
    async def main():
        server = FakeAmi()
        port = await server.start()
        try:
            return await ami.check_login(settings(port, secret), timeout=2)
        finally:
            server.close()
    error = asyncio.run(main())
    assert error is None if expect is None else expect in error


def test_check_login_of_an_unreachable_or_silent_asterisk_is_an_error_within_its_timeout():
    async def main():
        silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # never answers
        port = silent.sockets[0].getsockname()[1]
        started = asyncio.get_running_loop().time()
        quiet = await ami.check_login(settings(port), timeout=0.5)
        took = asyncio.get_running_loop().time() - started
        silent.close()
        await silent.wait_closed()
        gone = await ami.check_login(settings(port), timeout=0.5)
        return quiet, took, gone
    quiet, took, gone = asyncio.run(main())
    assert quiet is not None and "no reply to Login" in quiet and took < 2
    assert gone is not None and "unreachable" in gone
