"""The delivery worker: spooled SMS → every reachable phone of the user,
over AMI `MessageSend` (one per contact, so each phone gets it), in parts
that fit an AMI line. Asterisk tells nothing about the phone's final
answer, so "delivered" means: MessageSend accepted for each contact that
Asterisk reports reachable. With none reachable the SMS waits, and goes out
when a ContactStatus event says a phone is back; after [astqueue] expire it
is moved to failed/ and reported.

Who is `to`? A number is looked up as a hint in [astqueue] hint_context
(the wizard's hint_exten: `PJSIP/john.doe`), else it is taken as an
endpoint name. An endpoint's AORs and their contacts come from the
PJSIP_ENDPOINT/PJSIP_AOR/PJSIP_CONTACT functions (AMI Getvar), then
follow ContactStatus events.

The spool's writes that fsync (an SMS parked in in/, progress saved, a move
to failed/, the sync of a round's removals) run in threads: the event loop
(webhook, FastAGI, watchdog) never waits for the disk. Each is awaited
before the SMS is touched again, so the order of a delivery's steps is
the one a synchronous spool would give."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pbxhost import service
from pbxhost.ami import AmiError
from pbxhost.websms import text
from pbxhost.websms.aio import nap, stop_if_cancelled
from pbxhost.websms.config import Queue
from pbxhost.websms.contacts import Ami, Contact, Directory, hint_candidates, hint_endpoints

__all__ = ["Delivery", "Tally", "destinations", "hint_candidates", "hint_endpoints"]
from pbxhost.websms.model import INBOUND, Sms
from pbxhost.websms.spool import Spool, SpoolError

log = logging.getLogger("pbxhost.websms.deliver")
TICK = 1.0
BATCH = 64          # SMS whose MessageSend actions are in flight together
RETRY_REFUSED = 10.0  # seconds before a contact that refused a MessageSend is tried again
SET_ASIDE = "set aside"  # the error of an SMS whose number no user has
PAUSE = 1.0           # seconds without AMI actions after one failed (the session recovers)
BOOT_WAIT = 10.0      # seconds to wait for FullyBooted after an AMI login


@dataclass
class Tally:
    """Counters for the daemon's status line."""

    delivered: int = 0
    expired: int = 0
    messages_sent: int = 0   # MessageSend actions (parts × contacts)


def destinations(endpoint: str, uri: str) -> str:
    return f"pjsip:{endpoint}/{uri}"


class Delivery:
    def __init__(self, queue: Queue, spool: Spool, ami: Ami,
                 clock: Callable[[], float] = time.time) -> None:
        self.queue, self.spool, self.ami, self.clock = queue, spool, ami, clock
        self.directory = Directory(queue, ami, clock)      # who a number is, their phones
        self.pending: dict[str, Sms] = {}
        self.due: set[str] = set()
        self.waiting: dict[str, set[str]] = {}             # AOR → ids with no phone
        self.wakeup = asyncio.Event()
        self.tally = Tally()
        self.connected = False
        self.next_sweep = 0.0
        self.next_expiry = 0.0
        self.finished = 0  # removals not yet synced
        self.retry_at: dict[str, float] = {}  # a refused MessageSend is tried again then
        self.paused_until = 0.0                # after an AMI failure
        self.booted = False                    # Asterisk said FullyBooted on this session
        self.booted_by = 0.0                   # ... or we stop waiting for it then

    # -- input -------------------------------------------------------------------
    def add(self, sms: Sms) -> None:
        """A stored SMS to deliver (call in the event loop's thread)."""
        self.add_many([sms])

    def add_many(self, batch: list[Sms]) -> None:
        for sms in batch:
            self.pending[sms.id] = sms
            self.due.add(sms.id)
        self.wakeup.set()

    def load(self) -> int:
        self.add_many(self.spool.pending(INBOUND))
        return len(self.pending)

    def flush(self) -> None:
        """Try everything now (`websms queue flush`)."""
        self.directory.forget_targets()
        self.due.update(self.pending)
        self.wakeup.set()

    def on_state(self, state: str) -> None:
        self.connected = state == "connected"
        self.paused_until = 0.0
        # whatever we knew of contacts may be stale after a gap in the events
        self.directory.forget()
        # A restarting Asterisk takes AMI logins before its dialplan and PJSIP are
        # up: deliver once it says FullyBooted. It says so at login when it already
        # is, and that event may come just before this call.
        if self.connected:
            self.booted_by = self.clock() + BOOT_WAIT
            if self.booted:
                self.flush()
        else:
            self.booted = False

    def on_event(self, event: Any) -> None:
        if event.get("Event") == "FullyBooted":
            self.booted = True
            if self.connected:
                self.flush()
            return
        back = self.directory.on_event(event)
        if back is not None:
            ids = self.waiting.pop(back, set()) & self.pending.keys()
            if ids:
                log.info("a phone of %s is back: delivering %d waiting SMS", back, len(ids))
                self.due.update(ids)
                self.wakeup.set()

    # -- sending ---------------------------------------------------------------------
    async def _message_send(self, sms: Sms, contact: Contact, part: str) -> bool:
        reply = await self.ami.action({
            "Action": "MessageSend",
            "Destination": destinations(contact.endpoint, contact.uri),
            "From": sms.sender,
            "Base64Body": base64.b64encode(part.encode("utf-8")).decode("ascii"),
        }, timeout=self.queue.waittime)
        if reply.get("Response") != "Success":
            log.warning("MessageSend to %s refused: %s", contact.uri, reply.get("Message"))
            return False
        self.tally.messages_sent += 1
        return True

    async def _plan(self, sms: Sms) -> list[Contact] | None:
        """The contacts SMS goes to now; None when it has to wait (or nobody is known)."""
        target = await self.directory.resolve(sms.to)
        if target is None:
            if not sms.error.startswith(SET_ASIDE):
                sms.error = f"{SET_ASIDE}: no user has the number {sms.to}"
                log.warning("SMS %s from %s to %s set aside: no user has this number (no hint "
                            "in %s, no endpoint); looked up again at most once a minute "
                            "until it expires", sms.id, sms.sender, sms.to,
                            self.queue.hint_context, extra={"SMS_ID": sms.id, "SMS_TO": sms.to})
            # a dialplan reload may add the user: tried again when the number may be
            # looked up again, not before (one lookup serves every SMS to it)
            self.retry_at[sms.id] = self.directory.unknown_until(sms.to)
            await self._park(sms)
            return None
        contacts = [c for c in await self.directory.reachable(target)
                    if c.uri not in sms.delivered]
        if not contacts and not sms.delivered:
            for aor in target.aors:
                self.waiting.setdefault(aor, set()).add(sms.id)
            log.info("SMS %s to %s waits: no reachable phone", sms.id, sms.to)
            await self._park(sms)
            return None
        return contacts

    async def attempt_many(self, batch: list[Sms]) -> None:
        """Every reachable contact not served yet, for a batch of SMS; an SMS is done
        when ≥ 1 contact got it. The MessageSend actions of the whole batch go out
        at once, in order (one AMI session keeps it), and are answered together."""
        plans: list[tuple[Sms, list[str], list[tuple[Contact, list[asyncio.Future[bool]]]]]] = []
        for sms in batch:
            contacts = await self._plan(sms)
            if contacts is None:
                continue
            parts = text.split_parts(sms.body, self.queue.part_bytes)
            sends = [(c, [asyncio.ensure_future(self._message_send(sms, c, p)) for p in parts])
                     for c in contacts]
            plans.append((sms, parts, sends))
        trouble: BaseException | None = None
        for sms, parts, sends in plans:
            served = []
            for contact, futures in sends:
                results = await asyncio.gather(*futures, return_exceptions=True)
                trouble = trouble or next((r for r in results if isinstance(r, BaseException)),
                                          None)
                if all(r is True for r in results):
                    served.append(contact)
            sms.delivered += [c.uri for c in served if c.uri not in sms.delivered]
            if sms.delivered and len(served) == len(sends):
                self._finish(sms, parts)
                continue
            self.retry_at[sms.id] = self.clock() + RETRY_REFUSED
            if served:  # progress survives a restart: sent once per contact
                await asyncio.to_thread(self.spool.save, sms)
            else:
                await self._park(sms)
        if trouble is not None:
            raise trouble

    async def _park(self, sms: Sms) -> None:
        """spool.park in a thread, when there is something to move: an SMS already
        in in/ (most of those tried again) costs no hand-off."""
        if self.spool.journaled_now(sms.id):
            await asyncio.to_thread(self.spool.park, sms)

    def set_aside(self) -> int:
        """SMS held because no user has their number (the status line)."""
        return sum(1 for sms in self.pending.values() if sms.error.startswith(SET_ASIDE))

    def _finish(self, sms: Sms, parts: list[str]) -> None:
        # no fsync here: the removal is synced once per round, in step()
        self.spool.done(sms, sync=False)
        self.finished += 1
        self.pending.pop(sms.id, None)
        self.tally.delivered += 1
        log.log(service.NOTICE, "SMS %s from %s delivered to %s on %d phone(s)%s", sms.id,
                sms.sender, sms.to, len(sms.delivered),
                f" in {len(parts)} parts" if len(parts) > 1 else "",
                extra={"SMS_ID": sms.id, "SMS_TO": sms.to})

    # -- expiry ------------------------------------------------------------------------
    async def expire(self) -> None:
        now = self.clock()
        for sms in [s for s in self.pending.values() if s.expires <= now and not s.delivered]:
            reason = (f"expired after {int(now - sms.created)}s: "
                      f"{sms.error or 'no phone of the user was reachable'}")
            # never raises: a fault defers the move. Still pending meanwhile: the
            # rescan of in/ must not take it up again before it is in failed/
            kept = await asyncio.to_thread(self.spool.fail, sms, reason)
            self.pending.pop(sms.id, None)
            self.tally.expired += 1
            log.error("SMS %s from %s to %s not delivered: %s (%s)", sms.id,
                      sms.sender, sms.to, reason,
                      f"kept in {self.spool.root / 'failed'}" if kept else
                      "kept where it is until failed/ can be written",
                      extra={"SMS_ID": sms.id, "SMS_TO": sms.to})

    # -- the loop ----------------------------------------------------------------------
    async def step(self) -> bool:
        """Attempt the due messages (oldest first), expire, sweep. False when
        delivery is paused (AMI down or failing): then wait, never spin."""
        now = self.clock()
        if now >= self.next_sweep:
            self.next_sweep = now + self.queue.retrytime
            self.directory.forget_targets()
            self.due.update(self.pending)
        if now >= self.next_expiry:  # once a tick, not per message: the backlog may be long
            self.next_expiry = now + TICK
            await self.expire()
            again = [i for i, at in self.retry_at.items() if at <= now]
            for sms_id in again:
                del self.retry_at[sms_id]
            self.due.update(i for i in again if i in self.pending)
        if self.connected and not self.booted and now >= self.booted_by:
            self.booted = True  # no FullyBooted came: go ahead anyway
            self.flush()
        if not self.connected or not self.booted or now < self.paused_until:
            return False
        due = sorted((self.pending[i] for i in self.due if i in self.pending),
                     key=lambda s: (s.created, s.id))
        self.due.clear()
        try:
            for start in range(0, len(due), BATCH):
                batch = due[start:start + BATCH]
                try:
                    await self.attempt_many(batch)
                except AmiError as exc:
                    log.warning("delivery paused for %.0fs: %s", PAUSE, exc)
                    self.paused_until = self.clock() + PAUSE
                    self.due.update(s.id for s in due if s.id in self.pending)
                    return False
                except SpoolError as exc:
                    log.error("spool: %s", exc)
                await asyncio.sleep(0)  # the AMI reader and the other units run in between
        finally:
            await self._sync_removals()
        return True

    async def _sync_removals(self) -> None:
        if self.finished:
            self.finished = 0
            try:
                if self.spool.removals_need_disk(INBOUND):
                    await asyncio.to_thread(self.spool.sync_removals, INBOUND)
                else:  # the webhook's SMS, delivered: the journal's marks only, no
                    # fsync; here, as a thread's hand-off per round cost 25 % of
                    # the webhook's rate (bench/websms_bench.py)
                    self.spool.sync_removals(INBOUND, fsync=False)
            except OSError as exc:
                log.warning("spool not synced after deliveries: %s", exc)

    async def run(self) -> None:
        while True:
            stop_if_cancelled()
            try:
                going = await self.step()
            except (OSError, SpoolError) as exc:  # the spool's disk; the next round retries
                log.error("delivery round failed: %s", exc)
                going = False
            self.wakeup.clear()
            if going and self.due:
                await asyncio.sleep(0)
                continue
            await nap(self.wakeup, TICK)
