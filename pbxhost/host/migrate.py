"""Fixes to seeded files that are not the admin's to make: run by `pbxhost
seed` at every boot, on a config dir seeded by an earlier release.

Seeding never rewrites a file (the admin's from then on), and `pbxhost seed
--diff` shows what changed in the defaults. A flaw that a release fixes in
the defaults and that is a security hole in every seeded copy is different:
the admin would have to notice it in a diff. So each migration here
replaces the earlier release's text, only where it is still there verbatim
(the admin did not touch it), durably (durable.write_durably, the file's
owner and mode kept), with one NOTICE line. Where the flaw is still there
but the text was edited, nothing is written: one WARNING names the file and
what to change.

The decision (which text becomes which, or what to warn about) is pure
(`plan`); `apply` does the I/O."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pbxhost import service
from pbxhost.durable import write_durably

log = logging.getLogger("pbxhost.seed")


@dataclass(frozen=True)
class Migration:
    file: str                    # in the config dir
    what: str                    # for the log: what the change does
    old: tuple[str, ...]         # the earlier release's lines, verbatim
    new: tuple[str, ...]         # the current defaults' lines
    flaw: re.Pattern[str]        # the flaw, however the lines around it were edited
    advice: str                  # what the admin changes by hand when old is not verbatim


# The seed-era [sub_sender] took the sending user after the FIRST `<` of
# MESSAGE(from); the display name before it is the phone's to choose, so a From
# of `"<sip:bob@x" <sip:alice@pbx>` sent alice's SMS with bob's number. Since
# then it is the URI after the LAST `<` (the one Asterisk authenticated).
SENDER_AFTER_LAST_LT = Migration(
    file="extensions.conf",
    what="[sub_sender] takes the sending user from the URI after the last `<` of "
         "MESSAGE(from), no longer after the first (a display name holding "
         "`<sip:other-user@` sent SMS with that user's number)",
    old=("exten => s,1,Set(LOCAL(uri)=${CUT(MESSAGE(from),<,2)})",
         " same => n,GotoIf($[${LEN(${uri})} > 0]?parse)",
         " same => n,Set(LOCAL(uri)=${MESSAGE(from)})",
         " same => n(parse),Set(sender=${CUT(CUT(uri,@,1),:,2)})"),
    new=("exten => s,1,Set(LOCAL(from)=${MESSAGE(from)})",
         " same => n,Set(LOCAL(uri)=${CUT(from,<,${FIELDQTY(from,<)})})",
         " same => n,Set(sender=${CUT(CUT(uri,@,1),:,2)})"),
    flaw=re.compile(r"^[^;\n]*CUT\(\s*MESSAGE\(from\)\s*,\s*<\s*,\s*2\s*\)", re.MULTILINE),
    advice="in [sub_sender], take the URI after the LAST `<` of MESSAGE(from), as the "
           "shipped extensions.conf does: Set(LOCAL(from)=${MESSAGE(from)}) then "
           "Set(LOCAL(uri)=${CUT(from,<,${FIELDQTY(from,<)})}), instead of "
           "${CUT(MESSAGE(from),<,2)}",
)
MIGRATIONS = (SENDER_AFTER_LAST_LT,)


@dataclass(frozen=True)
class Plan:
    text: str | None = None      # the migrated text; None: nothing to write
    warning: str | None = None   # the flaw is there, edited: the admin's to fix


def plan(m: Migration, text: str) -> Plan:
    """What M does to a file holding TEXT (pure)."""
    lines = text.splitlines(keepends=True)
    bare = [line.rstrip("\r\n") for line in lines]
    n = len(m.old)
    at = [i for i in range(len(bare) - n + 1) if tuple(bare[i:i + n]) == m.old]
    if len(at) == 1:
        i = at[0]
        eol = lines[i][len(bare[i]):] or "\n"
        migrated = "".join(lines[:i]) + "".join(f"{line}{eol}" for line in m.new) \
            + "".join(lines[i + n:])
        if not m.flaw.search(migrated):
            return Plan(text=migrated)
    if m.flaw.search(text):  # edited, twice there, or the flaw elsewhere too
        return Plan(warning=m.advice)
    return Plan()


def _keep_access(st: os.stat_result) -> Callable[[Path], None]:
    def before_rename(tmp: Path) -> None:
        if os.geteuid() == 0:  # the seed unit is root; a test is not
            os.chown(tmp, st.st_uid, st.st_gid)
    return before_rename


def apply(dest: Path, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[str]:
    """Run MIGRATIONS on DEST's files; returns the warnings (each also logged)."""
    warnings = []
    for m in migrations:
        path = dest / m.file
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("%s not checked for migrations: %s", path, exc)
            continue
        p = plan(m, text)
        if p.text is not None:
            try:
                st = path.stat()
                write_durably(path, p.text.encode("utf-8"), st.st_mode & 0o7777,
                              before_rename=_keep_access(st))
            except OSError as exc:
                warning = f"{path}: not migrated ({exc.strerror or exc}): {m.advice}"
                log.warning("%s", warning)
                warnings.append(warning)
                continue
            log.log(service.NOTICE, "%s migrated: %s", path, m.what)
        elif p.warning is not None:
            warning = f"{path}: {p.warning}"
            log.warning("%s still has a flaw that an upgrade fixes, but it was edited and is "
                        "left as it is: %s", path, p.warning)
            warnings.append(warning)
    return warnings
