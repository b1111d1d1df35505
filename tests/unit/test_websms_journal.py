"""The journal: batches in one write, torn tails ignored, records adopted
after a crash, done marks, segments removed once empty, a failed write cut
off again; and the spool's use of it (park, done, fail, a file wins)."""

from __future__ import annotations

import asyncio
import errno
import os
import threading

import pytest

from pbxhost.websms import journal as journal_mod
from pbxhost.websms.journal import Journal, JournalError, decode, encode, read_live
from pbxhost.websms.model import INBOUND, Sms, new_id, provider_key
from pbxhost.websms.spool import Spool, SpoolError, is_disk_full


def sms(sms_id: str | None = None, body: str = "Hi 😀\r\n", **kw) -> Sms:
    return Sms(kind=INBOUND, id=sms_id or new_id(), to="+12025550160", sender="+15017122661",
               body=body, created=1000.0, expires=2000.0, **kw)


def run(coro):
    return asyncio.run(coro)


async def append_all(journal: Journal, records: list[Sms]) -> list[bool | BaseException]:
    return await asyncio.gather(*(journal.append(r) for r in records), return_exceptions=True)


@pytest.fixture
def folder(tmp_path):
    return tmp_path / "journal"


def opened(folder) -> Journal:
    j = Journal(folder)
    j.open()
    return j


def wal_files(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".wal"))


def test_records_round_trip_and_a_torn_tail_is_where_reading_stops():
    records = [sms(body="a" * n) for n in (1, 300, 7000)]
    data = b"".join(encode(r) for r in records)
    assert [Sms.from_json(p) for p in decode(data)] == records
    last = len(encode(records[2]))
    for cut in (1, 7, 8, last // 2, last - 1):  # in the header, in the payload
        assert len(list(decode(data[:-cut]))) == 2
    flipped = bytearray(data)
    flipped[-1] ^= 0xFF  # a payload that does not match its CRC
    assert len(list(decode(bytes(flipped)))) == 2
    assert list(decode(b"\0" * 64)) == [] and list(decode(b"")) == []


def test_what_comes_during_a_write_goes_in_one_batch(folder, monkeypatch):
    j = opened(folder)
    writes: list[int] = []
    real = j._write

    def counting(data: bytes):
        writes.append(len(data))
        return real(data)
    monkeypatch.setattr(j, "_write", counting)
    records = [sms() for _ in range(50)]
    assert run(append_all(j, records)) == [True] * 50
    assert len(writes) == 1  # fifty SMS, one write, one fdatasync
    assert read_live(folder) == records
    assert all(j.holds(r.id) for r in records)
    j.close()


def test_an_id_held_or_being_written_is_refused(folder):
    j = opened(folder)
    first = sms(provider_key("", "SM1"), provider_id="SM1")
    twin = sms(first.id, body="again", provider_id="SM1")
    assert run(append_all(j, [first, twin])) == [True, False]
    assert run(j.append(sms(first.id))) is False
    assert read_live(folder) == [first]
    j.close()


def test_released_records_are_marked_and_not_adopted_after_a_crash(folder):
    j = opened(folder)
    records = [sms() for _ in range(4)]
    run(append_all(j, records))
    j.release(records[0].id)
    j.release(records[2].id)
    assert not j.release(records[2].id)  # not held any more
    j.flush()
    assert read_live(folder) == [records[1], records[3]]
    # a crash: no close(); the next start adopts what was not handled
    again = Journal(folder)
    assert again.open() == [records[1], records[3]]
    assert wal_files(folder) == ["0000000000000001.wal", "0000000000000002.wal"]
    for r in (records[1], records[3]):
        again.release(r.id)
    again.flush()  # the old segment has nothing left: it goes, with its marks
    assert wal_files(folder) == ["0000000000000002.wal"]
    assert sorted(os.listdir(folder)) == ["0000000000000002.wal"]
    again.close()


def test_a_torn_tail_after_a_crash_is_not_adopted(folder):
    j = opened(folder)
    kept = sms()
    run(j.append(kept))
    with open(folder / "0000000000000001.wal", "ab") as f:
        f.write(encode(sms())[:-5])  # the crash came in the middle of a write
    assert Journal(folder).open() == [kept]


def test_full_segments_are_left_and_removed_once_handled(folder, monkeypatch):
    monkeypatch.setattr(journal_mod, "SEGMENT_BYTES", 1000)
    j = opened(folder)
    records = [sms(body="x" * 400) for _ in range(6)]
    for r in records:
        run(j.append(r))
    assert len(wal_files(folder)) == 4  # ~700 bytes a record: a new segment after each two
    assert read_live(folder) == records
    for r in records[:5]:
        j.release(r.id)
    j.flush()
    assert wal_files(folder) == ["0000000000000003.wal", "0000000000000004.wal"]
    assert read_live(folder) == records[5:]
    j.close()


def test_a_segment_being_written_is_never_dropped(folder, monkeypatch):
    monkeypatch.setattr(journal_mod, "SEGMENT_BYTES", 1000)
    j = opened(folder)
    first = sms(body="x" * 400)
    run(j.append(first))
    j.release(first.id)
    j.flush()  # segment 1 holds nothing now, and is still the one written to
    written, gate = threading.Event(), threading.Event()
    real = j._write

    def slow(data: bytes):
        error = real(data)  # fills segment 1 and moves on to segment 2
        written.set()
        gate.wait(5)
        return error
    monkeypatch.setattr(j, "_write", slow)
    second = sms(body="y" * 400)

    async def scenario() -> bool:
        task = asyncio.ensure_future(j.append(second))
        assert await asyncio.to_thread(written.wait, 5)
        j.flush()  # the delivery's flush, while the batch is not answered yet
        gate.set()
        return await task
    assert run(scenario()) is True
    assert read_live(folder) == [second]
    j.close()


def test_a_failed_write_is_cut_off_and_the_next_one_is_taken(folder, monkeypatch):
    j = opened(folder)
    first = sms()
    run(j.append(first))
    size = os.path.getsize(folder / "0000000000000001.wal")
    real = os.write

    def half_then_full(fd, data):  # a short write, then the disk is full
        if len(data) > 100:
            real(fd, bytes(data[:len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(journal_mod.os, "write", half_then_full)
    lost = sms()
    with pytest.raises(JournalError) as err:
        run(j.append(lost))
    assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno == errno.ENOSPC
    assert os.path.getsize(folder / "0000000000000001.wal") == size
    assert not j.holds(lost.id)
    monkeypatch.setattr(journal_mod.os, "write", real)
    assert run(j.append(lost)) is True  # the ITSP's retry
    assert read_live(folder) == [first, lost]
    j.close()


# ---------------------------------------------------------------- the spool's journal


@pytest.fixture
def spool(tmp_path) -> Spool:
    s = Spool(tmp_path / "spool")
    s.prepare()
    s.open_journal()
    return s


def test_accept_dedups_against_files_too(spool):
    known = sms(provider_key("", "SM7"), provider_id="SM7")
    assert spool.add(known)  # in in/ as a file (the plain AGI script, or parked)
    assert run(spool.accept(sms(known.id, provider_id="SM7"))) is False
    fresh = sms(provider_key("", "SM8"), provider_id="SM8")
    assert run(spool.accept(fresh)) is True
    spool.done(fresh)
    assert run(spool.accept(sms(fresh.id, provider_id="SM8"))) is False  # seen/ remembers


def test_park_moves_a_waiting_sms_into_in(spool):
    waiting = sms()
    run(spool.accept(waiting))
    assert spool.pending(INBOUND) == []
    spool.park(waiting)
    assert spool.pending(INBOUND) == [waiting]
    assert spool.journal is not None and not spool.journal.holds(waiting.id)
    spool.sync_removals(INBOUND)
    assert spool.journaled() == []


def test_park_keeps_it_in_the_journal_when_in_cannot_take_it(spool, monkeypatch):
    waiting = sms()
    run(spool.accept(waiting))

    def full(*_a, **_k):
        raise SpoolError("disk full")
    monkeypatch.setattr(spool, "save", full)
    spool.park(waiting)
    assert spool.journal is not None and spool.journal.holds(waiting.id)


def test_done_and_fail_release_and_archive(tmp_path):
    s = Spool(tmp_path / "s", archive=True)
    s.prepare()
    s.open_journal()
    handled, given_up = sms(), sms()
    run(append_all_spool(s, [handled, given_up]))
    s.done(handled)
    assert Sms.from_json((tmp_path / "s/archive" / f"{handled.id}.json").read_bytes()) == handled
    s.fail(given_up, "expired")
    assert [f.id for f in s.failed()] == [given_up.id]
    s.sync_removals(INBOUND)
    assert s.journaled() == []


async def append_all_spool(s: Spool, records: list[Sms]) -> list[bool]:
    return await asyncio.gather(*(s.accept(r) for r in records))


def test_a_file_wins_over_the_journal_after_a_crash(tmp_path):
    s = Spool(tmp_path / "s")
    s.prepare()
    s.open_journal()
    moved, pending = sms(), sms()
    run(append_all_spool(s, [moved, pending]))
    moved.delivered = ["sip:jane@192.0.2.30:5060"]
    s.save(moved)  # in in/ now; its release mark is lost in the crash below
    restarted = Spool(tmp_path / "s")
    assert restarted.open_journal() == [pending]
    assert restarted.pending(INBOUND) == [moved]


def test_a_full_disk_is_a_spool_error_that_says_so(spool, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(journal_mod.os, "write", full)
    with pytest.raises(SpoolError) as err:
        run(spool.accept(sms()))
    assert is_disk_full(err.value)


def test_records_leave_from_threads_while_the_loop_appends(folder, monkeypatch):
    """Delivery releases and flushes in threads (their fsyncs off the event loop)
    while the loop appends and the writer rotates segments: every record is
    held once, every mark lands, drained segments go, the current one stays."""
    monkeypatch.setattr(journal_mod, "SEGMENT_BYTES", 2000)
    j = opened(folder)
    records = [sms(body="y" * 200) for _ in range(300)]

    def leave(ids: list[str]) -> None:
        for sms_id in ids:
            assert j.release(sms_id)
        j.flush()

    async def go() -> None:
        for start in range(0, len(records), 10):
            batch = records[start:start + 10]
            assert await append_all(j, batch) == [True] * 10
            # two threads at once, as delivery's round sync and a housekeeping retry
            await asyncio.gather(asyncio.to_thread(leave, [r.id for r in batch[:5]]),
                                 asyncio.to_thread(leave, [r.id for r in batch[5:]]))
    run(go())
    assert read_live(folder) == [] and j.where == {} and j.reserved == set()
    j.flush()
    assert wal_files(folder) == [f"{j.seq:016x}.wal"]
    j.close()
