"""mirror.Mirror's bookkeeping on notifications given by hand (the real kernel's
are in tests/integration/test_firewall.py): deadlines, the margin around them,
intervals, reloads and the sweep."""

from __future__ import annotations

import pytest

from pbxhost.autoban.mirror import MARGIN, SWEEP_INTERVAL, Mirror
from pbxhost.autoban.nfnetlink import Change, Found


class Notices:
    """A Monitor's read(): what the test queued, then nothing."""

    def __init__(self) -> None:
        self.queued: list[Change] = []
        self.lost = False

    def read(self) -> tuple[list[Change], bool]:
        out, lost = self.queued, self.lost
        self.queued, self.lost = [], False
        return out, lost

    def fileno(self) -> int:
        return -1


def add(name: str, key: int, expires: int | None = None, comment: str | None = None,
        end: bool = False) -> Change:
    return Change(True, name, Found(key, expires, expires, comment), end)


def element(bed, key: int) -> Found | None:
    """What the mirror holds for KEY in watch4 now."""
    return bed.mirror.holding(["watch4"], key).get("watch4")


def delete(name: str, key: int, end: bool = False) -> Change:
    return Change(False, name, Found(key, None, None, None), end)


@pytest.fixture
def bed():
    class Bed:
        def __init__(self) -> None:
            self.now, self.loads, self.notices = 1000.0, 0, Notices()
            self.kernel: dict[str, list[Change]] = {"watch4": [], "whitelist4": []}

        def load(self, name: str) -> list[Change]:
            self.loads += 1
            return self.kernel[name]

    b = Bed()
    b.mirror = Mirror(b.notices, ["watch4"], ["whitelist4"], b.load,  # type: ignore[arg-type]
                      clock=lambda: b.now)
    return b


def test_loaded_at_first_refresh_then_kept_by_notifications(bed):
    bed.kernel["watch4"] = [add("watch4", 7, 600, "t1")]
    bed.mirror.refresh()
    assert element(bed, 7) == Found(7, 600, 600, "t1")
    bed.notices.queued = [delete("watch4", 7), add("watch4", 8, 60, "t2")]
    bed.mirror.refresh()
    assert element(bed, 7) is None
    assert element(bed, 8).comment == "t2"
    assert bed.loads == 2  # watch4 and whitelist4, once


def test_what_is_notified_during_a_load_is_taken_in_after_it(bed):
    bed.mirror.refresh()
    bed.notices.lost = True
    bed.kernel["watch4"] = [add("watch4", 1, 600)]
    # a change committed after the dump: the next read returns it
    original = bed.notices.read

    def read_after_dump():
        out = original()
        bed.notices.queued = [delete("watch4", 1)]
        bed.notices.read = original
        return out
    bed.notices.read = read_after_dump
    bed.mirror.refresh()
    assert element(bed, 1) is None


def test_remaining_time_counts_down_and_ends_at_the_deadline(bed):
    bed.mirror.refresh()
    bed.notices.queued = [add("watch4", 5, 10)]
    bed.mirror.refresh()
    bed.now += 4
    assert element(bed, 5).expires == 6
    bed.now += 6
    assert element(bed, 5) is None


@pytest.mark.parametrize(("after", "present"), [
    (0, True), (10 - MARGIN - 0.1, True), (10 - 1, None), (10 + 1, None),
    (10 + MARGIN + 0.1, False)])
def test_presence_near_a_deadline_is_the_kernels_to_say(bed, after, present):
    bed.mirror.refresh()
    bed.notices.queued = [add("watch4", 5, 10), add("watch4", 6)]
    bed.mirror.refresh()
    bed.now += after
    assert bed.mirror.present("watch4", 5) is present
    assert bed.mirror.present("watch4", 6) is True   # no timeout
    assert bed.mirror.present("watch4", 99) is False


def test_an_overflow_reloads_everything(bed):
    bed.mirror.refresh()
    bed.notices.queued = [add("watch4", 1, 600)]
    bed.notices.lost = True
    bed.kernel["watch4"] = [add("watch4", 2, 600)]
    bed.mirror.refresh()
    assert element(bed, 2) is not None
    assert element(bed, 1) is None  # read before the overflow: the dump decides


def test_a_failed_load_is_tried_again_at_the_next_refresh(bed):
    def gone(name):
        raise OSError(2, "no such table")
    load, bed.mirror._load = bed.mirror._load, gone
    with pytest.raises(OSError):
        bed.mirror.refresh()
    bed.mirror._load = load
    bed.kernel["watch4"] = [add("watch4", 3, 600)]
    bed.mirror.refresh()
    assert element(bed, 3) is not None


def test_expired_elements_are_swept_from_memory(bed):
    bed.mirror.refresh()
    bed.notices.queued = [add("watch4", k, 5) for k in range(100)] + [add("watch4", 500, 3600)]
    bed.mirror.refresh()
    bed.now += SWEEP_INTERVAL
    bed.mirror.refresh()
    assert list(bed.mirror._exact["watch4"]) == [500]


def test_intervals_as_the_kernel_keeps_them(bed):
    # 10.0.0.0/8 (start, end one past) and 192.0.2.5-192.0.2.9, then the top of the space
    lo, hi = 10 << 24, (11 << 24)
    bed.kernel["whitelist4"] = [
        add("whitelist4", 0, end=True), add("whitelist4", lo, comment="lan"),
        add("whitelist4", hi, end=True), add("whitelist4", 0xC0000205),
        add("whitelist4", 0xC000020A, end=True)]
    bed.mirror.refresh()
    top = (1 << 32) - 1
    assert bed.mirror.interval("whitelist4", lo + 5, top) == (Found(lo, None, None, "lan"), hi - 1)
    assert bed.mirror.interval("whitelist4", hi, top) is None
    assert bed.mirror.interval("whitelist4", 0xC0000209, top)[1] == 0xC0000209
    assert bed.mirror.interval("whitelist4", 0xC000020A, top) is None
    assert bed.mirror.interval("whitelist4", 5, top) is None
    bed.notices.queued = [add("whitelist4", 0xF0000000)]  # up to the top: no end element
    bed.mirror.refresh()
    assert bed.mirror.interval("whitelist4", top, top)[1] == top
    bed.notices.queued = [delete("whitelist4", lo), delete("whitelist4", hi, end=True)]
    bed.mirror.refresh()
    assert bed.mirror.interval("whitelist4", lo + 5, top) is None
