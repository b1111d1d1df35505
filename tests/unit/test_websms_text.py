"""websms text rules: segment counts as networks bill them, and parts of a
long body that join back byte for byte."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from pbxhost.websms import text

# hypothesis keeps caches in ./.hypothesis otherwise: not in the work tree
set_hypothesis_home_dir(str(Path(tempfile.gettempdir()) / "pbxhost-hypothesis"))


@pytest.mark.parametrize(("body", "encoding", "units", "count"), [
    ("", "GSM-7", 0, 1),
    ("a" * 160, "GSM-7", 160, 1),
    ("a" * 161, "GSM-7", 161, 2),
    ("a" * 306, "GSM-7", 306, 2),
    ("a" * 307, "GSM-7", 307, 3),
    ("€" * 80, "GSM-7", 160, 1),          # extension table: two septets each
    ("[x]" * 54, "GSM-7", 270, 2),
    ("ä" * 70, "GSM-7", 70, 1),           # ä is in the default alphabet
    ("ą" * 70, "UCS-2", 70, 1),
    ("ą" * 71, "UCS-2", 71, 2),
    ("😀" * 35, "UCS-2", 70, 1),          # non-BMP: two UTF-16 units
    ("😀" * 36, "UCS-2", 72, 2),
    ("😀" * 1600, "UCS-2", 3200, 48),
])
def test_segments(body, encoding, units, count):
    seg = text.segments(body)
    assert (seg.encoding, seg.units, seg.count) == (encoding, units, count)


def test_segments_reads_well():
    assert str(text.segments("hi")) == "1 GSM-7 segment (2 septets)"
    assert str(text.segments("😀" * 36)) == "2 UCS-2 segments (72 UTF-16 units)"


def test_non_bmp():
    assert text.has_non_bmp("a😀") and not text.has_non_bmp("aé漢")
    assert text.drop_non_bmp("a😀b𝔸c") == "abc"


def test_short_body_is_one_part():
    assert text.split_parts("hello", 700) == ["hello"]
    assert text.split_parts("", 700) == [""]


def test_parts_prefer_line_breaks_then_spaces():
    body = "first line is here\nsecond line goes on and on"
    parts = text.split_parts(body, 30)
    assert parts[0] == "first line is here\n"
    words = text.split_parts("aaaa bbbb cccc dddd", 10)
    assert words == ["aaaa bbbb ", "cccc dddd"]


def test_parts_never_split_emoji_sequences_or_crlf():
    family = "👩\u200d👩\u200d👧"  # 18 bytes, one picture
    body = "x" * 10 + family + "y" * 10
    for limit in range(18, 40):  # below 18 bytes the picture cannot stay whole
        parts = text.split_parts(body, limit)
        assert "".join(parts) == body
        assert all(family in p or "\u200d" not in p for p in parts), (limit, parts)
    crlf = text.split_parts("a" * 9 + "\r\n" + "b" * 9, 10)
    assert crlf[0].endswith("\r\n") or not crlf[0].endswith("\r")


def test_1600_emoji_in_parts():
    body = "😀" * 1600
    parts = text.split_parts(body, 700)
    assert "".join(parts) == body and len(parts) == 10
    assert all(len(p.encode()) <= 700 for p in parts)


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=600), st.integers(min_value=4, max_value=120))
def test_parts_join_byte_exact_and_fit(body, limit):
    parts = text.split_parts(body, limit)
    assert "".join(parts).encode() == body.encode()
    assert all(len(p.encode()) <= limit for p in parts)
    assert all(parts) or parts == [""]


def test_part_limit_must_hold_a_character():
    with pytest.raises(ValueError):
        text.split_parts("abc", 3)
