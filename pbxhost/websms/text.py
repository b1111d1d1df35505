"""Pure text rules of SMS: GSM-7 vs UCS-2 segment counts, non-BMP handling,
and cutting a long body into SIP MESSAGE parts that concatenate byte-exact."""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass

# GSM 03.38 default alphabet (one septet each) and its extension table (two).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")
ZWJ = "\u200d"


@dataclass(frozen=True)
class Segments:
    encoding: str   # "GSM-7" or "UCS-2"
    units: int      # septets (GSM-7) or UTF-16 code units (UCS-2)
    count: int      # SMS segments the network bills

    def __str__(self) -> str:
        unit = "septets" if self.encoding == "GSM-7" else "UTF-16 units"
        plural = "s" if self.count != 1 else ""
        return f"{self.count} {self.encoding} segment{plural} ({self.units} {unit})"


def is_gsm7(text: str) -> bool:
    return all(c in GSM7_BASIC or c in GSM7_EXTENDED for c in text)


def segments(text: str) -> Segments:
    """Segments as a phone network counts them: 160/153 septets or 70/67 units."""
    if is_gsm7(text):
        units = sum(2 if c in GSM7_EXTENDED else 1 for c in text)
        single, multi, encoding = 160, 153, "GSM-7"
    else:
        units = len(text.encode("utf-16-le")) // 2  # non-BMP characters take two
        single, multi, encoding = 70, 67, "UCS-2"
    count = 1 if units <= single else math.ceil(units / multi)
    return Segments(encoding, units, count)


def has_non_bmp(text: str) -> bool:
    return any(ord(c) > 0xFFFF for c in text)


def drop_non_bmp(text: str) -> str:
    return "".join(c for c in text if ord(c) <= 0xFFFF)


def _is_extender(c: str) -> bool:
    """Characters that belong to the character before them (never start a part)."""
    o = ord(c)
    return (c == ZWJ or unicodedata.category(c) in ("Mn", "Me", "Mc")
            or 0xFE00 <= o <= 0xFE0F or 0xE0100 <= o <= 0xE01EF   # variation selectors
            or 0x1F3FB <= o <= 0x1F3FF                             # skin tones
            or 0xE0020 <= o <= 0xE007F)                            # tag characters


def _regional(c: str) -> bool:
    return 0x1F1E6 <= ord(c) <= 0x1F1FF  # flag halves


def _joined(before: str, after: str) -> bool:
    return (_is_extender(after) or before == ZWJ or (before == "\r" and after == "\n")
            or (_regional(before) and _regional(after)))


def _fit(text: str, max_bytes: int) -> int:
    """The most characters of TEXT whose UTF-8 fits in MAX_BYTES."""
    size = 0
    for i, c in enumerate(text):
        size += len(c.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            return i
    return len(text)


def _cut(text: str, limit: int) -> int:
    """Where to end a part of at most LIMIT characters: after a line break or a
    space in its second half, else at a boundary that splits no emoji/accent."""
    for sep in ("\n", " "):
        at = text.rfind(sep, limit // 2, limit)
        if at >= 0:
            return at + 1
    cut = limit
    while cut > max(1, limit - 16) and _joined(text[cut - 1], text[cut]):
        cut -= 1
    return cut if not _joined(text[cut - 1], text[cut]) else limit


def split_parts(text: str, max_bytes: int) -> list[str]:
    """Parts of TEXT of at most MAX_BYTES of UTF-8 each; "".join(parts) == text."""
    if max_bytes < 4:
        raise ValueError("a part must hold at least one character (4 bytes)")
    parts: list[str] = []
    rest = text
    while len(rest.encode("utf-8", "surrogatepass")) > max_bytes:
        cut = _cut(rest, _fit(rest, max_bytes))
        parts.append(rest[:cut])
        rest = rest[cut:]
    return [*parts, rest] if rest or not parts else parts
