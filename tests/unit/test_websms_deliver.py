"""The delivery worker against a scripted AMI: who a number is, which phones
are reachable, one MessageSend per contact and part, waiting for a phone,
progress kept across restarts, expiry reported."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import threading
from typing import Any

import pytest

from pbxhost.ami import AmiError
from pbxhost.websms.aio import nap
from pbxhost.websms.config import Queue
from pbxhost.websms.deliver import RETRY_REFUSED, Delivery, hint_candidates, hint_endpoints
from pbxhost.websms.model import INBOUND, Sms, new_id
from pbxhost.websms.spool import Spool


class FakeAmi:
    def __init__(self) -> None:
        self.hints = {"+12025550160": "PJSIP/jane"}
        self.aors = {"jane": "jane", "bob": "bob"}
        self.contacts: dict[str, dict[str, tuple[str, str]]] = {"jane": {}, "bob": {}}
        self.sent: list[tuple[str, str, str]] = []
        self.refuse = False
        self.down = False
        self.actions = 0
        self.asked: list[str] = []

    def register(self, aor: str, uri: str, status: str = "Reachable") -> None:
        self.contacts[aor][f"{aor};@{len(self.contacts[aor])}"] = (uri, status)

    def _getvar(self, expr: str) -> str:
        if m := re.fullmatch(r"PJSIP_ENDPOINT\((.+),aors\)", expr):
            return self.aors.get(m.group(1), "")
        if m := re.fullmatch(r"PJSIP_AOR\((.+),contact\)", expr):
            return ",".join(self.contacts.get(m.group(1), {}))
        if m := re.fullmatch(r"PJSIP_CONTACT\((.+);@(\d+),(\w+)\)", expr):
            aor, n, field = m.groups()
            uri, status = self.contacts[aor][f"{aor};@{n}"]
            return {"uri": uri, "status": status, "endpoint": aor}[field]
        raise AssertionError(expr)

    async def action(self, fields: dict[str, Any], timeout: float = 10) -> dict[str, str]:
        self.actions += 1
        if self.down:
            raise AmiError("AMI not connected")
        name = fields["Action"]
        if name == "ExtensionState":
            self.asked.append(fields["Exten"])
            return {"Response": "Success", "Hint": self.hints.get(fields["Exten"], "")}
        if name == "Getvar":
            return {"Response": "Success", "Value": self._getvar(fields["Variable"])}
        if name == "MessageSend":
            if self.refuse:
                return {"Response": "Error", "Message": "Unable to send"}
            body = base64.b64decode(fields["Base64Body"]).decode()
            self.sent.append((fields["Destination"], fields["From"], body))
            return {"Response": "Success"}
        raise AssertionError(name)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def bed(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    ami, clock = FakeAmi(), Clock()
    delivery = Delivery(Queue(part_bytes=100, expire=60), spool, ami, clock)
    connect(delivery)
    return delivery, ami, spool, clock


def connect(delivery: Delivery) -> None:
    delivery.on_state("connected")
    delivery.on_event({"Event": "FullyBooted"})


def message(spool: Spool, to: str = "+12025550160", body: str = "hello", **kw) -> Sms:
    sms = Sms(kind=INBOUND, id=new_id(), to=to, sender="+15017122661", body=body,
              created=1000.0, expires=1060.0, **kw)
    spool.add(sms)
    return sms


def run(coro):
    return asyncio.run(coro)


def test_hint_helpers():
    assert hint_candidates("+12025550160") == ["+12025550160", "12025550160"]
    assert hint_candidates("12025550160") == ["12025550160", "+12025550160"]
    assert hint_candidates("0046701234567") == ["0046701234567", "+46701234567"]
    assert hint_endpoints("PJSIP/jane&PJSIP/jane-desk&Custom:dnd") == ("jane", "jane-desk")
    assert hint_endpoints("") == ()


def test_every_reachable_phone_gets_every_part_once(bed):
    delivery, ami, spool, _ = bed
    ami.register("jane", "sip:a@192.0.2.30:5060")
    ami.register("jane", "sip:b@192.0.2.31:5060;transport=tcp")
    ami.register("jane", "sip:c@192.0.2.32:5060", "Unreachable")
    body = "x" * 150 + "😀" * 20
    delivery.add(message(spool, body=body))
    run(delivery.step())
    by_dest: dict[str, str] = {}
    for dest, sender, part in ami.sent:
        assert sender == "+15017122661" and len(part.encode()) <= 100
        by_dest[dest] = by_dest.get(dest, "") + part
    assert by_dest == {"pjsip:jane/sip:a@192.0.2.30:5060": body,
                       "pjsip:jane/sip:b@192.0.2.31:5060;transport=tcp": body}
    assert spool.pending(INBOUND) == [] and delivery.pending == {}
    assert delivery.tally.delivered == 1


def test_user_name_and_number_without_plus(bed):
    delivery, ami, spool, _ = bed
    ami.register("bob", "sip:bob@192.0.2.40:5060")
    ami.register("jane", "sip:jane@192.0.2.30:5060")
    delivery.add(message(spool, to="bob"))
    delivery.add(message(spool, to="12025550160"))
    run(delivery.step())
    assert sorted(d for d, _, _ in ami.sent) == ["pjsip:bob/sip:bob@192.0.2.40:5060",
                                                 "pjsip:jane/sip:jane@192.0.2.30:5060"]


def test_waits_for_a_phone_then_delivers_on_contact_status(bed):
    delivery, ami, spool, _ = bed
    sms = message(spool)
    delivery.add(sms)
    run(delivery.step())
    assert ami.sent == [] and sms.id in delivery.waiting["jane"]
    ami.register("jane", "sip:a@192.0.2.30:5060")
    uri = "sip:a@192.0.2.30:5060"
    delivery.on_event({"Event": "ContactStatus", "AOR": "jane", "URI": uri,
                       "ContactStatus": "Created", "EndpointName": "jane"})
    assert not delivery.due  # registered, not known reachable yet
    delivery.on_event({"Event": "ContactStatus", "AOR": "jane", "URI": uri,
                       "ContactStatus": "Reachable", "EndpointName": "jane"})
    assert delivery.due == {sms.id}
    run(delivery.step())
    assert [d for d, _, _ in ami.sent] == [f"pjsip:jane/{uri}"]
    assert spool.pending(INBOUND) == []


def test_progress_per_contact_survives_a_restart(bed, tmp_path):
    delivery, ami, spool, clock = bed
    ami.register("jane", "sip:a@192.0.2.30:5060")
    ami.register("jane", "sip:b@192.0.2.31:5060")
    real = ami.action
    calls = {"n": 0}

    async def second_fails(fields, timeout=10):
        if fields["Action"] == "MessageSend":
            calls["n"] += 1
            if calls["n"] == 2:
                return {"Response": "Error", "Message": "transport down"}
        return await real(fields, timeout)
    ami.action = second_fails
    delivery.add(message(spool))
    run(delivery.step())
    saved = spool.pending(INBOUND)[0]
    assert saved.delivered == ["sip:a@192.0.2.30:5060"]
    # a new daemon: only the phone that did not get it yet is sent to
    ami.action = real
    ami.sent.clear()
    fresh = Delivery(Queue(part_bytes=100), spool, ami, clock)
    connect(fresh)
    assert fresh.load() == 1
    run(fresh.step())
    assert [d for d, _, _ in ami.sent] == ["pjsip:jane/sip:b@192.0.2.31:5060"]
    assert spool.pending(INBOUND) == []


def test_unknown_user_waits_and_expires_reported(bed):
    delivery, ami, spool, clock = bed
    sms = message(spool, to="+19995550000")
    delivery.add(sms)
    run(delivery.step())
    assert ami.sent == [] and "no user" in delivery.pending[sms.id].error
    clock.now = 1061.0
    run(delivery.step())
    failed = spool.failed()
    assert [f.id for f in failed] == [sms.id] and "expired" in failed[0].error
    assert delivery.pending == {} and delivery.tally.expired == 1


def test_ami_down_keeps_everything(bed):
    delivery, ami, spool, clock = bed
    ami.register("jane", "sip:a@192.0.2.30:5060")
    ami.down = True
    sms = message(spool)
    delivery.add(sms)
    run(delivery.step())
    assert sms.id in delivery.due and spool.pending(INBOUND) == [sms]
    ami.down = False
    assert run(delivery.step()) is False  # paused a moment: no hot loop on a dead session
    assert ami.sent == []
    clock.now += 1.5
    assert run(delivery.step()) is True
    assert len(ami.sent) == 1 and spool.pending(INBOUND) == []


@pytest.mark.timeout(10)  # the old hot loop never let this test's coroutine run again
def test_run_loop_yields_when_ami_keeps_failing(bed):
    delivery, ami, spool, _ = bed
    ami.register("jane", "sip:a@192.0.2.30:5060")
    ami.down = True
    delivery.add(message(spool))

    async def go():
        task = asyncio.ensure_future(delivery.run())
        ticks = 0
        for _ in range(50):  # the loop must stay responsive while delivery fails
            await asyncio.sleep(0)
            ticks += 1
        task.cancel()
        return ticks
    assert run(go()) == 50


def test_reconnect_forgets_contacts(bed):
    delivery, ami, spool, _ = bed
    ami.register("jane", "sip:a@192.0.2.30:5060")
    delivery.add(message(spool))
    run(delivery.step())
    assert "jane" in delivery.directory.contacts
    delivery.on_state("disconnected")
    assert delivery.directory.contacts == {} and not delivery.connected


def test_refused_message_send_is_tried_again_soon(bed):
    delivery, ami, spool, clock = bed
    ami.register("jane", "sip:a@192.0.2.30:5060")
    ami.refuse = True
    sms = message(spool)
    delivery.add(sms)
    run(delivery.step())
    assert ami.sent == [] and spool.pending(INBOUND) == [sms] and sms.id in delivery.retry_at
    ami.refuse = False
    clock.now += 11
    run(delivery.step())
    assert len(ami.sent) == 1 and spool.pending(INBOUND) == []


def test_nap_never_swallows_a_cancellation():
    """The event set and the task cancelled in the same loop turn (SIGTERM during
    delivery): asyncio.wait_for on 3.11 returned normally and the loop ran on."""
    async def go():
        event = asyncio.Event()
        task = asyncio.ensure_future(nap(event, 10))
        await asyncio.sleep(0)
        event.set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        quiet = asyncio.Event()
        started = asyncio.get_running_loop().time()
        await nap(quiet, 0.05)  # and it still returns on time when nothing happens
        return asyncio.get_running_loop().time() - started
    assert 0.04 < run(go()) < 1


def test_run_stops_even_when_a_library_swallowed_the_cancellation(bed):
    delivery, ami, spool, _ = bed
    real = ami.action

    async def swallowing(fields, timeout=10):  # what asyncio.wait_for does on 3.11 at times
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.01)
        return await real(fields, timeout)
    ami.action = swallowing
    ami.register("jane", "sip:a@192.0.2.30:5060")

    async def go():
        task = asyncio.ensure_future(delivery.run())
        await asyncio.sleep(0)
        for _ in range(3):
            delivery.add(message(spool))
            await asyncio.sleep(0.001)
        task.cancel()
        await asyncio.wait_for(task, 2)
    with pytest.raises(asyncio.CancelledError):
        run(go())


def test_waits_for_fully_booted_after_a_login(bed):
    delivery, ami, spool, clock = bed
    ami.register("jane", "sip:a@192.0.2.30:5060")
    delivery.on_state("disconnected")
    delivery.on_state("connected")  # a restarting Asterisk: AMI is up, PJSIP not yet
    delivery.add(message(spool))
    assert run(delivery.step()) is False and ami.sent == []
    delivery.on_event({"Event": "FullyBooted"})
    assert run(delivery.step()) is True and len(ami.sent) == 1
    delivery.on_state("disconnected")
    delivery.on_event({"Event": "FullyBooted"})  # at login, before the client says connected
    delivery.on_state("connected")
    delivery.add(message(spool))
    assert run(delivery.step()) is True and len(ami.sent) == 2
    delivery.on_state("disconnected")
    delivery.on_state("connected")  # and if FullyBooted never comes, not for ever
    delivery.add(message(spool))
    assert run(delivery.step()) is False
    clock.now += 11
    run(delivery.step())
    assert len(ami.sent) == 3


def test_unknown_user_is_looked_up_again(bed):
    delivery, ami, spool, clock = bed
    sms = message(spool, to="+19995550000")
    sms.expires = 5000.0
    delivery.add(sms)
    run(delivery.step())
    ami.hints["+19995550000"] = "PJSIP/bob"  # a dialplan reload adds the user
    ami.register("bob", "sip:bob@192.0.2.40:5060")
    clock.now += 11
    run(delivery.step())
    assert ami.sent == []  # not looked up again within the minute
    clock.now += 50
    run(delivery.step())
    assert [d for d, _, _ in ami.sent] == ["pjsip:bob/sip:bob@192.0.2.40:5060"]


def test_sms_for_unknown_numbers_are_set_aside_and_cost_one_lookup_a_minute(bed):
    """1000 SMS for 10 numbers no user has: 10 lookups, then none for a minute,
    however often delivery runs; an SMS for a real user goes out meanwhile, and
    one whose phone is offline is held as before."""
    delivery, ami, spool, clock = bed
    ami.register("jane", "sip:jane@192.0.2.30:5060")
    strangers = [message(spool, to=f"+1999555{n:04d}") for n in range(10) for _ in range(100)]
    for sms in strangers:
        sms.expires = 5000.0
    delivery.add_many(strangers)
    offline = message(spool, to="bob", body="bob is offline")
    offline.expires = 5000.0
    delivery.add(offline)
    run(delivery.step())
    assert delivery.directory.lookups == 11 and delivery.set_aside() == 1000
    assert all(s.error.startswith("set aside: no user has the number") for s in strangers)
    def strangers_asked(start: int = 0) -> list[str]:
        return [n for n in ami.asked[start:] if n.lstrip("+").startswith("1999")]
    assert len(strangers_asked()) == 20  # each number with and without its +
    first = len(ami.asked)
    for _ in range(29):  # a busy minute: flushes, sweeps, new SMS
        clock.now += 2
        delivery.flush()
        fresh = message(spool, body="for jane")
        fresh.expires = 5000.0
        delivery.add(fresh)
        run(delivery.step())
    assert strangers_asked(first) == []
    assert len(ami.sent) == 29 and "bob is offline" not in [b for _, _, b in ami.sent]
    assert any(s.to == "bob" for s in delivery.pending.values())
    clock.now += 3
    run(delivery.step())
    assert len(strangers_asked(first)) == 20  # the minute is over: once per number


# ---------------------------------------------------------------- storage faults


def break_dir(spool: Spool, name: str) -> None:
    """A real fault, also for root: the directory is a file now (ENOTDIR)."""
    folder = spool.root / name
    for entry in folder.iterdir():
        entry.unlink()
    folder.rmdir()
    folder.write_text("not a directory\n")


def repair_dir(spool: Spool, name: str) -> None:
    (spool.root / name).unlink()
    (spool.root / name).mkdir()


def test_a_failed_dir_that_cannot_be_written_stops_no_delivery(bed):
    delivery, ami, spool, clock = bed
    ami.register("jane", "sip:jane@192.0.2.30:5060")
    doomed = message(spool, to="+19995550000")  # nobody: it expires
    delivery.add(doomed)
    run(delivery.step())
    break_dir(spool, "failed")
    clock.now = 1061.0
    later = message(spool, body="still going")
    later.expires = 2000.0
    spool.add(later)
    delivery.add(later)
    assert run(delivery.step()) is True
    assert [body for _, _, body in ami.sent] == ["still going"]
    assert "failed/" in spool.faults and delivery.tally.expired == 1
    assert doomed.id not in delivery.pending and doomed.id not in spool.ids(INBOUND)
    run(delivery.step())  # nothing is offered again, nothing stops
    assert len(ami.sent) == 1
    repair_dir(spool, "failed")
    spool.retry_deferred()
    assert [f.id for f in spool.failed()] == [doomed.id] and spool.faults == {}
    assert spool.pending(INBOUND) == []


def test_a_seen_dir_that_cannot_be_written_repeats_no_delivery(bed):
    delivery, ami, spool, clock = bed
    ami.register("jane", "sip:jane@192.0.2.30:5060")
    break_dir(spool, "seen")
    sms = message(spool, provider_id="SM1", body="once")
    delivery.add(sms)
    run(delivery.step())
    clock.now += 400  # past a sweep (retrytime): everything pending is tried again
    delivery.flush()
    run(delivery.step())
    assert [body for _, _, body in ami.sent] == ["once"]
    assert spool.pending(INBOUND) == [] and "seen/" in spool.faults
    assert spool.known(sms.id)  # a duplicate webhook is still refused
    repair_dir(spool, "seen")
    spool.retry_deferred()
    assert (spool.root / "seen" / sms.id).exists() and spool.faults == {}


def disk_waits_watched(monkeypatch, spool: Spool) -> tuple[list[int], list[str]]:
    """Every fsync, fdatasync, syncfs and journal commit is recorded by name when
    it runs on the thread put in the first list (the event loop's): the second."""
    from pbxhost.websms import spool as spool_mod
    loop_thread: list[int] = []
    on_loop: list[str] = []

    def watch(name, real):
        def call(*args, **kw):
            if threading.get_ident() in loop_thread:
                on_loop.append(name)
            return real(*args, **kw)
        return call
    monkeypatch.setattr(os, "fsync", watch("fsync", os.fsync))
    monkeypatch.setattr(os, "fdatasync", watch("fdatasync", os.fdatasync))
    monkeypatch.setattr(spool_mod, "syncfs", watch("syncfs", spool_mod.syncfs))
    monkeypatch.setattr(spool.committer, "commit", watch("commit", spool.committer.commit))
    return loop_thread, on_loop


def test_delivery_never_waits_for_a_disk_on_the_event_loop(tmp_path, monkeypatch):
    """Every durable write of a delivery round (an SMS parked from the journal
    into in/, set aside, progress saved, moved to failed/ on expiry, the round's
    removals synced, a drained journal segment dropped) runs in a thread: the
    loop that serves the webhook, FastAGI and the watchdog never runs an fsync,
    fdatasync or syncfs, nor waits for the spool's committer."""

    from pbxhost.websms import journal as journal_mod
    monkeypatch.setattr(journal_mod, "SEGMENT_BYTES", 600)  # segments rotate and drain
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    spool.open_journal()
    ami, clock = FakeAmi(), Clock()
    ami.register("jane", "sip:a@192.0.2.30:5060")
    ami.register("jane", "sip:b@192.0.2.31:5060")
    delivery = Delivery(Queue(part_bytes=100, expire=60), spool, ami, clock)
    connect(delivery)
    loop_thread, on_loop = disk_waits_watched(monkeypatch, spool)
    real_action = ami.action
    refused_b = {"n": 0}

    async def b_refuses_once(fields, timeout=10):  # progress: a saved, b still to go
        if fields["Action"] == "MessageSend" and "192.0.2.31" in fields["Destination"]:
            refused_b["n"] += 1
            if refused_b["n"] == 1:
                return {"Response": "Error", "Message": "transport down"}
        return await real_action(fields, timeout)
    ami.action = b_refuses_once

    def inbound(to: str, body: str) -> Sms:
        return Sms(kind=INBOUND, id=new_id(), to=to, sender="+15017122661", body=body,
                   created=1000.0, expires=1060.0)

    async def go() -> tuple[Sms, Sms]:
        loop_thread.append(threading.get_ident())
        progress, unknown, offline = (inbound("+12025550160", "progress"),
                                      inbound("+19995550000", "nobody"), inbound("bob", "off"))
        for sms in (progress, unknown, offline):
            assert await spool.accept(sms)  # into the journal (its writer thread)
            delivery.add(sms)
        await delivery.step()   # progress saved; nobody set aside; bob's waits: parked
        clock.now += RETRY_REFUSED + 1
        await delivery.step()   # progress finished: removal synced
        for n in range(4):      # more segments, drained by deliveries
            sms = inbound("+12025550160", f"more {n}" + "x" * 300)
            assert await spool.accept(sms)
            delivery.add(sms)
            await delivery.step()
        clock.now = 1061.0
        await delivery.step()   # the two waiting ones expire: moved to failed/
        loop_thread.clear()
        return unknown, offline
    unknown, offline = run(go())
    assert on_loop == []
    bodies = [body for _, _, body in ami.sent]
    assert bodies.count("progress") == 2 and "nobody" not in bodies  # a, then b: once each
    assert sorted(f.id for f in spool.failed()) == sorted([unknown.id, offline.id])
    assert spool.pending(INBOUND) == [] and spool.journaled() == []
    assert delivery.tally.delivered == 5 and delivery.tally.expired == 2
    assert len(journal_mod.segments(spool.root / "journal")) == 1  # drained ones dropped
    spool.journal.close()



def test_the_daemons_housekeeping_never_waits_for_a_disk_on_the_event_loop(tmp_path,
                                                                           monkeypatch):
    """websmsd's housekeeping writes what a storage fault held back (here: a
    move to failed/) and joins multi-part SMS whose time is up; the journal is
    opened and closed: all of it in threads, the loop's thread runs no fsync."""
    import time

    from pbxhost import service
    from pbxhost.websms import config, providers
    from pbxhost.websms.daemon import Websmsd
    path = tmp_path / "websms.conf"
    path.write_text(f"[astqueue]\nspooldir = {tmp_path / 'spool'}\n")
    d = Websmsd(config.load(path, env={}), service.Notifier())
    d.spool.prepare()
    d.parts.prepare()
    old = time.time() - 7200  # older than concat_timeout: joined as it is
    d.parts.add("", providers.Inbound("+12025550160", "+15017122661", "first half", "m1",
                                      providers.Part("r1", 2, 1)), old)
    doomed = Sms(kind=INBOUND, id=new_id(), to="+1999", sender="+1555", body="x",
                 created=1000.0, expires=1060.0)
    d.spool.add(doomed)
    break_dir(d.spool, "failed")
    assert d.spool.fail(doomed, "expired") is False  # held back: the fault
    repair_dir(d.spool, "failed")
    loop_thread, on_loop = disk_waits_watched(monkeypatch, d.spool)

    async def go() -> None:
        loop_thread.append(threading.get_ident())
        d.delivery.add_many(await asyncio.to_thread(d.spool.open_journal))  # as start() does
        task = asyncio.ensure_future(d.housekeeping())
        deadline = time.monotonic() + 10
        while (d.spool.faults or not d.delivery.pending) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # polling the units' state, with a deadline
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.to_thread(d.spool.journal.close)  # as run() does at the end
        loop_thread.clear()
    run(go())
    assert on_loop == []
    assert d.spool.faults == {} and [f.id for f in d.spool.failed()] == [doomed.id]
    [joined] = d.delivery.pending.values()
    assert joined.body.startswith("first half") and d.parts.waiting() == 0
