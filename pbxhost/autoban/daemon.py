"""`autoband`: AMI security events → policy → nftables.

Events are handled synchronously as they are read: a lookup and one atomic
batch in the kernel take about a millisecond, and while we work Asterisk's
socket is not read, so a flood is throttled by TCP instead of piling up in
memory. The kernel's sets are the only state; the state file is a copy for
reboots, written at most a second after each change."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from panoramisk.message import Message

from pbxhost import cli, conf, service
from pbxhost.ami import AmiClient
from pbxhost.autoban import config, gateway, legacy, policy, state
from pbxhost.autoban.events import ATTACK_EVENTS, Address, parse_remote_address
from pbxhost.autoban.firewall import Delete, Element, Firewall, FirewallError, Put

log = logging.getLogger("pbxhost.autoban")
GUARD_INTERVAL = 1.0
SAVE_DELAY = 0.5
RESTORE_BATCH = 250


def human(seconds: int) -> str:
    """1d2h3m4s, the way autoban.conf writes durations."""
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not out):
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out


def standing_of(found: dict[str, Element]) -> policy.Standing:
    """The policy's view of what the kernel holds for one address."""
    return policy.Standing(
        times=policy.decode_times(found["watch"].comment) if "watch" in found else (),
        jailed="jail" in found,
        sentence=policy.decode_sentence(found["parole"].comment) if "parole" in found else None,
        whitelisted="whitelist" in found,
        trusted="trust" in found,
    )


def ops_for(verdict: policy.Verdict, addr: str,
            settings: policy.Settings) -> list[Put | Delete]:
    if verdict.action is policy.Action.WATCH:
        return [Put("watch", addr, settings.watchtime, policy.encode_times(verdict.times))]
    if verdict.action is policy.Action.JAIL:
        note = policy.encode_sentence(verdict.sentence)
        # parole covers the jail time and `watchtime` after it: no timer needed at release
        return [Put("jail", addr, verdict.sentence, note),
                Put("parole", addr, verdict.sentence + settings.watchtime, note),
                Delete("watch", addr)]
    return []


class Autoban:
    def __init__(self, cfg: config.AutobanConfig, firewall: Firewall,
                 exempt: list[config.Network], clock: Callable[[], float] = time.time) -> None:
        self.cfg, self.fw, self.exempt, self.clock = cfg, firewall, exempt, clock
        self.settings = cfg.policy
        self._save_pending: asyncio.TimerHandle | None = None
        self.gateway = gateway.GatewayWatch(gateway.read_gateways())

    # -- the kernel table ---------------------------------------------------
    def ensure_table(self) -> bool:
        """Create the table when it is missing (first start, reboot, `nft flush
        ruleset`) and refill it from the state file. True if it was rebuilt."""
        if self.fw.exists():
            return False
        self.fw.ensure()
        puts = [*state.load(self.cfg.statefile, self.clock()), *self._config_lists()]
        applied = self._apply_each_valid(puts)
        log.log(service.NOTICE, "table inet %s built; %d elements restored from %s",
                self.cfg.table, applied, self.cfg.statefile)
        return True

    def _config_lists(self) -> list[Put]:
        return [Put(name, entry) for name in ("whitelist", "blacklist")
                for entry in getattr(self.cfg, name)]

    def _apply_each_valid(self, puts: list[Put]) -> int:
        # Batches of RESTORE_BATCH: one batch of 10k elements makes libnftables peak at 165 MB.
        return sum(self._apply_batch(puts[i:i + RESTORE_BATCH])
                   for i in range(0, len(puts), RESTORE_BATCH))

    def _apply_batch(self, puts: list[Put]) -> int:
        try:
            self.fw.apply(puts)
            return len(puts)
        except (ValueError, FirewallError):
            pass  # one bad element fails a batch: apply the good ones one by one
        applied = 0
        for put in puts:
            try:
                self.fw.apply([put])
                applied += 1
            except (ValueError, FirewallError) as exc:
                log.warning("element %s in %s not restored: %s", put.addr, put.set, exc)
        return applied

    def add_config_lists(self) -> None:
        self._apply_each_valid(self._config_lists())

    def import_legacy(self) -> None:
        """Take over the seed's `table ip autoban`, if there is one, and remove it."""
        elements = self.fw.legacy_elements()
        if elements is None:
            return
        puts = legacy.convert(elements, self.settings, int(self.clock()))
        applied = self._apply_each_valid(puts)
        self.fw.remove("ip")
        log.log(service.NOTICE, "imported %d elements from the seed's table ip %s and "
                "removed it", applied, self.cfg.table)

    # -- events ---------------------------------------------------------------
    def handle(self, event: Message) -> None:
        name = event.get("Event", "")
        if name in ATTACK_EVENTS:
            self.on_attack(event)
        elif name == "SuccessfulAuth" and self.cfg.trusttime and event.get("UsingPassword") == "1":
            self.on_success(event)

    def _address(self, event: Message) -> Address | None:
        try:
            return parse_remote_address(event.get("RemoteAddress", ""))
        except ValueError as exc:
            log.warning("%s event skipped: %s", event.get("Event"), exc)
            return None

    def _is_exempt(self, addr: Address) -> bool:
        return any(addr in net for net in self.exempt)

    def on_attack(self, event: Message) -> None:
        started = time.perf_counter()
        addr = self._address(event)
        if addr is None:
            return
        if warning := self.gateway.observe(addr):
            log.warning(warning, extra={"ADDRESS": str(addr)})
        name, account = event.get("Event"), event.get("AccountID", "")
        if self._is_exempt(addr):
            log.info("%s from %s (account %s): exempt, not counted", name, addr, account)
            return
        found = self._lookup(str(addr))
        verdict = policy.on_event(self.settings, standing_of(found), int(self.clock()))
        ops = ops_for(verdict, str(addr), self.settings)
        if ops:
            self._apply(ops)
        fields = {"ADDRESS": str(addr), "EVENT": name, "ACCOUNT": account,
                  "VERDICT": verdict.action.value}
        if verdict.action is policy.Action.JAIL:
            log.log(service.NOTICE, "jailed %s for %s: %s (event %s, account %s)", addr,
                    human(verdict.sentence), verdict.reason, name, account,
                    extra={**fields, "SENTENCE": verdict.sentence})
        else:
            log.info("%s from %s (account %s): %s: %s", name, addr, account,
                     verdict.action.value, verdict.reason, extra=fields)
        log.debug("%s handled in %.2f ms", addr, (time.perf_counter() - started) * 1000)

    def on_success(self, event: Message) -> None:
        addr = self._address(event)
        if addr is None or self._is_exempt(addr):
            return
        self._apply([Put("trust", str(addr), self.cfg.trusttime)])
        log.info("%s trusted for %s after a successful login as %s", addr,
                 human(self.cfg.trusttime), event.get("AccountID", ""),
                 extra={"ADDRESS": str(addr), "EVENT": "SuccessfulAuth"})

    def _lookup(self, addr: str) -> dict[str, Element]:
        try:
            return self.fw.lookup(addr)
        except FirewallError:
            self.ensure_table()
            return self.fw.lookup(addr)

    def _apply(self, ops: list[Put | Delete]) -> None:
        try:
            self.fw.apply(ops)
        except FirewallError:
            self.ensure_table()
            self.fw.apply(ops)
        self.changed()

    # -- persistence ------------------------------------------------------------
    def changed(self) -> None:
        """Schedule one save within a second of the first unsaved change."""
        if self._save_pending is None:
            self._save_pending = asyncio.get_running_loop().call_later(SAVE_DELAY, self.save)

    def save(self) -> None:
        self._save_pending = None
        try:
            state.save(self.cfg.statefile, self.fw.elements(), self.clock())
        except (OSError, FirewallError) as exc:
            log.error("state not saved to %s: %s", self.cfg.statefile, exc)

    async def guard(self) -> None:
        """Rebuild the table within a second or two of it disappearing."""
        while True:
            await asyncio.sleep(GUARD_INTERVAL)
            try:
                if self.ensure_table():
                    log.warning("table inet %s had disappeared; rebuilt", self.cfg.table)
            except FirewallError as exc:
                log.error("cannot rebuild table inet %s: %s", self.cfg.table, exc)

    async def run(self, notifier: service.Notifier) -> None:
        if not self.ensure_table():
            self.add_config_lists()
        self.import_legacy()
        self.save()
        client = AmiClient(self.cfg.ami, self.handle,
                           lambda s: notifier.status(f"AMI {s}; watching for attacks"))
        notifier.ready(f"connecting to AMI {self.cfg.ami.host}:{self.cfg.ami.port}")
        log.log(service.NOTICE, "autoban started: maxcount %d, watchtime %s, jailtime %s, "
                "repeatmult %g", self.settings.maxcount, human(self.settings.watchtime),
                human(self.settings.jailtime), self.settings.repeatmult)
        await asyncio.gather(client.run(), self.guard(), notifier.watchdog())


async def idle(notifier: service.Notifier, why: str) -> None:
    """Disabled: stay up quietly (no restart loop) without touching the firewall."""
    notifier.ready(why)
    await asyncio.gather(asyncio.Event().wait(), notifier.watchdog())


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("autoband", "autoban daemon: jail addresses that attack Asterisk "
                   "(AMI security events → nftables).", "autoban.conf")
    args = p.parse_args(argv)
    service.setup_logging("autoban")
    path = cli.find_config("autoban.conf", args.config)
    try:
        cfg = config.load(path)
    except conf.ConfigError as exc:
        service.config_error(log, exc)
    notifier = service.Notifier()
    if not cfg.enabled:
        why = "disabled: enabled = no" if path.exists() else f"disabled: no {path}"
        log.log(service.NOTICE, "autoban %s; idling without touching the firewall", why)
        return service.run(idle(notifier, why))
    exempt = config.exempt_networks(Path(path).parent)
    log.info("never jailed: %s", ", ".join(str(n) for n in exempt))
    return service.run(Autoban(cfg, Firewall(cfg.table), exempt).run(notifier))


if __name__ == "__main__":
    raise SystemExit(main())
