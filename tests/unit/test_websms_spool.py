"""The spool: complete records or none, duplicates caught by the file system,
a full disk leaves nothing behind, handled records go (or are archived)."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from pbxhost.websms import spool as spool_mod
from pbxhost.websms.model import INBOUND, OUTBOUND, Sms, new_id, provider_key, valid_id
from pbxhost.websms.spool import Spool, SpoolError


def sms(kind: str = INBOUND, sms_id: str | None = None, **kw) -> Sms:
    fields = {"to": "+12025550160", "sender": "+15017122661", "body": "Hi 😀\r\n",
              "created": 1000.0, "expires": 2000.0, **kw}
    return Sms(kind=kind, id=sms_id or new_id(), **fields)


@pytest.fixture
def spool(tmp_path) -> Spool:
    s = Spool(tmp_path / "spool")
    s.prepare()
    return s


def test_round_trip_is_exact(spool):
    record = sms(provider_id="SM1", delivered=["sip:a@b"])
    assert spool.add(record)
    assert spool.pending(INBOUND) == [record]
    assert spool.load(INBOUND, record.id) == record
    assert os.stat(spool.root / "in" / f"{record.id}.json").st_mode & 0o007 == 0  # no "other"


def test_ids():
    assert valid_id(new_id()) and valid_id(provider_key("a", "SM1"))
    assert provider_key("a", "SM1") == provider_key("a", "SM1") != provider_key("b", "SM1")
    assert not valid_id("../etc/passwd") and not valid_id("A" * 32)


def test_duplicate_provider_id_is_stored_once_even_after_delivery(spool):
    first = sms(sms_id=provider_key("", "SM1"), provider_id="SM1")
    assert spool.add(first)
    assert not spool.add(sms(sms_id=first.id, provider_id="SM1", body="again"))
    spool.done(first)
    assert spool.pending(INBOUND) == []
    assert not spool.add(sms(sms_id=first.id, provider_id="SM1"))  # remembered in seen/
    assert spool.prune_seen(0, now=10**10) == 1
    assert spool.add(sms(sms_id=first.id, provider_id="SM1"))     # forgotten after dedup_time


def test_concurrent_duplicates_one_wins(spool):
    sms_id = provider_key("", "race")
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(spool.add(sms(sms_id=sms_id))))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert list((spool.root / "tmp").iterdir()) == []


def test_disk_full_leaves_nothing(spool, monkeypatch):
    real_write = os.write

    def full(fd, data):
        if len(data) > 50:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)
    monkeypatch.setattr(spool_mod.os, "write", full)
    with pytest.raises(SpoolError) as err:
        spool.add(sms())
    assert spool_mod.is_disk_full(err.value)
    for name in spool_mod.DIRS:
        assert list((spool.root / name).iterdir()) == []


def test_link_failure_leaves_nothing(spool, monkeypatch):
    def refuse(src, dst):
        raise OSError(errno.EIO, "I/O error")
    monkeypatch.setattr(spool_mod.os, "link", refuse)
    with pytest.raises(SpoolError):
        spool.add(sms())
    assert list((spool.root / "tmp").iterdir()) == [] and spool.pending(INBOUND) == []


def test_save_done_fail_archive(tmp_path):
    s = Spool(tmp_path / "s", archive=True)
    s.prepare()
    a, b = sms(OUTBOUND), sms(OUTBOUND)
    s.add(a)
    s.add(b)
    a.attempts, a.error = 3, "HTTP 503"
    s.save(a)
    assert s.load(OUTBOUND, a.id).attempts == 3
    s.done(a)
    assert (tmp_path / "s/archive" / f"{a.id}.json").exists()
    s.fail(b, "HTTP 400 bad number")
    assert s.pending(OUTBOUND) == [] and s.failed()[0].error == "HTTP 400 bad number"
    assert s.known(b.id)


def test_unreadable_record_is_quarantined(spool):
    bad = spool.root / "in" / f"{new_id()}.json"
    bad.write_text('{"format": 1, "kind": "in", "id": "../x"}')
    good = sms()
    spool.add(good)
    assert spool.pending(INBOUND) == [good]
    assert not bad.exists() and list((spool.root / "failed").glob("*.unreadable"))


def test_records_reject_foreign_fields():
    data = sms().to_json().replace(b'"notice":false', b'"notice":false,"cmd":"rm"')
    with pytest.raises(ValueError):
        Sms.from_json(data)
    with pytest.raises(ValueError):
        Sms.from_json(sms().to_json().replace(b'"attempts":0', b'"attempts":"0"'))


def test_prepare_cleans_tmp_only_when_asked(tmp_path):
    s = Spool(tmp_path / "s")
    s.prepare()
    (tmp_path / "s/tmp/leftover").write_text("x")
    s.prepare(clean=False)
    assert (tmp_path / "s/tmp/leftover").exists()
    s.prepare()
    assert not (tmp_path / "s/tmp/leftover").exists()


def test_flush_request(spool):
    assert not spool.take_flush_request()
    spool.request_flush()
    assert spool.take_flush_request() and not spool.take_flush_request()
