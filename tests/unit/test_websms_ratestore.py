"""The plain AGI fallback's per-user rate limit, kept in files under flock:
processes and threads taking at once never pass the limit, the window
slides, and the decision is the one websmsd's in-memory RateLimit makes."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from pbxhost.websms import ratestore
from pbxhost.websms.guards import RateLimit, rate_decision
from pbxhost.websms.ratestore import SharedRateLimit
from pbxhost.websms.spool import SpoolError


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _take_many(folder: str, limit: int, times: int, out) -> None:
    rate = SharedRateLimit(ratestore.Path(folder), limit, 3600)
    out.put(sum(rate.take("jane") for _ in range(times)))


def test_processes_taking_at_once_never_pass_the_limit(tmp_path):
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_take_many, args=(str(tmp_path / "rate"), 7, 10, out))
             for _ in range(4)]
    for p in procs:
        p.start()
    taken = sum(out.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert taken == 7  # of 40 tries by 4 processes: the files are the one count
    assert len(list((tmp_path / "rate").iterdir())) == 1


def test_threads_taking_at_once_never_pass_the_limit(tmp_path):
    rate = SharedRateLimit(tmp_path / "rate", 5, 60)
    results: list[bool] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(5):
            ok = rate.take("jane")
            with lock:
                results.append(ok)
    threads = [threading.Thread(target=take) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 5 and len(results) == 30


def test_the_window_slides_and_users_count_apart(tmp_path):
    clock = Clock()
    rate = SharedRateLimit(tmp_path / "rate", 2, 60, clock)
    assert [rate.take("jane") for _ in range(3)] == [True, True, False]
    assert rate.take("john") is True  # another user, another count
    clock.now += 59
    assert rate.take("jane") is False
    clock.now += 1.5  # the first two left the window
    assert [rate.take("jane") for _ in range(3)] == [True, True, False]
    again = SharedRateLimit(tmp_path / "rate", 2, 60, clock)  # the next process
    assert again.take("jane") is False


def test_the_same_decision_as_fastagi_memory(tmp_path):
    clock = Clock()
    memory = RateLimit(3, 10, clock)
    shared = SharedRateLimit(tmp_path / "rate", 3, 10, clock)
    steps = [0, 1, 1, 2, 3, 5, 8, 9.5, 10.5, 11, 12, 13, 25, 25, 25, 25, 40]
    got = []
    for t in steps:
        clock.now = 1000.0 + t
        got.append((memory.take("u"), shared.take("u")))
    assert all(a == b for a, b in got), got
    assert rate_decision([], 0.0, 0, 60) == (True, [])  # 0: no limit
    assert SharedRateLimit(tmp_path / "none", 0, 60).take("u") and not (tmp_path / "none").exists()


def test_hostile_names_and_garbage_stay_harmless(tmp_path):
    folder = tmp_path / "rate"
    rate = SharedRateLimit(folder, 2, 60, Clock())
    assert rate.take("../../etc/passwd") and rate.take("a/b\nc")
    assert sorted(p.parent for p in tmp_path.rglob("*") if p.is_file()) == [folder, folder]
    path = folder / ratestore.file_name("jane")
    path.write_bytes(b"nan\nnot a number\n\xff\n999.0\n")  # 999 is within the window
    assert rate.take("jane") is True and rate.take("jane") is False
    assert ratestore.parse_times(path.read_bytes()) == [999.0, 1000.0]


def test_a_folder_it_cannot_write_in_is_a_spool_error(tmp_path):
    folder = tmp_path / "rate"
    folder.write_text("a file where the folder should be: root cannot write in it either\n")
    with pytest.raises(SpoolError, match="cannot keep the rate of jane"):
        SharedRateLimit(folder, 2, 60).take("jane")


def test_a_symlink_planted_as_the_file_is_refused(tmp_path):
    folder = tmp_path / "rate"
    folder.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (folder / ratestore.file_name("jane")).symlink_to(victim)
    with pytest.raises(SpoolError):
        SharedRateLimit(folder, 2, 60).take("jane")
    assert victim.read_text() == "keep\n"
