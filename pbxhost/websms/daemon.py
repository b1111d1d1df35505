"""`websmsd`: one process, one asyncio event loop, four named units of work
sharing one spool and one AMI login (user `websms`):

    webhook    HTTP server (httpd): ITSP webhook → journal (fdatasync) → 2xx
    delivery   task: journal and in/ → AMI MessageSend to every reachable phone
    fastagi    server on 127.0.0.1:4573: dialplan → spool out/ → ITSP
    retry      task: out/ retries with backoff; failures told to the sender

plus `journal` (the thread that writes the webhook's SMS in batches),
`ami` (the AMI session: ContactStatus events in, actions out) and
`housekeeping` (flush requests, records left by the plain AGI script or by
`websms` by hand, pruning of remembered provider ids, the status line).
Why one process: the parts share the spool and the AMI session, a message
moves between them in memory without polling, and systemd's watchdog sees
one event loop that all of them need. That loop never waits for an fsync:
every write that makes something durable runs in a thread (the journal's
writer, the spool's committer, asyncio.to_thread for the rest)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from pbxhost import cli, conf, service, settings
from pbxhost.ami import AmiClient
from pbxhost.websms import agi, config, httpd, providers, signatures, webhook
from pbxhost.websms.config import WebsmsConfig
from pbxhost.websms.deliver import Delivery
from pbxhost.websms.inbound import Message
from pbxhost.websms.model import INBOUND, Sms, provider_key
from pbxhost.websms.model import new_id as new_sms_id
from pbxhost.websms.outbox import Outbox
from pbxhost.websms.parts import Parts
from pbxhost.websms.spool import Spool, SpoolError

log = logging.getLogger("pbxhost.websms")
EX_UNAVAILABLE = 69     # a port or the spool is not usable
HOUSEKEEPING = 1.0
RESCAN = 2.0
PRUNE = 3600.0
STATUS = 10.0
STOP_TIMEOUT = 5.0
REPLAY_FILE = "replay.keys"


def inbound_sms(msg: Message, cfg: WebsmsConfig, now: float) -> Sms:
    sms_id = provider_key(msg.iface.name, msg.provider_id) if msg.provider_id else new_sms_id()
    return Sms(kind=INBOUND, id=sms_id, to=msg.to, sender=msg.sender, body=msg.body,
               created=now, expires=now + cfg.queue.expire, iface=msg.iface.name,
               provider_id=msg.provider_id)


class Websmsd:
    def __init__(self, cfg: WebsmsConfig, notifier: service.Notifier) -> None:
        self.cfg, self.notifier = cfg, notifier
        self.spool = Spool(cfg.queue.spooldir, archive=cfg.queue.archive)
        self.parts = Parts(self.spool, cfg.webhook.concat_timeout, cfg.queue.expire)
        self.ami = AmiClient(cfg.ami, self._on_event, self._on_ami_state)
        self.delivery = Delivery(cfg.queue, self.spool, self.ami)
        self.outbox = Outbox(cfg, self.spool, self.delivery.add)
        self.fastagi = agi.FastAgiServer(agi.Handler(cfg, self.outbox, self.delivery.add))
        self.webhook: httpd.HttpServer | None = None
        self.replay: signatures.ReplayGuard | None = None
        self.ami_state = "connecting"

    # -- glue between the units ------------------------------------------------------
    def _on_event(self, event: object) -> None:
        self.delivery.on_event(event)

    def _on_ami_state(self, state: str) -> None:
        self.ami_state = state
        self.delivery.on_state(state)
        self._status()

    async def accept(self, msg: Message) -> bool:
        """The webhook's SMS: durable in the journal, then to the delivery task.
        A part of a multi-part SMS is parked in parts/ until its set is whole."""
        if msg.part is not None and msg.part.total > 1:
            return await self._accept_part(msg)
        sms = inbound_sms(msg, self.cfg, time.time())
        if not await self.spool.accept(sms):
            return False
        log.info("SMS %s from %s to %s accepted (%s, %d chars)", sms.id, sms.sender, sms.to,
                 msg.client, len(sms.body), extra={"SMS_ID": sms.id, "SMS_TO": sms.to})
        self.delivery.add(sms)
        return True

    async def _accept_part(self, msg: Message) -> bool:
        """Parts are rare: files in parts/ and in/, written in a thread."""
        assert msg.part is not None
        part = providers.Inbound(msg.to, msg.sender, msg.body, msg.provider_id, msg.part)
        new, whole = await asyncio.to_thread(self.parts.add, msg.iface.name, part, time.time())
        if new:
            log.info("part %d of %d (ref %s) from %s to %s stored (%s)", msg.part.number,
                     msg.part.total, msg.part.ref, msg.sender, msg.to, msg.client,
                     extra={"SMS_TO": msg.to})
        self.delivery.add_many(whole)
        return new

    async def _sweep_parts(self) -> None:
        """Multi-part SMS complete or timed out but not joined yet (a restart)."""
        try:
            joined = await asyncio.to_thread(self.parts.sweep)  # joins are written durably
        except SpoolError as exc:  # tried again at the next rescan
            log.error("multi-part SMS not joined now: %s", exc)
            return
        for sms in joined:
            self.delivery.add(sms)

    def _status(self) -> None:
        tally = self.delivery.tally
        faults = list(self.spool.faults.items())  # a copy: threads of the outbox add to it
        trouble = ("; STORAGE FAULT: " + ", ".join(f"{a} {e}" for a, e in faults)
                   if faults else "")
        aside = self.delivery.set_aside()
        self.notifier.status(service.ami_status(
            self.ami_state, f"queued: {len(self.delivery.pending)} for "
            f"phones ({aside} set aside: no such user), "
            f"{len(self.outbox.pending)} for the ITSP; since start: "
            f"{tally.delivered} delivered, {tally.expired} expired{trouble}"))

    # -- housekeeping ------------------------------------------------------------------
    def _rescan_inbound(self) -> None:
        """Records the plain AGI script queued for our users."""
        for sms_id in self.spool.ids(INBOUND) - self.delivery.pending.keys():
            sms = self.spool.load(INBOUND, sms_id)
            if sms is not None:
                self.delivery.add(sms)

    async def housekeeping(self) -> None:
        next_rescan = next_prune = next_status = 0.0
        while True:
            now = time.monotonic()
            try:
                if self.spool.take_flush_request():
                    log.log(service.NOTICE, "flush requested: retrying every queued SMS now")
                    self.delivery.flush()
                    self.outbox.flush()
                if now >= next_rescan:
                    next_rescan = now + RESCAN
                    if self.spool.faults:  # what a storage fault held back, written now
                        await asyncio.to_thread(self.spool.retry_deferred)
                    await self._sweep_parts()
                    self._rescan_inbound()
                if now >= next_prune:
                    next_prune = now + PRUNE
                    await asyncio.to_thread(self.spool.prune_seen, self.cfg.webhook.dedup_time)
            except OSError as exc:  # the spool's disk; tried again next time
                log.error("housekeeping: %s", exc)
            if now >= next_status:
                next_status = now + STATUS
                self._status()
            await asyncio.sleep(HOUSEKEEPING)

    # -- life ----------------------------------------------------------------------------
    async def start(self) -> None:
        self.spool.prepare()
        self.parts.prepare()
        # the journal's new segment and dropped old ones are fsynced: in a thread
        self.delivery.add_many(await asyncio.to_thread(self.spool.open_journal))
        waiting, sending = self.delivery.load(), self.outbox.load()
        await self.fastagi.start()
        if self.cfg.webhook.port is not None:
            # signed requests already taken, remembered across restarts
            self.replay = signatures.ReplayGuard(path=self.spool.root / REPLAY_FILE)
            self.webhook = webhook.server(self.cfg, self.accept, self.replay)
            await self.webhook.start()
            log.info("webhook listening on %s", self.webhook.where())
        else:
            log.log(service.NOTICE, "WEBSMSD_PORT unset or not a number: no webhook server")
        log.log(service.NOTICE, "websmsd started: %d SMS for phones and %d for the ITSP in %s; "
                "webhook %s; FastAGI agi://%s:%d/%s", waiting, sending, self.spool.root,
                self.webhook.where() if self.webhook else "off", *config.AGI_ADDR, agi.SCRIPT)

    async def run(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        try:
            await self.start()
            self.notifier.ready()
            self._status()
            units = {"ami": self.ami.run(), "delivery": self.delivery.run(),
                     "retry": self.outbox.run(), "housekeeping": self.housekeeping(),
                     "watchdog": self.notifier.watchdog()}
            tasks = [asyncio.create_task(coro, name=name) for name, coro in units.items()]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    log.critical("unit %s died: %r", task.get_name(), task.exception())
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in tasks:  # stop every unit before the servers go
                task.cancel()
            if tasks:
                _, stuck = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
                if stuck:
                    log.warning("units still running after %.0fs: %s", STOP_TIMEOUT,
                                ", ".join(t.get_name() for t in stuck))
            if self.webhook is not None:
                await self.webhook.close()
            if self.replay is not None:
                self.replay.close()
            await self.fastagi.close()
            if self.spool.journal is not None:
                await asyncio.to_thread(self.spool.journal.close)  # its last flush fsyncs


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("websmsd", "Receive SMS webhooks from an ITSP and hand them to Asterisk; "
                   "send the phones' SMS through the ITSP (FastAGI).", "websms.conf")
    args = p.parse_args(argv)
    service.setup_logging("websmsd")
    path = cli.find_config(config.CONFIG_NAME, args.config)
    try:
        cfg = config.load(Path(path))
    except (conf.ConfigError, settings.SettingError) as exc:
        service.config_error(log, exc)
    refusal = config.unprotected_refusal(cfg) or config.local_proxy_refusal(cfg)
    if refusal is not None:
        service.config_error(log, refusal)
    if not cfg.ami.secret:
        log.warning("no [asmanager] secret in %s: AMI login will be refused", path)
    try:
        return service.run(Websmsd(cfg, service.Notifier()).run())
    except OSError as exc:
        log.error("websmsd stopped: %s", exc)
        return EX_UNAVAILABLE


if __name__ == "__main__":
    raise SystemExit(main())
