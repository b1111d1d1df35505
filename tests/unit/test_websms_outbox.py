"""The retry worker and the AGI conversation, with a scripted ITSP and a
scripted Asterisk: SENT / QUEUED / FAILED, backoff, giving up, telling the
sender, and reading the message off the channel."""

from __future__ import annotations

import asyncio
import base64
import os
import random
from pathlib import Path
from urllib.parse import quote

import pytest

from pbxhost.websms import agi
from pbxhost.websms.config import Outgoing, Queue, Retry, WebsmsConfig
from pbxhost.websms.model import INBOUND, OUTBOUND, Sms
from pbxhost.websms.outbox import Outbox, backoff, outgoing
from pbxhost.websms.send import Outcome, Result
from pbxhost.websms.spool import Spool


class Itsp:
    def __init__(self, *outcomes: Result) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, str, str, str]] = []

    def __call__(self, iface: Outgoing, to: str, sender: str, body: str) -> Result:
        self.calls.append((iface.name, to, sender, body))
        return self.outcomes.pop(0) if self.outcomes else Result(Outcome.SENT, "HTTP 200", 200)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, itsp: Itsp, expire: int = 3600):
    cfg = WebsmsConfig(path=tmp_path / "websms.conf",
                       outgoing=(Outgoing(), Outgoing(name="api-2")),
                       queue=Queue(spooldir=tmp_path / "spool"),
                       retry=Retry(backoff_min=10, backoff_max=40, expire=expire))
    spool = Spool(cfg.queue.spooldir)
    spool.prepare()
    notices: list[Sms] = []
    clock = Clock()
    return Outbox(cfg, spool, notices.append, sender=itsp, clock=clock), spool, notices, clock


def test_backoff_doubles_to_a_ceiling():
    rng = random.Random(1)
    waits = [backoff(n, 10, 40, rng) for n in range(1, 6)]
    for got, base in zip(waits, [10, 20, 40, 40, 40], strict=True):
        assert base * 0.9 <= got <= base * 1.1


def test_sent_at_once(tmp_path):
    itsp = Itsp()
    box, spool, notices, _clock = make(tmp_path, itsp)

    async def go():
        return await box.submit(outgoing("+1555", "+1202", "hi", "api-2", "+1202", 1000, 60), 5)
    assert asyncio.run(go()) == "SENT"
    assert itsp.calls == [("api-2", "+1555", "+1202", "hi")]
    assert spool.pending(OUTBOUND) == [] and notices == []


def test_retried_with_backoff_then_sent(tmp_path):
    down = Result(Outcome.RETRY, "HTTP 503")
    itsp = Itsp(down, down)
    box, spool, notices, clock = make(tmp_path, itsp)

    async def go():
        status = await box.submit(outgoing("+1555", "+1202", "hi", "", "", 1000, 3600), 5)
        saved = spool.pending(OUTBOUND)[0]
        assert status == "QUEUED" and saved.attempts == 1 and saved.error == "HTTP 503"
        assert 9 <= saved.next_try - clock.now <= 11
        await box.step()
        await asyncio.sleep(0)
        assert len(itsp.calls) == 1  # not due yet
        clock.now += 11
        await box.step()
        await asyncio.gather(*box.tasks)
        clock.now += 23
        await box.step()
        await asyncio.gather(*box.tasks)
    asyncio.run(go())
    assert len(itsp.calls) == 3 and spool.pending(OUTBOUND) == [] and notices == []


def test_permanent_failure_tells_the_sender(tmp_path):
    itsp = Itsp(Result(Outcome.FAILED, "HTTP 400 invalid number"))
    box, spool, notices, _ = make(tmp_path, itsp)
    sms = outgoing("+1555", "+12025550160", "hi", "", "", 1000, 3600)

    async def go():
        return await box.submit(sms, 5)
    assert asyncio.run(go()) == "FAILED"
    assert spool.failed()[0].error == "HTTP 400 invalid number"
    (notice,) = notices
    assert (notice.kind, notice.to, notice.sender, notice.notice) == (
        INBOUND, "+12025550160", "+1555", True)
    assert notice.body == "SMS to +1555 not sent: HTTP 400 invalid number"
    assert spool.pending(INBOUND) == [notice]


def test_gives_up_at_expiry(tmp_path):
    itsp = Itsp(Result(Outcome.RETRY, "timed out"))
    box, spool, notices, _ = make(tmp_path, itsp, expire=5)

    async def go():
        return await box.submit(outgoing("+1555", "+1202", "hi", "", "", 1000, 5), 5)
    assert asyncio.run(go()) == "FAILED"
    assert "gave up after 1 attempts: timed out" in spool.failed()[0].error and notices


def test_unknown_interface_fails(tmp_path):
    box, spool, _notices, _ = make(tmp_path, Itsp())

    async def go():
        return await box.submit(outgoing("+1555", "+1202", "hi", "api-9", "", 1000, 60), 5)
    assert asyncio.run(go()) == "FAILED" and "api-9" in spool.failed()[0].error


def test_rescan_picks_up_records_of_other_processes(tmp_path):
    box, spool, _, _clock = make(tmp_path, Itsp())
    other = outgoing("+1555", "+1202", "by hand", "", "", 1000, 60)
    spool.add(other)

    async def go():
        await box.step()
        await asyncio.gather(*box.tasks)
    asyncio.run(go())
    assert spool.pending(OUTBOUND) == []


# ---------------------------------------------------------------- AGI


class Channel:
    """A scripted Asterisk on the other end of an AGI session."""

    def __init__(self, env: dict[str, str], values: dict[str, str]) -> None:
        lines = [f"{k}: {v}\n" for k, v in env.items()] + ["\n"]
        self.incoming = [line.encode() for line in lines]
        self.values = values
        self.commands: list[str] = []

    async def readline(self) -> bytes:
        return self.incoming.pop(0) if self.incoming else b""

    async def write(self, data: bytes) -> None:
        line = data.decode().rstrip("\n")
        self.commands.append(line)
        if line.startswith("GET FULL VARIABLE"):
            expr = line.split(" ", 3)[3].strip('"')
            value = self.values.get(expr)
            self.incoming.append(b"200 result=0\n" if value is None
                                 else f"200 result=1 ({value})\n".encode())
        else:
            self.incoming.append(b"200 result=1\n")


def converse(tmp_path: Path, env: dict[str, str], values: dict[str, str], itsp: Itsp | None = None):
    box, spool, _notices, _ = make(tmp_path, itsp or Itsp())
    local: list[Sms] = []
    handler = agi.Handler(box.cfg, box, local.append, wait=5)
    channel = Channel(env, values)
    session = agi.Session(channel.readline, channel.write)

    async def go():
        return await handler.handle(session, await session.environment())
    return asyncio.run(go()), channel, local, spool


def test_parse_reply_and_sip_user():
    assert agi.parse_reply("200 result=1 (a (b) c)") == (200, 1, "a (b) c")
    assert agi.parse_reply("200 result=0") == (200, 0, None)
    with pytest.raises(agi.AgiError):
        agi.parse_reply("520 Invalid command")
    assert agi.sip_user('"Jane" <sip:+12025550183@pbx.test>') == "+12025550183"
    assert agi.sip_user("<sip:jane@192.0.2.10>") == "jane"


def test_agi_arguments_sent_out(tmp_path):
    itsp = Itsp()
    body = "multi\nline, with \"quotes\" 😀"
    env = {"agi_network_script": "websms", "agi_arg_1": "+15017122661",
           "agi_arg_2": "+12025550160", "agi_arg_3": quote(body, safe=""), "agi_arg_4": "api-2"}
    status, channel, local, _ = converse(tmp_path, env, {}, itsp)
    assert status == "SENT" and local == []
    assert itsp.calls == [("api-2", "+15017122661", "+12025550160", body)]
    assert channel.commands[-1] == 'SET VARIABLE WEBSMS_STATUS "SENT"'


def test_agi_reads_the_message_when_arguments_are_missing(tmp_path):
    itsp = Itsp()
    body = "from the channel ✓"
    values = {"${MESSAGE(to)}": "pjsip:+15017122661@192.0.2.10",
              "${MESSAGE(from)}": '"Jane" <sip:+12025550160@192.0.2.10>',
              "${BASE64_ENCODE(${MESSAGE(body)})}": base64.b64encode(body.encode()).decode()}
    status, _, _, _ = converse(tmp_path, {"agi_network_script": "websms"}, values, itsp)
    assert status == "SENT"
    assert itsp.calls == [("", "+15017122661", "+12025550160", body)]


def test_agi_interface_of_the_sending_user_and_its_notice(tmp_path):
    (tmp_path / "pjsip.conf").write_text("[jane.doe]\ntype = endpoint\n"
                                         "set_var = WEBSMS_INDEX=api-2\n")
    itsp = Itsp(Result(Outcome.FAILED, "HTTP 400"))
    env = {"agi_arg_1": "+15017122661", "agi_arg_2": "+12025550183", "agi_arg_3": "hi",
           "agi_arg_4": "", "agi_arg_5": "jane.doe"}
    status, _, _, spool = converse(tmp_path, env, {}, itsp)
    assert status == "FAILED" and itsp.calls[0][0] == "api-2"
    assert [n.to for n in spool.pending(INBOUND)] == ["jane.doe"]  # told by name


def test_agi_to_one_of_our_users_is_queued_for_the_phones(tmp_path):
    env = {"agi_arg_1": "+12025550183", "agi_arg_2": "+12025550160", "agi_arg_3": "hi"}
    values = {"${HINT(+12025550183@dp_lookup_user)}": "PJSIP/bob"}
    status, _, local, spool = converse(tmp_path, env, values)
    assert status == "QUEUED" and [s.to for s in local] == ["+12025550183"]
    assert spool.pending(INBOUND) == local


@pytest.mark.parametrize(("env", "values"), [
    ({"agi_arg_1": "+1555\nEXEC System", "agi_arg_2": "+1202", "agi_arg_3": "x"}, {}),
    ({"agi_arg_1": "+1555", "agi_arg_2": "+1202", "agi_arg_3": "%FF"}, {}),
    ({"agi_arg_1": "+1555", "agi_arg_2": "+1202"},            # Asterisk dropped a long body
     {"${BASE64_ENCODE(${MESSAGE(body)})}": ""}),
])
def test_agi_refuses_bad_input(tmp_path, env, values):
    status, channel, _, spool = converse(tmp_path, env, values)
    assert status == "FAILED" and channel.commands[-1].endswith('"FAILED"')
    notices = spool.pending(INBOUND)  # the sender is told when we know who it is
    assert [n.to for n in notices] == ([] if "\n" in env["agi_arg_1"] else ["+1202"])
    if "agi_arg_3" not in env:
        assert "longer than Asterisk takes (1023 bytes)" in notices[0].body


def test_a_dead_processes_lease_is_taken_over(tmp_path):
    box, spool, _, clock = make(tmp_path, Itsp())
    orphan = outgoing("+1555", "+1202", "orphan", "", "", 1000, 3600)
    orphan.next_try, orphan.owner = clock.now + 45, 2 ** 22 + 17  # beyond pid_max: not alive
    live = outgoing("+1556", "+1202", "busy elsewhere", "", "", 1000, 3600)
    live.next_try, live.owner = clock.now + 45, os.getpid()
    spool.add(orphan)
    spool.add(live)
    assert box.load() == 2
    assert [s.body for s in box.due()] == ["orphan"]


def test_a_give_up_failed_dir_cannot_take_is_not_sent_nor_told_again(tmp_path):
    """failed/ is a file (a real fault, for root too): the SMS stays in out/, but
    the rescans that pick up other processes' records never send it again, and
    the phone is told once."""
    itsp = Itsp(Result(Outcome.FAILED, "HTTP 400 invalid number"))
    box, spool, notices, _ = make(tmp_path, itsp)
    (spool.root / "failed").rmdir()
    (spool.root / "failed").write_text("")
    sms = outgoing("+1555", "+12025550160", "hi", "", "", 1000, 3600)

    async def go():
        status = await box.submit(sms, 5)
        for _ in range(3):
            box.rescan()
            await box.step()
            await asyncio.gather(*box.tasks)
        return status
    assert asyncio.run(go()) == "FAILED"
    assert len(itsp.calls) == 1 and len(notices) == 1 and "failed/" in spool.faults
    (spool.root / "failed").unlink()
    (spool.root / "failed").mkdir()
    spool.retry_deferred()
    assert [f.id for f in spool.failed()] == [sms.id] and spool.pending(OUTBOUND) == []


def test_the_outbox_never_fsyncs_on_the_event_loop(tmp_path, monkeypatch):
    """Retry state (later), failed/ (give_up), the notice (tell) and the removal
    of a sent SMS (done) are written durably in threads: the loop that serves the
    webhook and the watchdog never waits for a disk."""
    import threading
    on_loop: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        if threading.current_thread() is threading.main_thread():  # asyncio.run's loop
            on_loop.append(fd)
        real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    itsp = Itsp(Result(Outcome.RETRY, "HTTP 503"), Result(Outcome.FAILED, "HTTP 400"))
    box, spool, notices, clock = make(tmp_path, itsp)

    async def go():
        first = await box.submit(outgoing("+1555", "+1202", "a", "", "", 1000, 3600), 5)
        (sms,) = box.pending.values()
        clock.now = sms.next_try
        second = await box.attempt(sms)
        third = await box.submit(outgoing("+1556", "+1202", "b", "", "", 1000, 3600), 5)
        return first, second, third
    assert asyncio.run(go()) == ("QUEUED", "FAILED", "SENT")
    assert len(notices) == 1 and len(spool.failed()) == 1 and spool.pending(OUTBOUND) == []
    assert on_loop == []
