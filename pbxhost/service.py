"""What every pbxhost daemon shares: logging fit for journald (SYSLOG_LEVEL
honoured, structured fields when systemd-python is present), sd_notify
READY/STATUS/WATCHDOG, and SIGTERM/SIGINT as a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
import os
import signal
import socket
import sys
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, NoReturn

from pbxhost import settings

NOTICE = 25  # syslog's "notice": between INFO and WARNING; what an admin wants to see
logging.addLevelName(NOTICE, "NOTICE")

# SYSLOG_LEVEL as in the seed: 0 nothing, 1 emerg, 2 alert, 3 crit, 4 err,
# 5 warning, 6 notice, 7 info, 8 debug (each "or worse").
_LEVELS = {0: logging.CRITICAL + 10, 1: logging.CRITICAL, 2: logging.CRITICAL,
           3: logging.CRITICAL, 4: logging.ERROR, 5: logging.WARNING, 6: NOTICE,
           7: logging.INFO, 8: logging.DEBUG}


JOURNAL_SOCKET = Path("/run/systemd/journal/socket")


def log_level(env: Mapping[str, str] = os.environ) -> int:
    """The logging level SYSLOG_LEVEL selects; settings.SettingError when invalid."""
    return _LEVELS[settings.syslog_level(env)]


_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
               (NOTICE, 5), (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level (NOTICE included, which
    systemd-python's JournalHandler would send as a warning)."""
    return next((p for lvl, p in _PRIORITIES if levelno >= lvl), 7)


def escape(text: str) -> str:
    """TEXT on one line, safe for a log or a terminal: every character that is
    not printable (CR, LF, tab, other C0/C1 controls, ESC, DEL, U+2028/2029,
    bidi overrides, unassigned) becomes its Python escape (\\n, \\x1b, \\u2028).
    External strings (request fields, ITSP replies) then cannot start a log
    line of their own, forge a `<0>` priority, or drive a terminal."""
    if text.isprintable():  # the common case, at C speed
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class SafeFormatter(logging.Formatter):
    """Escapes every message (the one place external strings are made safe for
    logs). ONE_LINE: the traceback too, for a stream journald splits on LF;
    otherwise a traceback keeps its lines, each escaped (one journal entry)."""

    def __init__(self, fmt: str, one_line: bool = False) -> None:
        super().__init__(fmt)
        self.one_line = one_line

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return "\n".join(map(escape, super().formatException(ei).split("\n")))

    def formatStack(self, stack_info: str) -> str:
        return "\n".join(map(escape, super().formatStack(stack_info).split("\n")))

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return escape(text) if self.one_line else text


class _SyslogPrefixFormatter(SafeFormatter):
    """`<N>message`: journald reads the priority from the prefix on stderr."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt, one_line=True)

    def format(self, record: logging.LogRecord) -> str:
        return f"<{syslog_priority(record.levelno)}>{super().format(record)}"


SYSLOG_SOCKET = "/dev/log"


_SYSLOG_NAMES = {2: "critical", 3: "error", 4: "warning", 5: "notice", 6: "info", 7: "debug"}


class _SyslogHandler(logging.handlers.SysLogHandler):
    """SysLogHandler with syslog_priority's mapping (the stdlib's sends NOTICE
    as a warning)."""

    def mapPriority(self, levelName: str) -> str:
        return _SYSLOG_NAMES[syslog_priority(logging.getLevelName(levelName))]


def _syslog_handler(name: str, env: Mapping[str, str]) -> logging.Handler | None:
    """Syslog when not under systemd (OpenRC: busybox syslogd does not parse the
    <N> prefixes journald reads on stderr), only when PBXHOST_LOG=syslog asks
    for it (so nothing changes for stderr's readers) and a syslog daemon
    listens; None keeps the handler chosen before. A bad PBXHOST_LOG is left to
    setup_logging: stderr, then the one-line config error."""
    if env.get("JOURNAL_STREAM"):
        return None
    try:
        wanted = settings.log_to_syslog(env)
    except settings.SettingError:
        return None
    if not wanted:
        return None
    try:  # a daemon listens and we may write (Python 3.14's handler defers this to emit)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            probe.connect(SYSLOG_SOCKET)
        handler = _SyslogHandler(SYSLOG_SOCKET, logging.handlers.SysLogHandler.LOG_DAEMON)
    except OSError:
        return None
    handler.ident = f"{name}[{os.getpid()}]: "
    handler.setFormatter(SafeFormatter("%(message)s", one_line=True))
    return handler


def setup_logging(name: str, env: Mapping[str, str] = os.environ,
                  journal_outside_units: bool = False) -> logging.Logger:
    """Log to the journal natively when run by systemd, else to stderr (or to
    syslog with PBXHOST_LOG=syslog). JOURNAL_OUTSIDE_UNITS: also to the journal
    when started by another program on a systemd host (minivm-send, run by
    Asterisk, whose output goes nowhere). An invalid SYSLOG_LEVEL or PBXHOST_LOG
    is logged (one line naming it) and exits EX_CONFIG."""
    handler: logging.Handler
    journal = None
    if env.get("JOURNAL_STREAM") or (journal_outside_units and JOURNAL_SOCKET.exists()):
        with contextlib.suppress(ImportError):
            from systemd import journal  # type: ignore[no-redef]
    if journal is not None:
        handler = journal.JournalHandler(SYSLOG_IDENTIFIER=name)
        handler.map_priority = syslog_priority  # type: ignore[method-assign]
        handler.setFormatter(SafeFormatter("%(message)s"))
    elif env.get("JOURNAL_STREAM"):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_SyslogPrefixFormatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler = _syslog_handler(name, env) or handler
    root = logging.getLogger()
    root.handlers[:] = [handler]
    try:
        root.setLevel(log_level(env))
        settings.log_to_syslog(env)
    except settings.SettingError as exc:
        root.setLevel(logging.ERROR)
        config_error(logging.getLogger(name), exc)
    return logging.getLogger(name)


def config_error(log: logging.Logger, exc: Exception | str) -> NoReturn:
    """The one way a service stops on a broken setting or config file: one
    line naming it, exit 78 (the units' RestartPreventExitStatus)."""
    log.error("not started: %s", exc, extra={"CONFIG_ERROR": getattr(exc, "name", "")})
    raise SystemExit(settings.EX_CONFIG)


def ami_status(state: str, rest: str) -> str:
    """A daemon's systemd status line while it uses the AMI: the AMI link first
    (connecting, connected, disconnected), as `pbxhost status` reads it."""
    return f"AMI {state}; {rest}"


def ami_blind(status: str) -> bool:
    """STATUS (a unit's StatusText) says its daemon is off the AMI (it sees no
    event); a disabled daemon, not using the AMI, is not blind."""
    return status.startswith("AMI ") and not status.startswith(ami_status("connected", ""))


class Notifier:
    """sd_notify, a no-op outside systemd."""

    def __init__(self) -> None:
        self._notifier = None
        if os.environ.get("NOTIFY_SOCKET"):
            import sdnotify
            self._notifier = sdnotify.SystemdNotifier()

    def notify(self, state: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(state)

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    async def watchdog(self) -> None:
        """Ping the watchdog at half its interval while the event loop is alive."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        if self._notifier is None or not usec.isdigit():
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(int(usec) / 2e6)


def run(main: Coroutine[Any, Any, None]) -> int:
    """Run MAIN until it ends or SIGTERM/SIGINT cancels it; exit status 0 on a stop."""
    async def runner() -> None:
        task = asyncio.ensure_future(main)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(runner())
    return 0
