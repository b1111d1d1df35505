"""Multi-part SMS (Vonage `concat-*`) parked durably in the spool until
whole, then queued in in/ as one SMS.

    parts/<set>/<n>.json   part N of a set; <set> names (interface, from,
                           to, concat-ref, concat-total)

A part is stored like any record (tmp/, then linked into place by the
spool's group commit, which refuses an existing name): a part answered 2xx
is on disk, and a part sent twice is kept once. When a set is complete the
parts are joined by `providers.Concat` (pure), the whole SMS is added to in/
(durably; its id comes from the message id of its lowest part, so joining
the same set again after a crash is a duplicate, not a second SMS), the
parts' message ids are remembered in seen/ (a late duplicate of a part is
then dropped), and only then is the set removed. A set still incomplete
after the timeout is joined the same way with `[part N of M missing]` in
each gap: never dropped. `sweep` finishes what a restart interrupted."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pbxhost.durable import fsync_dir, write_all
from pbxhost.websms import providers
from pbxhost.websms.model import INBOUND, Sms, new_id, provider_key
from pbxhost.websms.spool import Spool, SpoolError

log = logging.getLogger("pbxhost.websms.parts")
PARTS = "parts"
FORMAT = 1


@dataclass(frozen=True)
class Piece:
    """One stored part: what the webhook gave, and when."""

    iface: str
    to: str
    sender: str
    ref: str
    total: int
    number: int
    body: str
    message_id: str
    received: float

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, **vars(self)}, ensure_ascii=False,
                          separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Piece:
        raw = json.loads(data.decode("utf-8"))
        if not isinstance(raw, dict) or raw.pop("format", None) != FORMAT:
            raise ValueError("not a websms part record of format 1")
        piece = cls(**raw)
        for name in ("iface", "to", "sender", "ref", "body", "message_id"):
            if not isinstance(getattr(piece, name), str):
                raise ValueError(f"field {name} has the wrong type")
        if not (isinstance(piece.total, int) and isinstance(piece.number, int)
                and 1 <= piece.number <= piece.total):
            raise ValueError("bad part number")
        return piece

    def inbound(self) -> providers.Inbound:
        return providers.Inbound(self.to, self.sender, self.body, self.message_id,
                                 providers.Part(self.ref, self.total, self.number))


def set_name(iface: str, to: str, sender: str, ref: str, total: int) -> str:
    key = json.dumps([iface, sender, to, ref, total], ensure_ascii=False)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


class Parts:
    """The parked parts of one spool. Thread-safe: parts are added in worker
    threads (their files are written there), the event loop sweeps; one lock
    keeps a set from being joined twice."""

    def __init__(self, spool: Spool, timeout: float = 3600.0, expire: float = 3 * 86400.0
                 ) -> None:
        self.spool = spool
        self.timeout = timeout
        self.expire = expire
        self.root = spool.root / PARTS
        self.lock = threading.Lock()

    def prepare(self) -> None:
        self.root.mkdir(mode=0o770, parents=True, exist_ok=True)

    # -- storing -------------------------------------------------------------------
    def _store(self, piece: Piece) -> bool:
        """Durably parts/<set>/<n>.json; False when that part was stored before."""
        folder = self.root / set_name(piece.iface, piece.to, piece.sender, piece.ref,
                                      piece.total)
        try:
            if not folder.is_dir():
                folder.mkdir(mode=0o770, parents=True, exist_ok=True)
                fsync_dir(self.root)
            tmp = Path(f"{self.spool.root}/tmp/part.{os.getpid()}.{time.monotonic_ns()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660)
            try:
                write_all(fd, piece.to_json())
            finally:
                os.close(fd)
        except OSError as exc:
            raise SpoolError(f"cannot store a part in {folder}: {exc.strerror or exc}") from exc
        # the committer syncs the contents, links (refusing an existing name), syncs the name
        return self.spool.committer.commit(tmp, folder / f"{piece.number}.json")

    def add(self, iface: str, msg: providers.Inbound, now: float) -> tuple[bool, list[Sms]]:
        """Park part MSG (its `part` set). Returns (new, SMS now queued in in/):
        new is False for a part taken before; the list holds the whole SMS
        when this part completed its set. SpoolError: nothing was taken."""
        assert msg.part is not None
        piece = Piece(iface, msg.to, msg.sender, msg.part.ref, msg.part.total, msg.part.number,
                      msg.body, msg.message_id, now)
        with self.lock:
            if msg.message_id and self.spool.known(provider_key(iface, msg.message_id)):
                return False, []  # a late duplicate of a part already joined
            new = self._store(piece)
            folder = self.root / set_name(iface, msg.to, msg.sender, msg.part.ref,
                                          msg.part.total)
            return new, self._settle(folder, now)

    # -- joining -------------------------------------------------------------------
    def _read(self, folder: Path) -> list[Piece]:
        pieces = []
        for path in sorted(folder.glob("*.json")):
            try:
                pieces.append(Piece.from_json(path.read_bytes()))
            except (OSError, ValueError, TypeError) as exc:
                log.error("unreadable part %s (%s); moved to failed/", path, exc)
                with contextlib.suppress(OSError):
                    os.replace(path, self.spool.root / "failed" /
                               f"{folder.name}.{path.stem}.unreadable")
        return sorted(pieces, key=lambda p: p.received)

    def _settle(self, folder: Path, now: float) -> list[Sms]:
        """Join FOLDER's set if it is complete or waited TIMEOUT; the SMS queued."""
        pieces = self._read(folder)
        if not pieces:
            with contextlib.suppress(OSError):
                folder.rmdir()
            return []
        joiner = providers.Concat(timeout=self.timeout)
        whole = None
        for piece in pieces:
            whole = joiner.add(piece.inbound(), piece.received) or whole
        if whole is None:
            late = joiner.expired(now)
            if not late:
                return []
            whole = late[0]
            log.warning("multi-part SMS from %s to %s incomplete after %.0fs: delivered "
                        "with %d of %d parts", whole.sender, whole.to, self.timeout,
                        len(pieces), pieces[0].total)
        iface = pieces[0].iface
        sms_id = provider_key(iface, whole.message_id) if whole.message_id else new_id()
        sms = Sms(kind=INBOUND, id=sms_id, to=whole.to, sender=whole.sender, body=whole.body,
                  created=now, expires=now + self.expire, iface=iface,
                  provider_id=whole.message_id)
        queued = self.spool.add(sms)  # durable in in/ before the parts go
        for piece in pieces:          # late duplicates of these parts are dropped
            if piece.message_id:
                marker = self.spool.root / "seen" / provider_key(iface, piece.message_id)
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660))
        fsync_dir(self.spool.root / "seen")
        shutil.rmtree(folder, ignore_errors=True)
        fsync_dir(self.root)
        if queued:
            log.info("multi-part SMS %s from %s to %s joined from %d part(s) of %d",
                     sms.id, sms.sender, sms.to, len(pieces), pieces[0].total,
                     extra={"SMS_ID": sms.id, "SMS_TO": sms.to})
        return [sms] if queued else []

    def sweep(self, now: float | None = None) -> list[Sms]:
        """Sets that are complete (a restart came between the last part and the
        join) or older than the timeout: joined and queued."""
        now = time.time() if now is None else now
        try:
            folders = [p for p in self.root.iterdir() if p.is_dir()]
        except FileNotFoundError:
            return []
        queued: list[Sms] = []
        with self.lock:
            for folder in folders:
                queued += self._settle(folder, now)
        return queued

    def incomplete(self) -> list[tuple[str, list[Piece]]]:
        """The sets waiting for parts, each with its parts so far, oldest first.
        Read-only (for `websms queue`): an unreadable part is skipped here."""
        try:
            folders = sorted(p for p in self.root.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []
        sets = []
        for folder in folders:
            pieces = []
            for path in folder.glob("*.json"):
                with contextlib.suppress(OSError, ValueError, TypeError):
                    pieces.append(Piece.from_json(path.read_bytes()))
            if pieces:
                sets.append((folder.name, sorted(pieces, key=lambda p: p.number)))
        return sorted(sets, key=lambda s: min(p.received for p in s[1]))

    def waiting(self) -> int:
        """Sets waiting for parts."""
        try:
            return sum(1 for p in self.root.iterdir() if p.is_dir())
        except FileNotFoundError:
            return 0
