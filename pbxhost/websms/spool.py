"""The durable queue of websms: one file per message under the spool
directory (default /srv/var/spool/websms).

    in/       SMS from the ITSP waiting for a phone      <id>.json
    out/      SMS from phones waiting for the ITSP       <id>.json
    failed/   given up (expired or refused), kept for `websms queue`
    archive/  handled, when [astqueue] archive = yes
    seen/     provider message ids already taken (empty files), for duplicates
    tmp/      files being written
    journal/  SMS from the webhook, appended in batches (pbxhost.websms.journal)
    rate/     the plain AGI fallback's per-user rate (pbxhost.websms.ratestore)

Modes are 0660/0770, narrowed by the umask (the unit's UMask=0007): the
group (websms, which Asterisk's user joins) may queue too, for the plain AGI
script; nobody else reads a message.

A new record is written to tmp/ and made durable with the records written
at the same time (group commit): a committer thread takes every record
waiting, makes their contents durable with one syncfs(2), links each into
place (link refuses an existing name: that is how a provider id taken twice
is caught), makes the names durable with a second syncfs, and only then
answers the writers. Two syncs per batch instead of two per message; a
record is either complete under its name or absent. Removing a handled
record is not synced at once (a removal lost in a crash means a second
delivery, never a lost one); the delivery worker syncs once per round.

Every method that fsyncs (add, save, park, fail, done with sync,
sync_removals, retry_deferred) blocks its caller on the disk: the daemon
calls them in threads (asyncio.to_thread), never on its event loop. They
may run in several threads at once; what they share (the journal's
bookkeeping, the fault memory below) is guarded or changed one dictionary
operation at a time.

The webhook's SMS take a faster way in the daemon: the journal, one append
per batch. An SMS there that has to wait for a phone is moved into in/
(park), so the journal only holds what is going out now; in/ and the
journal together are the queue for phones, and a file in in/ wins over a
record of the same id in the journal (a crash in the middle of a move)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pbxhost import service
from pbxhost.durable import fsync_dir, write_all, write_durably
from pbxhost.websms import journal as journal_mod
from pbxhost.websms.journal import Journal, JournalError
from pbxhost.websms.model import INBOUND, OUTBOUND, Sms, valid_id

log = logging.getLogger("pbxhost.websms.spool")
DIRS = (INBOUND, OUTBOUND, "failed", "archive", "seen", "tmp")
FLUSH_REQUEST = "flush"


class SpoolError(Exception):
    """A record could not be stored (disk full, permissions, ...); nothing was left behind."""


_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path: Path) -> None:
    """Flush the file system holding PATH (data and metadata of every file on it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


@dataclass
class _Entry:
    tmp: Path
    final: Path
    done: threading.Event = field(default_factory=threading.Event)
    linked: bool = False
    error: SpoolError | None = None


class Committer:
    """The group commit: writers wait while one thread makes a batch durable."""

    MAX_BATCH = 512

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cond = threading.Condition()
        self.queue: list[_Entry] = []
        self.thread: threading.Thread | None = None

    def commit(self, tmp: Path, final: Path) -> bool:
        """True once FINAL durably holds TMP's record; False if FINAL existed."""
        entry = _Entry(tmp, final)
        with self.cond:
            self.queue.append(entry)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="spool-commit",
                                               daemon=True)
                self.thread.start()
            self.cond.notify()
        entry.done.wait()
        if entry.error is not None:
            raise entry.error
        return entry.linked

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.queue:
                    self.cond.wait()
                batch, self.queue = self.queue[:self.MAX_BATCH], self.queue[self.MAX_BATCH:]
            self._commit(batch)
            for entry in batch:
                entry.done.set()

    def _commit(self, batch: list[_Entry]) -> None:
        try:
            syncfs(self.root)  # the records' contents, before any gets a name
        except OSError as exc:
            self._fail(batch, exc)
            return
        for entry in batch:
            try:
                os.link(entry.tmp, entry.final)
                entry.linked = True
            except FileExistsError:
                pass  # a duplicate: the first one stays
            except OSError as exc:
                entry.error = SpoolError(f"cannot store {entry.final}: {exc.strerror or exc}")
                entry.error.__cause__ = exc
            finally:
                with contextlib.suppress(OSError):
                    entry.tmp.unlink()
        try:
            syncfs(self.root)  # the names
        except OSError as exc:
            self._fail([e for e in batch if e.linked], exc, unlink=True)

    @staticmethod
    def _fail(batch: list[_Entry], exc: OSError, unlink: bool = False) -> None:
        for entry in batch:
            with contextlib.suppress(OSError):
                (entry.final if unlink else entry.tmp).unlink()
            entry.linked = False
            entry.error = SpoolError(f"cannot sync the spool: {exc.strerror or exc}")
            entry.error.__cause__ = exc


class Spool:
    def __init__(self, root: Path, archive: bool = False) -> None:
        self.root = root
        self.archive = archive
        self.committer = Committer(root)
        self.journal: Journal | None = None  # the daemon's, once open_journal()
        self._tmpdir = str(root / "tmp")
        # Storage faults (a full, read-only or refused directory) never stop delivery
        # nor repeat it: what could not be written is remembered here, in memory,
        # and written by retry_deferred() once the directory takes it again.
        self.faults: dict[str, str] = {}              # area ("failed/") → the error
        self.hidden: set[str] = set()                  # handled; its file not moved yet
        self.unmarked: set[str] = set()                # taken; its seen/ marker not written
        self.deferred: dict[tuple[str, str], tuple[Callable[[], None], str]] = {}
        # directories whose removals (or new seen/ markers) sync_removals() has not
        # synced yet: it fsyncs those only (an SMS that only left the journal, the
        # webhook's usual one, costs no directory fsync)
        self._unsynced: set[str] = set()
        self._unsynced_lock = threading.Lock()

    def prepare(self, clean: bool = True) -> None:
        """Create the directories; drop what a crash left in tmp/ (only the daemon
        cleans: other processes may be writing there)."""
        for name in DIRS:
            (self.root / name).mkdir(mode=0o770, parents=True, exist_ok=True)
        if not clean:
            return
        for stale in (self.root / "tmp").iterdir():
            with contextlib.suppress(OSError):
                stale.unlink()

    def open_journal(self) -> list[Sms]:
        """Take the webhook's SMS through the journal from now on (one process
        only: the daemon). Returns the records earlier runs left there."""
        self.journal = Journal(self.root / "journal")
        held = []
        for sms in self.journal.open():
            if self.known(sms.id):  # moved into a file, or handled, just before a crash
                self.journal.release(sms.id)
            else:
                held.append(sms)
        self.journal.flush()
        return held

    def journaled(self) -> list[Sms]:
        """The journal's records for phones, read-only (for `websms queue`)."""
        return journal_mod.read_live(self.root / "journal")

    # -- writing ---------------------------------------------------------------
    def _write_tmp(self, sms: Sms) -> Path:
        """SMS in a new file of tmp/, not synced: for the group commit (which
        syncs a whole batch at once) and archive copies. Single records that
        must be durable on their own go through _write (durable.write_durably)."""
        # plain strings on this path: pathlib costs more than the write
        tmp = Path(f"{self._tmpdir}/{sms.id}.{os.getpid()}.{time.monotonic_ns()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660)
            try:
                write_all(fd, sms.to_json())
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise SpoolError(f"cannot write {tmp}: {exc.strerror or exc}") from exc
        return tmp

    def _path(self, where: str, sms_id: str) -> Path:
        return self.root / where / f"{sms_id}.json"

    def known(self, sms_id: str) -> bool:
        """Taken before: pending, handled with a provider id, or failed."""
        return (sms_id in self.unmarked or sms_id in self.hidden
                or (self.root / "seen" / sms_id).exists()
                or self._path("failed", sms_id).exists()
                or self._path(INBOUND, sms_id).exists() or self._path(OUTBOUND, sms_id).exists())

    # -- storage faults -----------------------------------------------------------
    def _fault(self, area: str, exc: BaseException) -> None:
        cause = exc.__cause__ if isinstance(exc, SpoolError) and exc.__cause__ else exc
        text = getattr(cause, "strerror", None) or str(cause)
        if self.faults.get(area) != text:  # once per fault, not per SMS
            log.error("spool %s cannot be written (%s): delivery goes on; "
                      "retried until it can", self.root / area, text)
        self.faults[area] = text

    def _defer(self, key: tuple[str, str], area: str, op: Callable[[], None],
               exc: BaseException) -> None:
        self._fault(area, exc)
        self.deferred[key] = (op, area)

    def retry_deferred(self) -> None:
        """Write what a storage fault held back; a fault clears once nothing of
        its area is left (the daemon's housekeeping calls this, in a thread)."""
        for key, (op, area) in list(self.deferred.items()):
            try:
                op()
            except (OSError, SpoolError) as exc:
                self._fault(area, exc)
                continue
            self.deferred.pop(key, None)
        for area in list(self.faults):
            if not any(a == area for _, a in list(self.deferred.values())):
                try:  # nothing held back: the directory only has to sync again
                    fsync_dir(self.root / area.rstrip("/"))
                except OSError:
                    continue
                if self.faults.pop(area, None) is None:
                    continue  # cleared meanwhile (the journal's, by an append)
                log.log(service.NOTICE, "spool %s written again: fault cleared",
                        self.root / area)

    def add(self, sms: Sms) -> bool:
        """Store a new record durably; False (and nothing stored) for a known id."""
        if sms.provider_id and self.known(sms.id):  # a fresh random id cannot be known
            return False
        tmp = self._write_tmp(sms)  # the committer syncs a whole batch at once
        return self.committer.commit(tmp, self._path(sms.kind, sms.id))

    async def accept(self, sms: Sms) -> bool:
        """An SMS for phones, durable in the journal (in the daemon) or else in
        in/; False for a known id, and then nothing is stored."""
        if self.journal is None:
            return await asyncio.to_thread(self.add, sms)
        if sms.provider_id and self.known(sms.id):
            return False
        try:
            taken = await self.journal.append(sms)
        except JournalError as exc:
            self._fault("journal/", exc.__cause__ or exc)
            raise SpoolError(str(exc)) from exc.__cause__
        if self.faults and self.faults.pop("journal/", None) is not None:
            log.log(service.NOTICE, "spool %s written again: fault cleared", self.root / "journal")
        return taken

    def journaled_now(self, sms_id: str) -> bool:
        """The journal holds SMS_ID (park() would move it into in/)."""
        return self.journal is not None and self.journal.holds(sms_id)

    def park(self, sms: Sms) -> None:
        """SMS waits (no phone now): from the journal into in/, so that the
        journal keeps only what goes out at once. Kept in the journal, where it
        is durable too, when in/ cannot take it now."""
        if not self.journaled_now(sms.id):
            return
        try:
            self.save(sms)
        except SpoolError as exc:
            log.warning("SMS %s stays in the journal: %s", sms.id, exc)

    def _release(self, sms: Sms, flush: bool = True) -> bool:
        """SMS leaves the journal, if it is there; its mark is written now unless
        FLUSH is False (then at the next sync_removals())."""
        if self.journal is None or not self.journal.release(sms.id):
            return False
        if flush:
            self.journal.flush()
        return True

    def _write(self, final: Path, sms: Sms) -> None:
        """FINAL holds SMS durably (durable.write_durably, its temp file in tmp/)."""
        try:
            write_durably(final, sms.to_json(), 0o660, tmpdir=self.root / "tmp")
        except OSError as exc:
            raise SpoolError(f"cannot write {final}: {exc.strerror or exc}") from exc

    def save(self, sms: Sms) -> None:
        """Replace the pending record of SMS (delivery progress, next attempt)."""
        self._write(self._path(sms.kind, sms.id), sms)
        self._release(sms)

    def _changed(self, *names: str) -> None:
        with self._unsynced_lock:
            self._unsynced.update(names)

    def _mark(self, sms_id: str) -> None:
        marker = self.root / "seen" / sms_id
        with contextlib.suppress(FileExistsError):
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660))
            self._changed("seen")
        self.unmarked.discard(sms_id)

    def _remember(self, sms: Sms) -> None:
        """The provider id is taken for good. Before the record goes: a crash
        between keeps both, not neither. When seen/ cannot take the marker, the
        id is remembered in memory (a duplicate is still refused) until it can."""
        if not sms.provider_id:
            return
        try:
            self._mark(sms.id)
        except OSError as exc:
            self.unmarked.add(sms.id)
            self._defer(("seen", sms.id), "seen/", lambda: self._mark(sms.id), exc)

    def _remove(self, sms: Sms, flush: bool) -> None:
        pending = self._path(sms.kind, sms.id)
        if self._release(sms, flush=flush):  # no file in in/: an archive copy is written anew
            if self.archive:
                os.replace(self._write_tmp(sms), self._path("archive", sms.id))
                self._changed("archive")
        elif self.archive:
            os.replace(pending, self._path("archive", sms.id))
            self._changed("archive", sms.kind)
        else:
            with contextlib.suppress(FileNotFoundError):
                pending.unlink()
                self._changed(sms.kind)
        self.hidden.discard(sms.id)

    def done(self, sms: Sms, sync: bool = True) -> None:
        """Handled: remembered (provider id) first, then removed or archived.
        sync=False leaves the removal to the next sync_removals(). A removal the
        disk refuses is held in memory (the SMS is not offered again) and retried."""
        self._remember(sms)
        try:
            self._remove(sms, flush=sync)
        except (OSError, SpoolError) as exc:
            self.hidden.add(sms.id)
            self._defer(("done", sms.id), f"{sms.kind}/", lambda: self._remove(sms, True), exc)
            return
        if sync:
            self.sync_removals(sms.kind)

    def removals_need_disk(self, kind: str) -> bool:
        """sync_removals(KIND) would fsync: a directory changed, or a journal
        segment is left to remove. False: it only writes the journal's marks
        (to the page cache), which the event loop may do itself."""
        with self._unsynced_lock:
            if any(n in self._unsynced for n in ("seen", "archive", kind)):
                return True
        return self.journal is not None and self.journal.drained()

    def sync_removals(self, kind: str, fsync: bool = True) -> None:
        """Make the removals since the last call durable (the directories they
        changed, the journal's marks). FSYNC False: the marks only, nothing
        fsynced (what removals_need_disk() found nothing else for)."""
        if not fsync:
            if self.journal is not None:
                self.journal.flush(drop=False)
            return
        with self._unsynced_lock:
            names = [n for n in ("seen", "archive", kind) if n in self._unsynced]
            self._unsynced.difference_update(names)
        try:
            while names:
                fsync_dir(self.root / names[0])
                names.pop(0)
            if self.journal is not None:
                self.journal.flush()
        except OSError as exc:  # the removals happened; only their durability waits
            self._changed(*names)  # synced again next time
            self._fault(f"{kind}/", exc)

    def _to_failed(self, sms: Sms) -> None:
        self._write(self._path("failed", sms.id), sms)
        with contextlib.suppress(FileNotFoundError):
            self._path(sms.kind, sms.id).unlink()
        fsync_dir(self.root / sms.kind)
        self._release(sms)
        self.hidden.discard(sms.id)

    def fail(self, sms: Sms, reason: str) -> bool:
        """Given up: kept in failed/ with the reason, for `websms queue`. False
        when failed/ cannot take it now: then it stays where it is, is not
        offered again (hidden), and is moved once failed/ takes it."""
        sms.error = reason
        self._remember(sms)
        try:
            self._to_failed(sms)
        except (OSError, SpoolError) as exc:
            self.hidden.add(sms.id)
            self._defer(("fail", sms.id), "failed/", lambda: self._to_failed(sms), exc)
            return False
        return True

    # -- reading ---------------------------------------------------------------
    def _records(self, where: str) -> Iterator[Sms]:
        folder = self.root / where
        if not folder.is_dir():
            return
        for path in folder.iterdir():
            if path.suffix != ".json" or not valid_id(path.stem) or path.stem in self.hidden:
                continue
            try:
                sms = Sms.from_json(path.read_bytes())
            except FileNotFoundError:
                continue  # handled meanwhile
            except (OSError, ValueError) as exc:
                self._quarantine(path, str(exc))
                continue
            yield sms

    def _quarantine(self, path: Path, why: str) -> None:
        log.error("unreadable spool file %s (%s); moved to failed/", path, why)
        with contextlib.suppress(OSError):
            os.replace(path, self.root / "failed" / f"{path.stem}.unreadable")

    def ids(self, kind: str) -> set[str]:
        """Ids of the pending records of KIND, from names alone (cheap)."""
        try:
            names = os.listdir(self.root / kind)
        except FileNotFoundError:
            return set()
        return {n[:-5] for n in names
                if n.endswith(".json") and valid_id(n[:-5]) and n[:-5] not in self.hidden}

    def pending(self, kind: str) -> list[Sms]:
        return sorted(self._records(kind), key=lambda s: (s.created, s.id))

    def failed(self) -> list[Sms]:
        return sorted(self._records("failed"), key=lambda s: (s.created, s.id))

    def load(self, kind: str, sms_id: str) -> Sms | None:
        try:
            return Sms.from_json(self._path(kind, sms_id).read_bytes())
        except (OSError, ValueError):
            return None

    # -- housekeeping ------------------------------------------------------------
    def prune_seen(self, max_age: float, now: float | None = None) -> int:
        """Forget provider ids older than MAX_AGE seconds."""
        limit = (now if now is not None else time.time()) - max_age
        removed = 0
        for marker in (self.root / "seen").iterdir():
            with contextlib.suppress(OSError):
                if marker.stat().st_mtime < limit:
                    marker.unlink()
                    removed += 1
        return removed

    def request_flush(self) -> None:
        """Ask the running daemon to retry everything now (`websms queue flush`)."""
        path = self.root / FLUSH_REQUEST
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o660)
        os.close(fd)

    def take_flush_request(self) -> bool:
        try:
            (self.root / FLUSH_REQUEST).unlink()
            return True
        except FileNotFoundError:
            return False


def is_disk_full(exc: BaseException) -> bool:
    cause = exc.__cause__
    return isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)
