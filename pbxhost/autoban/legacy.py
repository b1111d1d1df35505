"""The seed's PHP autoban kept its state in `table ip autoban` and encoded it
in timeouts: a watch element's timeout was `watchtime + count`, a parole
element's `sentence + watchtime`. This turns those elements into ours."""

from __future__ import annotations

import re

from pbxhost.autoban import policy
from pbxhost.autoban.firewall import Element, Put


def convert(elements: list[Element], settings: policy.Settings, now: int) -> list[Put]:
    """Seed-era elements → Puts for table inet autoban, remaining times kept."""
    parole = {e.addr: e for e in elements if e.set == "parole"}
    puts: list[Put] = []
    for e in elements:
        if e.set in ("whitelist", "blacklist"):
            puts.append(Put(e.set, e.addr))
        elif not e.expires:
            continue  # expired while we read it
        elif e.set == "watch":
            # the count is known, the times are not: count them all as now (errs towards jail)
            count = min(max((e.timeout or 0) - settings.watchtime, 1), settings.maxcount)
            puts.append(Put("watch", e.addr, e.expires, policy.encode_times((now,) * count)))
        else:
            sentence = _sentence(parole.get(e.addr), settings)
            puts.append(Put(e.set, e.addr, e.expires, policy.encode_sentence(sentence)))
    return puts


def _sentence(parole: Element | None, settings: policy.Settings) -> int:
    if parole is None or parole.timeout is None:
        return settings.jailtime
    return max(parole.timeout - settings.watchtime, settings.jailtime)


# The seed's container saved that table on exit with `nft --stateless list table
# autoban` to /srv/var/lib/nftables/autoban.nft and loaded it back at start. The
# file is parsed here as text (never loaded into nft: it may hold rules of its
# own); --stateless leaves only each element's full timeout, so the remaining
# time is counted from the file's modification time (when it was written).

_SET = re.compile(r"\bset\s+(\w+)\s*\{(.*?)\n\s*\}", re.S)
_ELEMENTS = re.compile(r"elements\s*=\s*\{(.*?)\}", re.S)
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?")


def duration(text: str) -> int:
    """nft's `1d2h3m4s500ms` → whole seconds (rounded down); ValueError if not one."""
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"not an nft duration: {text!r}")
    d, h, m, s, _ = (int(g) if g else 0 for g in match.groups())
    return ((d * 24 + h) * 60 + m) * 60 + s


def parse_seed_file(text: str, age: int) -> list[Element]:
    """The elements of the seed's sets in a `nft list table` text; AGE: seconds
    since the file was written (taken off each element's remaining time)."""
    found: list[Element] = []
    for name, body in _SET.findall(text):
        if name not in ("watch", "jail", "parole", "whitelist", "blacklist"):
            continue
        match = _ELEMENTS.search(body)
        for item in (match.group(1).split(",") if match else []):
            words = item.split()
            if not words:
                continue
            attrs = dict(zip(words[1::2], words[2::2], strict=False))
            timeout = duration(attrs["timeout"]) if "timeout" in attrs else None
            left = duration(attrs["expires"]) if "expires" in attrs else timeout
            expires = None if left is None else max(left - age, 0)
            found.append(Element(name, words[0], timeout, expires, None))
    return found
