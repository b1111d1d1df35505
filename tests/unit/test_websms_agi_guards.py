"""FastAGI is Asterisk's only: a local client of another uid is closed before
a byte is read; every read has a deadline; connections are capped. SMS out
get the calls' toll guards (the dialplan's classes, TOLL_ALLOW per user) and
a per-user rate limit, each refusal with its WEBSMS_STATUS and a MESSAGE back."""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import time
from pathlib import Path

import pytest

from pbxhost.websms import agi, guards, ratestore
from pbxhost.websms.config import Guards, Outgoing, Queue, WebsmsConfig
from pbxhost.websms.model import INBOUND
from pbxhost.websms.outbox import Outbox
from pbxhost.websms.send import Outcome, Result
from pbxhost.websms.spool import Spool

CLASSES = {"+19005550100": "premium", "+447700900123": "international",
           "+12125550199": "domestic"}


class Itsp:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, iface: Outgoing, to: str, sender: str, body: str) -> Result:
        self.calls.append((to, body))
        return Result(Outcome.SENT, "HTTP 200", 200)


class Channel:
    """A scripted Asterisk: its dialplan has sub_toll_class unless TOLL is None."""

    def __init__(self, env: dict[str, str], values: dict[str, str],
                 toll: dict[str, str] | None = CLASSES) -> None:
        lines = [f"{k}: {v}\n" for k, v in env.items()] + ["\n"]
        self.incoming = [line.encode() for line in lines]
        self.values, self.toll = dict(values), toll
        if toll is not None:  # the seeded extensions_local.conf's
            self.values.setdefault("${TOLL_HOME}", "^[+]1[2-9]")
        self.commands: list[str] = []

    async def readline(self) -> bytes:
        return self.incoming.pop(0) if self.incoming else b""

    async def write(self, data: bytes) -> None:
        line = data.decode().rstrip("\n")
        self.commands.append(line)
        if line.startswith("GOSUB "):
            _, context, _, _, arg = line.split(" ")
            if self.toll is None or context != agi.TOLL_SUB:
                self.incoming.append(b"200 result=-1 Gosub label not found\n")
                return
            self.values["${GOSUB_RETVAL}"] = self.toll.get(arg, "international")
            self.incoming += [b"100 result=0 Trying...\n", b"200 result=0 Gosub complete\n"]
        elif line.startswith("GET FULL VARIABLE"):
            value = self.values.get(line.split(" ", 3)[3].strip('"'))
            self.incoming.append(b"200 result=0\n" if value is None
                                 else f"200 result=1 ({value})\n".encode())
        else:
            self.incoming.append(b"200 result=1\n")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, rate_limit: int = 5, shared: bool = False):
    """SHARED: the rate counted in files, as the plain AGI fallback counts it."""
    cfg = WebsmsConfig(path=tmp_path / "websms.conf",
                       queue=Queue(spooldir=tmp_path / "spool"),
                       guards=Guards(rate_limit=rate_limit, rate_window=60))
    spool = Spool(cfg.queue.spooldir)
    spool.prepare()
    itsp, clock = Itsp(), Clock()
    box = Outbox(cfg, spool, lambda sms: None, sender=itsp)
    rate = (ratestore.SharedRateLimit(spool.root / ratestore.RATE_DIR, rate_limit, 60, clock)
            if shared else None)
    return (agi.Handler(cfg, box, lambda sms: None, wait=5, clock=clock, rate=rate), itsp,
            spool, clock)


def text(handler: agi.Handler, to: str, user: str = "jane.doe", values=None,
         toll: dict[str, str] | None = CLASSES) -> tuple[str, Channel]:
    env = {"agi_arg_1": to, "agi_arg_2": "+12025550183", "agi_arg_3": "hi",
           "agi_arg_4": "", "agi_arg_5": user}
    channel = Channel(env, values or {}, toll)
    session = agi.Session(channel.readline, channel.write)

    async def go():
        return await handler.handle(session, await session.environment())
    return asyncio.run(go()), channel


def notices(spool: Spool) -> list[tuple[str, str]]:
    return sorted((n.to, n.body) for n in spool.pending(INBOUND))


# ---------------------------------------------------------------- toll guards


def test_premium_and_international_are_refused_by_default_with_a_message_back(tmp_path):
    handler, itsp, spool, _ = make(tmp_path)
    for number, klass in (("+19005550100", "premium"), ("+447700900123", "international")):
        status, channel = text(handler, number)
        assert status == "TOLL_REFUSED", klass
        assert channel.commands[-1] == 'SET VARIABLE WEBSMS_STATUS "TOLL_REFUSED"'
    assert itsp.calls == []
    told = notices(spool)
    assert [to for to, _ in told] == ["jane.doe", "jane.doe"]
    assert any("premium numbers are not allowed (TOLL_ALLOW)" in body for _, body in told)
    assert text(handler, "+12125550199")[0] == "SENT" and itsp.calls == [("+12125550199", "hi")]


def test_toll_allow_of_the_user_from_pjsip_conf_and_the_global_default(tmp_path):
    (tmp_path / "pjsip.conf").write_text(
        "[jane.doe]\ntype = wizard\nendpoint/set_var = TOLL_ALLOW=international\n"
        "[bob]\ntype = endpoint\nset_var = TOLL_ALLOW=\n")
    handler, itsp, _, _ = make(tmp_path)
    assert text(handler, "+447700900123")[0] == "SENT"                 # jane: allowed
    assert text(handler, "+19005550100")[0] == "TOLL_REFUSED"          # not premium
    glob = {"${TOLL_ALLOW}": "international,premium"}
    assert text(handler, "+19005550100", "john", glob)[0] == "SENT"   # no set_var: the global
    assert text(handler, "+19005550100", "bob", glob)[0] == "TOLL_REFUSED"  # set_var wins
    assert [to for to, _ in itsp.calls] == ["+447700900123", "+19005550100"]


def test_a_dialplan_without_toll_classes_is_not_guarded_and_says_so(tmp_path, caplog):
    handler, itsp, _, _ = make(tmp_path)
    assert text(handler, "+19005550100", toll=None)[0] == "SENT"
    assert "no TOLL_HOME (nor sub_toll_class)" in caplog.text and len(itsp.calls) == 1
    assert not any(c.startswith("GOSUB") for c in text(handler, "+1900555", toll=None)[1].commands)


@pytest.mark.parametrize(("klass", "allow", "refused"), [
    ("domestic", "", False), ("", "", False), ("premium", "", True),
    ("premium", "international", True), ("international", "international,premium", False),
])
def test_toll_refusal(klass, allow, refused):
    assert (guards.toll_refusal(klass, allow) is not None) == refused


# ---------------------------------------------------------------- rate


@pytest.mark.parametrize("shared", [False, True], ids=["fastagi-memory", "fallback-files"])
def test_per_user_rate_limit_with_status_and_message_back(tmp_path, shared):
    handler, itsp, spool, clock = make(tmp_path, rate_limit=2, shared=shared)
    assert [text(handler, "+12125550199")[0] for _ in range(3)] == [
        "SENT", "SENT", "RATE_LIMITED"]
    assert text(handler, "+12125550199", user="john")[0] == "SENT"  # per user
    assert len(itsp.calls) == 3
    assert [to for to, body in notices(spool) if "more than 2 SMS in 60s" in body] == [
        "jane.doe"]
    clock.now += 61
    assert text(handler, "+12125550199")[0] == "SENT"


def test_a_rate_that_cannot_be_counted_sends_nothing(tmp_path):
    handler, itsp, _, _ = make(tmp_path, rate_limit=2, shared=True)
    (handler.outbox.spool.root / ratestore.RATE_DIR).write_text("not a directory\n")
    assert text(handler, "+12125550199")[0] == "FAILED" and itsp.calls == []


def test_rate_limit_window_and_no_limit():
    clock = Clock()
    rate = guards.RateLimit(2, 60, clock)
    assert [rate.take("a") for _ in range(3)] == [True, True, False]
    clock.now += 30
    assert rate.take("a") is False
    clock.now += 31
    assert rate.take("a") is True
    assert all(guards.RateLimit(0, 60, clock).take("a") for _ in range(100))


# ---------------------------------------------------------------- the server


def test_every_read_has_a_deadline():
    async def never() -> bytes:
        await asyncio.sleep(3600)
        return b""

    async def write(data: bytes) -> None:
        pass

    async def go():
        session = agi.Session(never, write, timeout=0.05)
        with pytest.raises(agi.AgiError, match="no AGI line within"):
            await session.command("GET FULL VARIABLE \"${X}\"")
    asyncio.run(asyncio.wait_for(go(), 5))


def _server(tmp_path: Path, **kw) -> tuple[agi.FastAgiServer, Itsp]:
    handler, itsp, _, _ = make(tmp_path)
    return agi.FastAgiServer(handler, ("127.0.0.1", 0), **kw), itsp


AGI_ENV = (b"agi_network_script: websms\nagi_arg_1: +12125550199\nagi_arg_2: +12025550183\n"
           b"agi_arg_3: paid%20by%20you\nagi_arg_4: \nagi_arg_5: jane.doe\n\n")


def _client_as(uid: int, port: int) -> tuple[int, int]:
    """A local AGI client as UID (a forked child): a pipe that gets what it read
    before the close, and its pid."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.close(r)
            os.setgid(uid)
            os.setuid(uid)
            got = b""
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(AGI_ENV)
                    while chunk := s.recv(4096):
                        got += chunk
                        if got.endswith(b"\n"):  # answer anything, as Asterisk would
                            s.sendall(b"200 result=0\n")
            except OSError:  # a reset: closed too
                pass
            os.write(w, got or b"(closed)")
        finally:
            os._exit(0)
    os.close(w)
    return r, pid


@pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                    reason="a client of another uid needs root")
def test_a_local_client_of_another_uid_is_closed_before_anything_is_read(tmp_path):
    nobody = pwd.getpwnam("nobody").pw_uid

    async def go():
        server, itsp = _server(tmp_path, uids=frozenset({0}))
        await server.start()
        port = server.server.sockets[0].getsockname()[1]
        r, pid = _client_as(nobody, port)
        loop = asyncio.get_running_loop()
        got = await loop.run_in_executor(None, lambda: os.read(r, 65536))
        await loop.run_in_executor(None, os.waitpid, pid, 0)
        await server.close()
        return got, itsp
    got, itsp = asyncio.run(go())
    assert got == b"(closed)" and itsp.calls == []


@pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                    reason="a client of another uid needs root")
def test_asterisks_uid_is_served(tmp_path):
    nobody = pwd.getpwnam("nobody").pw_uid

    async def go():
        server, itsp = _server(tmp_path, uids=frozenset({nobody}))  # as if nobody ran Asterisk
        await server.start()
        port = server.server.sockets[0].getsockname()[1]
        r, pid = _client_as(nobody, port)
        loop = asyncio.get_running_loop()
        got = await loop.run_in_executor(None, lambda: os.read(r, 65536))
        await loop.run_in_executor(None, os.waitpid, pid, 0)
        await server.close()
        return got, itsp
    got, itsp = asyncio.run(go())
    assert b"WEBSMS_STATUS" in got and itsp.calls == [("+12125550199", "paid by you")]


def test_connections_beyond_the_cap_are_closed(tmp_path):
    async def go():
        server, _ = _server(tmp_path, uids=frozenset({os.geteuid()}), max_connections=2)
        await server.start()
        port = server.server.sockets[0].getsockname()[1]
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        deadline = time.monotonic() + 5
        while server.open < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        reader, _ = await asyncio.open_connection("127.0.0.1", port)
        closed = await asyncio.wait_for(reader.read(), 5)
        for _, w in held:
            w.close()
        await server.close()
        return closed, server.open
    closed, _ = asyncio.run(go())
    assert closed == b""


def test_an_owner_the_kernel_will_not_tell_is_refused_and_the_fix_named(tmp_path, monkeypatch,
                                                                      caplog):
    """Under the unit's RestrictAddressFamilies without AF_NETLINK and ProcSubset=pid
    neither sock_diag nor /proc/net/tcp answers: closed (fail closed), fix logged."""
    from pbxhost.websms import peercred

    def unknown(peer, local):
        raise OSError(97, "Address family not supported by protocol")
    monkeypatch.setattr(peercred, "peer_uid", unknown)

    async def go():
        server, itsp = _server(tmp_path, uids=frozenset({os.geteuid()}))
        await server.start()
        port = server.server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(AGI_ENV)
            got = await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:  # closed with our bytes unread: a reset
            got = b""
        writer.close()
        await server.close()
        return got, itsp
    got, itsp = asyncio.run(go())
    assert got == b"" and itsp.calls == []
    assert "add AF_NETLINK to the unit's RestrictAddressFamilies" in caplog.text
