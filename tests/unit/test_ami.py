"""pbxhost.ami: recorded transcripts of a real Asterisk 22 replayed through the
parser, and the connection loop against a loopback AMI server of our own."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from panoramisk.message import Message

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


# ---- the fast parse: the same Message as panoramisk's from_line ---------------------

def same_message(fast, slow) -> None:
    """FAST behaves as SLOW (from_line's) in everything a handler can see."""
    assert type(fast) is type(slow)
    if slow is None:
        return
    assert vars(fast) == vars(slow)  # _store (cased keys, values, lists) and manager
    assert list(fast._store.items()) == list(slow._store.items())  # and the order
    assert list(fast.items()) == list(slow.items()) and len(fast) == len(slow)
    assert repr(fast) == repr(slow)
    for key in [*slow, "RemoteAddress", "nothere", "EVENT", "actionid"]:
        for k in (key, key.lower(), key.upper(), key.swapcase()):
            assert (k in fast) == (k in slow)
            assert fast.get(k) == slow.get(k) and getattr(fast, k) == getattr(slow, k)
    assert (fast.success, fast.id, fast.action_id, fast.content) == (
        slow.success, slow.id, slow.action_id, slow.content)


def blocks_of(name: str) -> list[str]:
    text = (FIXTURES / name).read_bytes().decode().partition(ami.EOL)[2]
    return text.split(ami.EOL * 2)


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.txt")))
def test_recorded_transcripts_parse_as_from_line(name):
    blocks = blocks_of(name)
    assert len(blocks) > 3
    for block in blocks:
        same_message(ami.parse_message(block), Message.from_line(block.strip()))


HOSTILE = {
    "without ': ' inside": "Event: X\r\nGarbage\r\nA: 1",
    "without ': ' last": "Event: X\r\nA: 1\r\nB:",
    "empty value last": "Event: ChallengeResponseFailed\r\nA: 1\r\nExpectedResponse: ",
    "two lines without ': ' last": "Event: X\r\nA: 1\r\nB:\r\nC",
    "doubled key": "Event: ChallengeResponseFailed\r\nRemoteAddress: IPV4/UDP/192.0.2.1/5060"
                   "\r\nRemoteAddress: IPV4/UDP/192.0.2.2/5060",
    "tripled key": "Event: X\r\nA: 1\r\nB: 2\r\nA: 3\r\nA: 4",
    "doubled key in two cases": "Event: X\r\nRemoteAddress: a\r\nremoteaddress: b\r\nC: 1",
    "doubled Event": "Event: A\r\nEvent: B",
    "event in lower case": "event: X\r\nA: 1",
    "Event without ': '": "Event:X\r\nA: 1",
    "empty": "",
    "only EOLs": "\r\n",
    "surrounded by whitespace": " \r\n\tEvent: X\r\nA: 1 \t\r\n",
    "very long value": "Event: UserEvent\r\nData: " + "x" * 1_000_000 + "\r\nB: 2",
    "': ' in a value": "Event: X\r\nA: b: c\r\nB: 2",
    "':' in a key": "Event: X\r\nA:B: c",
    "empty key": "Event: X\r\n: v",
    "lone LF and CR": "Event: X\r\nA: 1\nB: 2\rC: 3",
    "quoted Result": "Event: AGIExecEnd\r\nResult: %20200%20result%3D1%20",
    "a Content header": "Event: X\r\nContent: y\r\nZ: 1",
    "ActionID": "Event: CoreShowChannel\r\nActionID: 42\r\nChannel: PJSIP/x",
    "non-ASCII keys and values": "Event: X\r\nΣΑΣ: ΣΑΣ\r\nİ: ı\r\nBody: h\u00e9llo \U0001F600",
    "replacement characters": "Event: X\r\nBody: \ufffd\ufffd",
    "response": "Response: Success\r\nActionID: 1\r\nMessage: Authentication accepted",
    "command output": "Response: Success\r\nActionID: 2\r\nMessage: Command output follows"
                      "\r\nOutput: line 1\r\nOutput: line 2",
    "response follows": "Response: Follows\r\nPrivilege: Command\r\nActionID: 3\r\nbody\r\n"
                        "--END COMMAND--",
    "response fail": "Response: Fail\r\nActionID: 4\r\nwhy\r\n",
    "neither event nor response": "Ping: Pong\r\nA: 1",
}


@pytest.mark.parametrize("block", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_blocks_parse_as_from_line(block):
    same_message(ami.parse_message(block), Message.from_line(block.strip()))


def test_a_doubled_header_stays_a_list_autoban_can_refuse(caplog):
    from pbxhost.autoban import config
    from pbxhost.autoban.daemon import Autoban

    event = ami.parse_message(HOSTILE["doubled key"])
    assert event is not None and event["remoteaddress"] == [
        "IPV4/UDP/192.0.2.1/5060", "IPV4/UDP/192.0.2.2/5060"]
    assert ami.parse_message(HOSTILE["tripled key"])["A"] == ["1", "3", "4"]

    class NoFirewall:
        def __getattr__(self, name: str):
            raise AssertionError(f"firewall.{name} used for a doubled RemoteAddress")

    cfg = config.AutobanConfig(path=Path("x"), enabled=True)
    Autoban(cfg, NoFirewall(), exempt=[]).handle(event)  # type: ignore[arg-type]
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "event skipped" in caplog.text


def test_non_utf8_bytes_parse_as_from_line():
    raw = b"Asterisk Call Manager/11.0.0\r\nEvent: UserEvent\r\nBody: \xff\xfeok\xc3\r\n\r\n"
    events: list = []
    feed(raw, events, 3)
    text = raw.decode("utf-8", "replace").partition(ami.EOL)[2]
    same_message(events[0], Message.from_line(text.strip()))
    assert events[0]["body"] == "\ufffd\ufffdok\ufffd"


class Reference(ami._Protocol):
    """What pbxhost.ami did before the fast path: from_line and panoramisk's
    handle_message for every message."""

    def data_received(self, data: bytes) -> None:
        text = self.buffer + self.decoder.decode(data)
        if self.version is None:
            banner, _, text = text.partition(ami.EOL)
            self.version = banner.partition("/")[2].strip()
        *blocks, self.buffer = text.split(ami.EOL * 2)
        for block in blocks:
            if (message := Message.from_line(block.strip())) is not None:
                self.handle_message(message)


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


def run_session(cls: type[ami._Protocol], tail: str) -> tuple[list, list, bool]:
    """Log in with an action pending, then feed the fixtures and TAIL: what was
    dispatched, what the actions got, whether the link was closed."""
    from panoramisk import actions

    async def run():
        events: list = []
        proto = cls(Sink(events))  # type: ignore[arg-type]
        proto.connection_made(Transport())
        listing = actions.Action({"Action": "CoreShowChannels", "ActionID": "list-1"})
        ping = actions.Action({"Action": "Ping", "ActionID": "tb-3"})
        login = actions.Action({"Action": "Login", "ActionID": "tb-1"})
        command = actions.Command({"Action": "Command", "Command": "core show version",
                                   "ActionID": "tb-2"})
        futures = [proto.send(a) for a in (login, command, ping)]
        futures.append(proto.send(listing, as_list=True))  # its events are its answer
        names = ["login.txt", *sorted({p.name for p in FIXTURES.glob("*.txt")} - {"login.txt"})]
        data = b"".join((FIXTURES / name).read_bytes() for name in names)
        data += tail.encode()
        for i in range(0, len(data), 1000):
            proto.data_received(data[i:i + 1000])
        got = [f.result() if f.done() else None for f in futures]
        return events, got, proto.closed
    return asyncio.run(run())


def test_the_protocol_hands_out_what_panoramisk_did():
    tail = ("Response: Success\r\nActionID: list-1\r\nEventList: start\r\n"
            "Message: Channels will follow\r\n\r\n"
            "Event: CoreShowChannel\r\nActionID: list-1\r\nChannel: PJSIP/jane-1\r\n\r\n"
            "Event: CoreShowChannel\r\nActionID: other\r\nChannel: PJSIP/joe-2\r\n\r\n"
            "Event: CoreShowChannelsComplete\r\nActionID: list-1\r\nEventList: Complete\r\n\r\n"
            + "".join(f"{b.strip()}\r\n\r\n" for b in HOSTILE.values()
                      if b.strip() and "Event: B" not in b)
            + "Event: Shutdown\r\nShutdown: Cleanly\r\n\r\n"
            "Event: FullyBooted\r\nStatus: after the shutdown\r\n\r\n")
    fast, slow = run_session(ami._Protocol, tail), run_session(Reference, tail)
    events, got, closed = fast
    assert len(events) == len(slow[0]) > 20
    for a, b in zip(events, slow[0], strict=True):
        same_message(a, b)
    assert [e.event for e in events][-2:] == ["Shutdown", "FullyBooted"]
    assert closed and slow[2]
    login, command, ping, listing = got
    assert login.success and ping.ping == "Pong" and "Asterisk 22" in command.output
    assert [m.get("channel") for m in listing] == [None, "PJSIP/jane-1", None]
    for a, b in zip(got, slow[1], strict=True):
        for x, y in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b],
                        strict=True):
            same_message(x, y)
