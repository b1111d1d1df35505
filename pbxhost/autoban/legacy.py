"""The seed's PHP autoban kept its state in `table ip autoban` and encoded it
in timeouts: a watch element's timeout was `watchtime + count`, a parole
element's `sentence + watchtime`. This turns those elements into ours."""

from __future__ import annotations

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
