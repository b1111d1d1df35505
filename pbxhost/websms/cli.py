"""`websms`: send an SMS through the ITSP's API by hand; look at and flush
the queue; migrate a seed-era sms.conf; run as the plain AGI script."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from pbxhost import cli, conf, service
from pbxhost.websms import agi, config, inbound, ratestore, send
from pbxhost.websms.deliver import SET_ASIDE
from pbxhost.websms.model import OUTBOUND, Sms
from pbxhost.websms.outbox import Outbox, outgoing
from pbxhost.websms.parts import Parts, Piece
from pbxhost.websms.send import Outcome
from pbxhost.websms.spool import Spool, SpoolError

log = logging.getLogger("pbxhost.websms.cli")
PROG = "websms"
EX_TEMPFAIL = 75  # sysexits: not sent now, queued for websmsd to retry
USAGE = """\
commands:
  websms TO FROM BODY [INDEX]   send now; when the ITSP is down, queue it for websmsd
  websms queue [list] [--json]  SMS waiting for phones or the ITSP, and failed ones
  websms queue flush            ask websmsd to try every queued SMS now
  websms migrate                write websms.conf from a seed-era sms.conf
  websms agi [TO FROM BODY INDEX USER]  the plain AGI script (when FastAGI is down)
"""
SUBCOMMANDS = ("queue", "migrate", "agi")


def _load(path: Path) -> config.WebsmsConfig:
    try:
        return config.load(path)
    except conf.ConfigError as exc:
        cli.fail(PROG, str(exc), 78)


def _config_path(arg: Path | None) -> Path:
    return Path(cli.find_config(config.CONFIG_NAME, arg))


# ---------------------------------------------------------------- send by hand


def cmd_send(args: argparse.Namespace) -> int:
    cfg = _load(_config_path(args.config))
    try:
        to = inbound.valid_party(args.to, "TO")
        sender = inbound.valid_party(args.sender, "FROM")
        body = inbound.valid_text(args.body, cfg.webhook.body_maxlen)
        iface = cfg.outgoing_for(args.index)
    except inbound.Refused as exc:
        cli.fail(PROG, exc.reason, cli.USAGE_EXIT)
    except KeyError as exc:
        cli.fail(PROG, str(exc.args[0]), cli.USAGE_EXIT)
    result = send.send(iface, to, sender, body)
    detail = service.escape(result.detail)  # the ITSP's reply: external
    if result.outcome is Outcome.SENT:
        print(f"sent to {to} via {iface.name or 'default'} ({detail})")
        return 0
    if result.outcome is Outcome.FAILED:
        cli.fail(PROG, f"not sent: {detail}")
    now = time.time()
    sms = outgoing(to, sender, body, iface.name, sender, now, cfg.retry.expire)
    sms.attempts, sms.error, sms.next_try = 1, result.detail, now + cfg.retry.backoff_min
    try:
        spool = Spool(cfg.queue.spooldir)
        spool.prepare(clean=False)
        spool.add(sms)
    except (OSError, SpoolError) as exc:
        cli.fail(PROG, f"not sent ({detail}) and not queued: {exc}")
    print(f"not sent now ({detail}); queued as {sms.id}, websmsd retries it")
    return EX_TEMPFAIL


# ---------------------------------------------------------------- queue


def _ago(seconds: float) -> str:
    seconds = int(max(0, seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _preview(body: str, width: int = 40) -> str:
    """The start of a text; the whole line is escaped by _show."""
    return body if len(body) <= width else body[:width - 1] + "…"


def _show(line: str) -> None:
    """Every line of `websms queue` escaped (service.escape): senders, texts and
    ITSP replies are external, and must not drive the terminal or add lines."""
    print(service.escape(line))


def _json_safe(text: str) -> str:
    """JSON output with every non-printable character inside its strings as a
    \\u escape (json.dumps leaves DEL, C1, U+2028 and the like raw); only the
    indentation's LF stays, and the output still parses to the same values."""
    if text.isprintable():
        return text
    def esc(c: str) -> str:
        if c == "\n" or c.isprintable():
            return c
        units = c.encode("utf-16-be", "surrogatepass")
        return "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))
    return "".join(map(esc, text))


def _state(sms: Sms, where: str, now: float) -> str:
    if where == "failed":
        return f"FAILED: {sms.error}"
    if sms.kind == OUTBOUND:
        wait = f", next try in {_ago(sms.next_try - now)}" if sms.next_try > now else ""
        tries = f"{sms.attempts} attempt{'s' if sms.attempts != 1 else ''}"
        return tries + wait + (f": {sms.error}" if sms.error else "")
    if sms.error.startswith(SET_ASIDE):  # no user has the number: not waiting for a phone
        return sms.error.replace(SET_ASIDE, SET_ASIDE.upper(), 1)
    got = f"on {len(sms.delivered)} phones so far" if sms.delivered else "waiting for a phone"
    return got + (f": {sms.error}" if sms.error else "")


def _line(sms: Sms, where: str, now: float) -> str:
    arrow = "phone" if sms.kind != OUTBOUND else "ITSP"
    return (f"{where:<6} {sms.id}  {_ago(now - sms.created):>4} ago  {sms.sender} → {sms.to} "
            f"({arrow})  {_state(sms, where, now)}  \"{_preview(sms.body)}\"")


def _part_line(name: str, pieces: list[Piece], now: float) -> str:
    first = pieces[0]
    have = ", ".join(str(p.number) for p in pieces)
    text = "".join(p.body for p in pieces)
    return (f"parts  {name}  {_ago(now - min(p.received for p in pieces)):>4} ago  "
            f"{first.sender} → {first.to} (phone)  parts {have} of {first.total}, waiting for "
            f"the rest  \"{_preview(text)}\"")


def _part_doc(name: str, pieces: list[Piece]) -> dict[str, object]:
    first = pieces[0]
    return {"queue": "parts", "set": name, "to": first.to, "sender": first.sender,
            "iface": first.iface, "total": first.total, "parts": [p.number for p in pieces],
            "received": min(p.received for p in pieces),
            "body": "".join(p.body for p in pieces)}


def cmd_queue(args: argparse.Namespace) -> int:
    cfg = _load(_config_path(args.config))
    spool = Spool(cfg.queue.spooldir)
    if args.action == "flush":
        try:
            spool.request_flush()
        except OSError as exc:
            cli.fail(PROG, f"cannot request a flush in {spool.root}: {exc.strerror or exc}")
        print(f"flush requested in {spool.root}; websmsd tries every queued SMS within a second")
        return 0
    failed = spool.failed()
    inbound = {s.id: s for s in spool.journaled()}
    inbound.update((s.id, s) for s in spool.pending("in"))  # a file wins over the journal
    for sms in failed:
        inbound.pop(sms.id, None)
    rows = [("in", s) for s in sorted(inbound.values(), key=lambda s: (s.created, s.id))]
    rows += [("out", s) for s in spool.pending("out")]
    rows += [("failed", s) for s in failed]
    sets = Parts(spool).incomplete()  # multi-part SMS still waiting for parts
    if args.json:
        docs = [{"queue": where, **json.loads(s.to_json())} for where, s in rows]
        print(_json_safe(json.dumps(docs + [_part_doc(name, pieces) for name, pieces in sets],
                                    ensure_ascii=False, indent=1)))
        return 0
    now = time.time()
    for where, sms in rows:
        _show(_line(sms, where, now))
    for name, pieces in sets:
        _show(_part_line(name, pieces, now))
    counts = {w: sum(1 for x, _ in rows if x == w) for w in ("in", "out", "failed")}
    partial = f", {len(sets)} multi-part incomplete" if sets else ""
    print(f"{counts['in']} for phones, {counts['out']} for the ITSP, {counts['failed']} failed"
          f"{partial} ({spool.root}, {datetime.now():%Y-%m-%d %H:%M})")
    return 0


# ---------------------------------------------------------------- migrate, agi


def cmd_migrate(args: argparse.Namespace) -> int:
    service.setup_logging(PROG)
    path = _config_path(args.config)
    if path.exists():
        print(f"{path} exists; nothing to migrate")
        return 0
    if not path.with_name(config.SEED_NAME).exists():
        print(f"no {path.with_name(config.SEED_NAME)}; nothing to migrate")
        return 0
    try:
        config.migrate_sms_conf(path)
    except conf.ConfigError as exc:
        cli.fail(PROG, str(exc), 78)
    return 0 if path.exists() else 1


def _agi_config(path: Path) -> tuple[config.WebsmsConfig, bool]:
    """websms.conf, and whether this process may send. Asterisk's user, which
    runs this script, cannot read websms.conf (the ITSP credentials are
    websms's alone): then the defaults, and every SMS is queued for websmsd."""
    try:
        path.stat()
        unreadable = not os.access(path, os.R_OK)
    except FileNotFoundError:
        unreadable = False  # no websms.conf: the defaults (or a migrated sms.conf)
    except PermissionError:
        unreadable = True
    if unreadable:
        log.warning("%s is not readable by this user (the ITSP credentials are websmsd's): "
                    "SMS are queued in %s for websmsd", path, config.DEFAULT_SPOOL)
        return config.WebsmsConfig(path=path), False
    return _load(path), True


def cmd_agi(args: argparse.Namespace) -> int:
    service.setup_logging("websms-agi")  # stderr: Asterisk logs it; stdout is the AGI channel
    cfg, may_send = _agi_config(_config_path(args.config))
    spool = Spool(cfg.queue.spooldir)
    spool.prepare(clean=False)
    # websmsd picks up what is queued here (for our users, or to retry) within seconds
    outbox = Outbox(cfg, spool, lambda sms: None, queue_only=not may_send)
    # FastAGI's per-user rate, counted in the spool: each run is a process of its own
    rate = ratestore.SharedRateLimit(spool.root / ratestore.RATE_DIR, cfg.guards.rate_limit,
                                     cfg.guards.rate_window)
    handler = agi.Handler(cfg, outbox, lambda sms: None, wait=3600, rate=rate)
    try:
        asyncio.run(agi.script(handler))
    except agi.AgiError:
        return 1
    return 0


# ---------------------------------------------------------------- parsing


def _sub_parser(name: str) -> cli.ArgumentParser:
    what = {"queue": "List or flush the SMS queued in both directions.",
            "migrate": "Write websms.conf from a seed-era sms.conf beside it.",
            "agi": "The plain AGI script: one SMS from the dialplan (FastAGI's fallback)."}
    p = cli.parser(f"{PROG} {name}", what[name], config.CONFIG_NAME)
    if name == "queue":
        p.add_argument("action", nargs="?", choices=("list", "flush"), default="list")
        p.add_argument("--json", action="store_true", help="machine-readable listing")
    if name == "agi":
        p.add_argument("args", nargs="*", help="to, from, body (percent-encoded), index, user")
    return p


def _first_word(argv: list[str]) -> int | None:
    """Index of the first positional argument (the value of -c is not one)."""
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg in ("-c", "--config"):
            skip = True
        elif not arg.startswith("-"):
            return i
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    at = _first_word(argv)
    if at is not None and argv[at] in SUBCOMMANDS:
        name = argv.pop(at)
        args = _sub_parser(name).parse_args(argv)
        return {"queue": cmd_queue, "migrate": cmd_migrate, "agi": cmd_agi}[name](args)
    p = cli.parser(PROG, "Send an SMS through an ITSP's HTTP API.", config.CONFIG_NAME)
    p.epilog = USAGE
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("to", help="destination number")
    p.add_argument("sender", metavar="from", help="sender number")
    p.add_argument("body", help="message text")
    p.add_argument("index", nargs="?", help="ITSP interface (WEBSMS_INDEX)")
    return cmd_send(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
