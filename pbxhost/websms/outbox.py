"""The retry worker: SMS from phones to the ITSP. Every SMS is spooled
(out/) before the first attempt; a temporary failure (ITSP unreachable,
429, 5xx) is retried with exponential backoff (backoff_min doubling up to
backoff_max, ±10 % jitter) until [websms] expire; a permanent failure, or
giving up, moves it to failed/ and tells the sending user by SIP MESSAGE."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable

from pbxhost import service
from pbxhost.websms import send, text
from pbxhost.websms.aio import nap, stop_if_cancelled
from pbxhost.websms.config import WebsmsConfig
from pbxhost.websms.model import INBOUND, OUTBOUND, Sms, new_id
from pbxhost.websms.send import Outcome, Result
from pbxhost.websms.spool import Spool, SpoolError

log = logging.getLogger("pbxhost.websms.outbox")
TICK = 1.0
RESCAN = 2.0          # seconds between looks for records written by other processes
PARALLEL = 4          # attempts in flight at once
Sender = Callable[[send.Outgoing, str, str, str], Result]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def backoff(attempts: int, low: float, high: float, rng: random.Random | None = None) -> float:
    """Seconds before attempt ATTEMPTS + 1: low, 2·low, 4·low, … ≤ high, ±10 %."""
    base = min(high, low * 2 ** max(0, attempts - 1))
    return base * (rng or random).uniform(0.9, 1.1)


def outgoing(to: str, sender: str, body: str, index: str, user: str, now: float,
             lifetime: float) -> Sms:
    return Sms(kind=OUTBOUND, id=new_id(), to=to, sender=sender, body=body, created=now,
               expires=now + lifetime, iface=index, user=user or sender)


def notice_for(sms: Sms, reason: str, now: float, lifetime: float) -> Sms:
    """The SIP MESSAGE that tells the sending user, from the number it wrote to."""
    body = f"SMS to {sms.to} not sent: {reason[:300]}"
    return Sms(kind=INBOUND, id=new_id(), to=sms.user or sms.sender, sender=sms.to, body=body,
               created=now, expires=now + lifetime, notice=True)


class Outbox:
    def __init__(self, cfg: WebsmsConfig, spool: Spool, deliver_notice: Callable[[Sms], None],
                 sender: Sender = send.send, clock: Callable[[], float] = time.time,
                 queue_only: bool = False) -> None:
        """QUEUE_ONLY: spool what is submitted for websmsd and never call the ITSP
        (the plain AGI script as Asterisk's user, without the credentials)."""
        self.cfg, self.spool, self.deliver_notice = cfg, spool, deliver_notice
        self.queue_only = queue_only
        self.sender, self.clock = sender, clock
        self.pending: dict[str, Sms] = {}
        self.inflight: set[str] = set()
        self.wakeup = asyncio.Event()
        self.next_rescan = 0.0
        self.slots = asyncio.Semaphore(PARALLEL)
        self.tasks: set[asyncio.Future[str]] = set()

    # -- intake ------------------------------------------------------------------
    def load(self) -> int:
        self.rescan()
        return len(self.pending)

    def rescan(self) -> None:
        """Pick up what `websms` by hand, the plain AGI script or a killed websmsd left."""
        for sms in self.spool.pending(OUTBOUND):
            if sms.id not in self.pending:
                if sms.owner and not alive(sms.owner):
                    sms.next_try, sms.owner = 0.0, 0  # its attempt died with its process
                self.pending[sms.id] = sms
                self.wakeup.set()

    def flush(self) -> None:
        """Everything queued is due now, including what other processes just left."""
        self.rescan()
        for sms in self.pending.values():
            sms.next_try = 0.0
        self.wakeup.set()

    async def submit(self, sms: Sms, wait: float) -> str:
        """Spool, then try at once; QUEUED when not settled within WAIT seconds."""
        if self.queue_only:  # due at once, no lease: websmsd takes it within seconds
            await asyncio.to_thread(self.spool.add, sms)
            return "QUEUED"
        # a lease: other processes leave it alone while we try (unless we die)
        sms.next_try, sms.owner = self.clock() + self.cfg.queue.waittime, os.getpid()
        await asyncio.to_thread(self.spool.add, sms)  # the loop serves webhooks meanwhile
        self.pending[sms.id] = sms
        task = self._spawn(sms)
        try:
            return await asyncio.wait_for(asyncio.shield(task), wait) if wait > 0 else "QUEUED"
        except TimeoutError:
            return "QUEUED"

    # -- attempts ------------------------------------------------------------------
    async def attempt(self, sms: Sms) -> str:
        """One try; returns SENT, QUEUED (retry later) or FAILED."""
        if sms.id in self.inflight:
            return "QUEUED"
        self.inflight.add(sms.id)
        try:
            async with self.slots:
                return await self._attempt(sms)
        except (OSError, SpoolError) as exc:
            log.error("SMS %s: attempt not recorded (%s); retried later", sms.id, exc)
            sms.next_try = self.clock() + self.cfg.retry.backoff_min
            return "QUEUED"
        finally:
            self.inflight.discard(sms.id)

    async def _attempt(self, sms: Sms) -> str:
        try:
            iface = self.cfg.outgoing_for(sms.iface)
        except KeyError as exc:
            return await self.give_up(sms, str(exc.args[0]))
        sms.attempts += 1
        result = await asyncio.to_thread(self.sender, iface, sms.to, sms.sender, sms.body)
        if result.outcome is Outcome.SENT:
            await asyncio.to_thread(self.spool.done, sms)  # its fsyncs off the event loop
            self.pending.pop(sms.id, None)
            log.log(service.NOTICE, "SMS %s from %s to %s sent via %s (attempt %d, %s)",
                    sms.id, sms.sender, sms.to, iface.name or "default", sms.attempts,
                    text.segments(sms.body), extra={"SMS_ID": sms.id, "SMS_TO": sms.to})
            return "SENT"
        if result.outcome is Outcome.FAILED:
            return await self.give_up(sms, result.detail)
        return await self.later(sms, result.detail)

    # later, give_up and tell write durably: in a thread, so that the event loop
    # (webhook, delivery, watchdog) never waits for an fsync of theirs
    async def later(self, sms: Sms, why: str) -> str:
        now = self.clock()
        delay = backoff(sms.attempts, self.cfg.retry.backoff_min, self.cfg.retry.backoff_max)
        if now + delay > sms.expires:
            return await self.give_up(sms, f"gave up after {sms.attempts} attempts: {why}")
        sms.next_try, sms.error, sms.owner = now + delay, why, 0
        try:
            await asyncio.to_thread(self.spool.save, sms)
        except SpoolError as exc:
            log.error("SMS %s: retry state not saved: %s", sms.id, exc)
        log.warning("SMS %s to %s not sent (%s); attempt %d again in %.0fs", sms.id, sms.to,
                    why, sms.attempts + 1, delay, extra={"SMS_ID": sms.id})
        return "QUEUED"

    async def give_up(self, sms: Sms, why: str) -> str:
        self.pending.pop(sms.id, None)
        # never raises: a fault defers the move (and the SMS is not tried again)
        await asyncio.to_thread(self.spool.fail, sms, why)
        log.error("SMS %s from %s to %s failed: %s; telling %s", sms.id, sms.sender, sms.to,
                  why, sms.user or sms.sender, extra={"SMS_ID": sms.id, "SMS_TO": sms.to})
        await self.tell(sms, why)
        return "FAILED"

    async def tell(self, sms: Sms, why: str) -> None:
        notice = notice_for(sms, why, self.clock(), self.cfg.queue.expire)
        try:
            await asyncio.to_thread(self.spool.add, notice)
        except SpoolError as exc:
            log.error("notice for SMS %s not stored: %s", sms.id, exc)
            return
        self.deliver_notice(notice)

    # -- the loop --------------------------------------------------------------------
    def due(self) -> list[Sms]:
        now = self.clock()
        return sorted((s for s in self.pending.values()
                       if s.next_try <= now and s.id not in self.inflight),
                      key=lambda s: (s.next_try, s.created))

    async def step(self) -> None:
        now = self.clock()
        if now >= self.next_rescan:
            self.next_rescan = now + RESCAN
            self.rescan()
        for sms in self.due():
            self._spawn(sms)

    def _spawn(self, sms: Sms) -> asyncio.Future[str]:
        task = asyncio.ensure_future(self.attempt(sms))
        self.tasks.add(task)  # a reference, so the task is not collected mid-flight
        task.add_done_callback(self.tasks.discard)
        return task

    async def run(self) -> None:
        while True:
            stop_if_cancelled()
            try:
                await self.step()
            except (OSError, SpoolError) as exc:  # the spool's disk; the next round retries
                log.error("retry round failed: %s", exc)
            self.wakeup.clear()
            await nap(self.wakeup, TICK)
