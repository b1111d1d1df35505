"""`minivm-send`: send the voicemail e-mail Asterisk pipes to MiniVM's mailcmd.

Asterisk runs `( mailcmd < TMPFILE ; rm -f TMPFILE ) &` and ignores the exit status,
so once this program ends the message exists nowhere else. Hence:
- stdin is read completely and written to the spool (temp file, fsync, rename)
  *before* the first delivery attempt, so even a kill mid-send loses nothing;
- a mail the server accepted is removed from the spool; one that failed for a
  transient reason stays there for `minivm-send --flush` (run every 5 minutes by
  minivm-send-retry.timer); one refused for good is moved to `failed/`.
The spool never holds the SMTP password: a retry takes it from the `mailcmd` line
of minivm.conf, where Asterisk's copy of it already lives. See docs/minivm-send.md.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import email.utils
import fcntl
import json
import logging
import os
import re
import secrets
import shlex
import smtplib
import ssl
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any, NoReturn

from pbxhost import cli, conf, service
from pbxhost.durable import fsync_dir, write_durably

PROG = "minivm-send"
CONFIG_NAME = "minivm.conf"
PROTOCOLS = ("smtp", "smtps", "tls", "starttls")
DEFAULT_PORTS = {"smtp": 25, "smtps": 465, "tls": 465, "starttls": 587}
IMPLICIT_TLS = frozenset({"smtps", "tls"})
DEFAULT_SPOOL = Path("/srv/var/spool/voicemail-mail")
SPOOL_ENV = "PBXHOST_MAIL_SPOOL"
CAFILE_ENV = "MINIVM_CAFILE"
TIMEOUT = 60.0  # seconds per network operation, not per mail: attachments can be large
MAX_QUEUE_AGE = 5 * 24 * 3600  # then give up, as Postfix's maximal_queue_lifetime
SPOOL_FORMAT = 1

EXIT_OK = 0  # sent, or kept in the spool for a retry (we own the mail now, as sendmail does)
EXIT_FAILED = 1  # refused for good (kept in failed/), or nothing to send
EXIT_TEMPFAIL = 75  # sysexits EX_TEMPFAIL: could neither send nor keep the mail

log = logging.getLogger(PROG)


class MessageError(ValueError):
    """The input is not a mail we can send (no recipient, no sender)."""


class StartTLSUnavailable(smtplib.SMTPException):
    """-P starttls, but the server did not offer STARTTLS."""


# ---------------------------------------------------------------- options


@dataclass(frozen=True)
class Route:
    """How to reach the mail server; stored with a queued mail (the password never is)."""

    host: str
    port: int
    protocol: str
    username: str | None = None
    cafile: str | None = None

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.protocol}://{host}:{self.port}"


_HOSTPORT = re.compile(r"\[(?P<v6>[^\]]+)\](?::(?P<p6>[^:]*))?"
                       r"|(?P<host>[^:\[\]\s]+)(?::(?P<port>[^:]*))?")


def parse_hostport(text: str) -> tuple[str, int | None]:
    """`host`, `host:port` or `[v6addr]:port`; the port defaults by protocol later."""
    m = _HOSTPORT.fullmatch(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    host, port = (m["v6"], m["p6"]) if m["v6"] else (m["host"], m["port"])
    if port is None:
        return host, None
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise argparse.ArgumentTypeError(f"bad port in {text!r} (use 1-65535)")
    return host, int(port)


def add_send_options(p: argparse.ArgumentParser) -> None:
    """The seed's options; shared with the reader of minivm.conf's mailcmd line."""
    p.add_argument("-H", dest="server", metavar="HOST:PORT", type=parse_hostport,
                   help="mail server; the port defaults to 25 (smtp), 465 (smtps, tls), "
                   "587 (starttls)")
    p.add_argument("-P", dest="protocol", choices=PROTOCOLS,
                   help="smtp (plain), smtps or tls (implicit TLS), starttls (STARTTLS "
                   "required); default smtp")
    p.add_argument("-u", dest="username", metavar="USER", help="user name for SMTP AUTH")
    p.add_argument("-p", dest="password", metavar="PASS", help="password for SMTP AUTH")
    p.add_argument("-f", dest="sender", metavar="FROM",
                   help="envelope sender (MAIL FROM); default: the message's From:")


def build_parser() -> cli.ArgumentParser:
    # -h is help and -H the host, as in the seed's minivm-send.
    p = cli.parser(PROG, "Send a mail read from stdin over SMTP; keep it for a retry when "
                   "it cannot be sent now.", CONFIG_NAME)
    add_send_options(p)
    p.add_argument("-e", dest="echo", action="store_true", help="also log to stdout")
    p.add_argument("--cafile", metavar="PATH",
                   help=f"trust only the CAs in PATH instead of the system's (also ${CAFILE_ENV})")
    p.add_argument("--flush", action="store_true",
                   help="retry every queued mail instead of reading stdin "
                   "(what minivm-send-retry.timer runs)")
    p.epilog = (f"Mail that cannot be sent now is kept in ${SPOOL_ENV} (default {DEFAULT_SPOOL}) "
                "and retried by --flush; mail refused for good goes to its failed/. Exit "
                "status: 0 sent or queued, 1 refused (kept), 2 bad usage, 75 not even kept.")
    return p


def parse_args(argv: Sequence[str] | None,
               env: Mapping[str, str] = os.environ) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    given = [opt for opt, dest in (("-H", "server"), ("-P", "protocol"), ("-u", "username"),
                                   ("-p", "password"), ("-f", "sender"), ("--cafile", "cafile"))
             if getattr(args, dest) is not None]
    if args.flush:
        if given:
            p.error(f"--flush takes no {', '.join(given)}: each queued mail keeps its own")
        return args
    if args.server is None:
        p.error("the following arguments are required: -H")
    if (args.username is None) != (args.password is None):
        p.error("-u and -p go together")
    args.cafile = args.cafile or env.get(CAFILE_ENV) or None
    if args.cafile is not None:
        try:  # a bad CA file is a setting to fix now, not a reason to queue mail for days
            tls_context(args.cafile)
        except (OSError, ssl.SSLError) as e:
            p.error(f"CA file {args.cafile}: {e.strerror or e}")
    return args


def route_of(args: argparse.Namespace) -> Route:
    protocol = args.protocol or "smtp"
    host, port = args.server
    return Route(host, port or DEFAULT_PORTS[protocol], protocol, args.username,
                 getattr(args, "cafile", None))


# ---------------------------------------------------------------- the message


@dataclass(frozen=True)
class Envelope:
    mail_from: str
    rcpt_to: tuple[str, ...]


_EOL = re.compile(rb"\r\n|\r|\n")
_END_MARK = re.compile(rb"(?<=[\r\n])\.(?:\r\n|\r|\n)?\Z")
_HEAD_END = re.compile(rb"\r\n\r\n")
_FIELD_NAME = re.compile(rb"([^:\s]+)[ \t]*:")


def canonical(data: bytes) -> bytes:
    """CRLF line ends, as SMTP requires (smtplib sends bytes as they are, and bare LF is
    refused by many servers); Asterisk writes LF, its base64 lines CRLF."""
    data = _EOL.sub(b"\r\n", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def strip_end_mark(data: bytes) -> bytes:
    """MiniVM ends its mail with a lone "." line, sendmail's end of input; it is not text."""
    m = _END_MARK.search(data)
    return data[:m.start()] if m else data


def split_head(data: bytes) -> tuple[bytes, bytes]:
    """(header lines with their CRLF, blank line and body) of a canonical message."""
    if data.startswith(b"\r\n"):
        return b"", data
    m = _HEAD_END.search(data)
    return (data, b"") if m is None else (data[:m.start() + 2], data[m.start() + 2:])


def _fields(head: bytes) -> list[bytes]:
    """Header fields, each with its folded continuation lines."""
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def strip_bcc(data: bytes) -> bytes:
    """The message without Bcc: fields, every other byte untouched."""
    head, rest = split_head(data)
    kept = [f for f in _fields(head)
            if not ((m := _FIELD_NAME.match(f)) and m.group(1).lower() == b"bcc")]
    return b"".join(kept) + rest


def _addresses(headers: Any, *names: str) -> list[str]:
    values = [str(v) for name in names for v in headers.get_all(name, [])]
    return [addr for _, addr in email.utils.getaddresses(values) if addr]


def prepare(raw: bytes, sender: str | None) -> tuple[bytes, Envelope]:
    """The bytes to send (canonical, no end mark, no Bcc:) and their envelope: MAIL FROM
    is -f else From:, RCPT TO every To/Cc/Bcc address."""
    data = canonical(strip_end_mark(raw))
    head, _ = split_head(data)
    headers = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
        head + b"\r\n", headersonly=True)
    rcpt = tuple(dict.fromkeys(_addresses(headers, "To", "Cc", "Bcc")))
    if not rcpt:
        raise MessageError("no recipient: the message has no To, Cc or Bcc address")
    mail_from = sender or next(iter(_addresses(headers, "From")), None)
    if not mail_from:
        raise MessageError("no sender: the message has no From: address and -f is not given")
    return strip_bcc(data), Envelope(mail_from, rcpt)


# ---------------------------------------------------------------- SMTP


@dataclass(frozen=True)
class Outcome:
    """One delivery attempt: recipients to retry, recipients refused for good, and why.
    Whoever is in neither list got the mail."""

    retry: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    reason: str = ""


def tls_context(cafile: str | None) -> ssl.SSLContext:
    # Certificates and host names are checked; CAFILE (a private CA) replaces the system store.
    return ssl.create_default_context(cafile=cafile)


def connect(route: Route) -> smtplib.SMTP:
    if route.protocol in IMPLICIT_TLS:
        return smtplib.SMTP_SSL(route.host, route.port, timeout=TIMEOUT,
                                context=tls_context(route.cafile))
    smtp = smtplib.SMTP(route.host, route.port, timeout=TIMEOUT)
    try:
        if route.protocol == "starttls":
            start_tls(smtp, tls_context(route.cafile))
        return smtp
    except BaseException:
        smtp.close()
        raise


def start_tls(smtp: smtplib.SMTP, context: ssl.SSLContext) -> None:
    smtp.ehlo()
    if not smtp.has_extn("starttls"):
        # Never go on in plaintext: a missing STARTTLS is what a downgrade attack looks like.
        raise StartTLSUnavailable("the server does not offer STARTTLS; nothing was sent")
    smtp.starttls(context=context)
    smtp.ehlo()  # the capabilities before TLS are void (RFC 3207)


def deliver(route: Route, password: str | None, envelope: Envelope,
            data: bytes) -> dict[str, tuple[int, bytes]]:
    """One SMTP transaction; returns the recipients refused while others were accepted."""
    with connect(route) as smtp:
        smtp.ehlo_or_helo_if_needed()
        if route.username is not None:
            if route.protocol == "smtp":
                log.warning("AUTH as %s over an unencrypted connection to %s",
                            route.username, route.where)
            smtp.login(route.username, password or "")
        options = ["BODY=8BITMIME"] if not data.isascii() and smtp.has_extn("8bitmime") else []
        return smtp.sendmail(envelope.mail_from, list(envelope.rcpt_to), data, options)


def _reply(code: int, text: bytes | str) -> str:
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return f"{code} {' '.join(text.split())}"


def by_reply(refused: Mapping[str, tuple[int, bytes]], reason: str = "") -> Outcome:
    """Split refused recipients: 5xx is final, anything else may pass later."""
    failed = tuple(r for r, (code, _) in refused.items() if 500 <= code < 600)
    retry = tuple(r for r in refused if r not in failed)
    replies = "; ".join(f"{r}: {_reply(*reply)}" for r, reply in refused.items())
    return Outcome(retry, failed, f"{reason}{replies}")


def classify(exc: Exception, rcpt: tuple[str, ...]) -> Outcome:
    """What a failed attempt means for its recipients. Only a server's 5xx (or a setting
    that cannot work) is final; anything else is retried, so nothing is lost."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return by_reply(exc.recipients, "recipients refused: ")
    if isinstance(exc, smtplib.SMTPResponseException):
        reason = f"server replied {_reply(exc.smtp_code, exc.smtp_error)}"
        if 500 <= exc.smtp_code < 600:
            return Outcome(failed=rcpt, reason=reason)
        return Outcome(retry=rcpt, reason=reason)
    if isinstance(exc, smtplib.SMTPNotSupportedError):  # e.g. AUTH not offered: fix -P
        return Outcome(failed=rcpt, reason=f"{exc} (is -P right?)")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Outcome(retry=rcpt, reason=f"server certificate not trusted: "
                       f"{exc.verify_message or exc}; nothing was sent")
    if isinstance(exc, OSError):  # refused, timeout, DNS, TLS handshake, disconnect, no STARTTLS
        return Outcome(retry=rcpt, reason=f"{type(exc).__name__}: {exc}")
    log.exception("unexpected error while sending; keeping the mail")
    return Outcome(retry=rcpt, reason=f"unexpected error: {exc!r}")


def attempt(route: Route, password: str | None, envelope: Envelope, data: bytes) -> Outcome:
    try:
        refused = deliver(route, password, envelope, data)
    except Exception as exc:
        return classify(exc, envelope.rcpt_to)
    return by_reply(refused, "recipients refused: ") if refused else Outcome()


# ---------------------------------------------------------------- the spool


@dataclass(frozen=True)
class Queued:
    """A mail in the spool: the bytes to send, where and to whom, and its history."""

    route: Route
    envelope: Envelope
    data: bytes
    created: float
    attempts: int = 0
    last_error: str = ""

    def dump(self) -> bytes:
        meta = {"format": SPOOL_FORMAT, "route": asdict(self.route),
                "mail_from": self.envelope.mail_from, "rcpt_to": list(self.envelope.rcpt_to),
                "created": self.created, "attempts": self.attempts,
                "last_error": self.last_error}
        return json.dumps(meta, sort_keys=True).encode() + b"\n" + self.data

    @classmethod
    def load(cls, raw: bytes) -> Queued:
        head, _, data = raw.partition(b"\n")
        try:
            meta = json.loads(head)
            if meta.get("format") != SPOOL_FORMAT:
                raise ValueError(f"unknown spool format {meta.get('format')!r}")
            return cls(Route(**meta["route"]),
                       Envelope(meta["mail_from"], tuple(meta["rcpt_to"])), data,
                       float(meta["created"]), int(meta["attempts"]), str(meta["last_error"]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a {PROG} spool file: {e}") from None


def write_locked(path: Path, data: bytes) -> int:
    """Write PATH durably (durable.write_durably; mode 0600) and return an fd locking
    it. The lock is taken before the file appears, so a concurrent --flush can
    never pick up a mail whose first attempt is still running."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = write_durably(path, data, 0o600, lock=True)
    assert fd is not None
    return fd


def write_atomic(path: Path, data: bytes) -> None:
    os.close(write_locked(path, data))


def claim(path: Path) -> int | None:
    """Lock a queued file for a retry; None when someone else is on it or it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The holder may have sent it (unlink) or rewritten it (rename) before we locked.
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            return fd
    except (BlockingIOError, FileNotFoundError):
        pass
    os.close(fd)
    return None


def _read_fd(fd: int) -> bytes:
    with os.fdopen(os.dup(fd), "rb") as f:
        return f.read()


@dataclass
class Held:
    """A spool file we hold the lock of (None: a mail we could not write to the spool)."""

    path: Path
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Spool:
    """One file per mail, `NAME.mail`, FIFO by name; `failed/` holds refused mail."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.failed = root / "failed"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Spool:
        return cls(Path(env.get(SPOOL_ENV) or DEFAULT_SPOOL))

    @staticmethod
    def new_name() -> str:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        return f"{stamp}-{os.getpid()}-{secrets.token_hex(4)}.mail"

    def add(self, entry: Queued) -> Held:
        """Write-ahead a new mail; if the spool is unusable, go on and try to send anyway."""
        path = self.root / self.new_name()
        try:
            return Held(path, write_locked(path, entry.dump()))
        except OSError as e:
            log.error("cannot write the mail to the spool %s: %s; sending without a "
                      "safety copy", self.root, e)
            return Held(path, None)

    def pending(self) -> Iterator[Held]:
        """Queued mails, oldest first, each locked while the caller holds it."""
        if not self.root.is_dir():
            return
        for path in sorted(self.root.glob("*.mail")):
            fd = claim(path)
            if fd is None:
                continue
            held = Held(path, fd)
            try:
                yield held
            finally:
                held.release()

    def keep_failed(self, name: str, entry: Queued) -> Path:
        path = self.failed / name
        write_atomic(path, entry.dump())
        return path

    def quarantine(self, held: Held, reason: str) -> None:
        """A queued file we cannot read goes to failed/ as it is, for a human to look at."""
        self.failed.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.rename(held.path, self.failed / held.path.name)
        fsync_dir(self.root)
        log.error("%s: %s; moved to %s", held.path, reason, self.failed)

    def settle(self, held: Held, entry: Queued, outcome: Outcome) -> int:
        """Record one attempt: drop the mail when everyone got it, keep what is left."""
        rcpt = entry.envelope.rcpt_to
        sent = [r for r in rcpt if r not in outcome.retry and r not in outcome.failed]
        what = f"mail {held.path.name} from {entry.envelope.mail_from}"
        if sent:
            log.log(service.NOTICE, "sent %s to %s via %s", what, ", ".join(sent),
                    entry.route.where)
        if outcome.failed:
            kept = self.keep_failed(held.path.name, _with(entry, outcome.failed, outcome))
            log.error("%s refused for %s: %s; kept in %s (not retried)", what,
                      ", ".join(outcome.failed), outcome.reason, kept)
        if outcome.retry:
            write_atomic(held.path, _with(entry, outcome.retry, outcome).dump())
            log.warning("%s not sent to %s: %s; queued in %s for a retry", what,
                        ", ".join(outcome.retry), outcome.reason, self.root)
        elif held.fd is not None:
            held.path.unlink()
            fsync_dir(self.root)
        return EXIT_FAILED if outcome.failed else EXIT_OK


def _with(entry: Queued, rcpt: tuple[str, ...], outcome: Outcome) -> Queued:
    return replace(entry, envelope=Envelope(entry.envelope.mail_from, rcpt),
                   attempts=entry.attempts + 1, last_error=outcome.reason)


# ---------------------------------------------------------------- commands


def send_new(route: Route, password: str | None, sender: str | None, stdin: IO[bytes],
             spool: Spool, now: float) -> int:
    raw = stdin.read()  # all of it first: Asterisk deletes its file as soon as we exit
    if not raw.strip():
        log.error("nothing on stdin: no mail to send")
        return EXIT_FAILED
    try:
        data, envelope = prepare(raw, sender)
    except MessageError as e:
        return keep_unsendable(spool, Queued(route, Envelope(sender or "", ()), raw, now), e)
    entry = Queued(route, envelope, data, now)
    held = spool.add(entry)
    try:
        outcome = attempt(route, password, envelope, data)
        if held.fd is None and outcome.retry:
            log.critical("mail from %s to %s LOST: not sent (%s) and not spooled",
                         envelope.mail_from, ", ".join(outcome.retry), outcome.reason)
            return EXIT_TEMPFAIL
        return spool.settle(held, entry, outcome)
    except OSError as e:  # the spool broke after the attempt: say where the mail stands
        log.critical("cannot update the spool %s after sending: %s; the mail %s", spool.root,
                     e, f"stays queued as {held.path}" if held.fd is not None else "is LOST")
        return EXIT_TEMPFAIL
    finally:
        held.release()


def keep_unsendable(spool: Spool, entry: Queued, error: MessageError) -> int:
    """No recipient or no sender: nothing to try, but the mail is kept for a human."""
    try:
        kept = spool.keep_failed(Spool.new_name(), replace(entry, last_error=str(error)))
    except OSError as e:
        log.critical("%s, and cannot keep it in %s: %s; the mail is LOST", error, spool.failed, e)
        return EXIT_TEMPFAIL
    log.error("%s; nothing sent, kept in %s", error, kept)
    return EXIT_FAILED


class _QuietParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def mailcmd_route(config: Path) -> tuple[Route, str | None] | None:
    """The route and password of minivm.conf's `mailcmd` when it runs minivm-send."""
    try:
        section = conf.load(config).section("general")
    except (OSError, conf.ConfigError) as e:
        log.warning("cannot read %s for the SMTP password: %s", config, e)
        return None
    mailcmd = section.get("mailcmd") if section is not None else None
    if not mailcmd:
        return None
    p = _QuietParser(add_help=False)
    add_send_options(p)
    try:
        words = shlex.split(mailcmd)  # Asterisk hands mailcmd to /bin/sh
        start = next((i + 1 for i, w in enumerate(words) if Path(w).name == PROG), 1)
        args, _ = p.parse_known_args(words[start:])
    except ValueError as e:
        log.warning("%s: cannot parse mailcmd: %s", config, e)
        return None
    if args.server is None:
        return None
    return route_of(args), args.password


class ConfiguredPasswords:
    """-p of minivm.conf's mailcmd, for a queued mail to the same server and user."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self._configured: tuple[Route, str | None] | None = None
        self._read = False

    def __call__(self, route: Route) -> str | None:
        if not self._read:  # only when a queued mail needs AUTH
            self._configured, self._read = mailcmd_route(self.config), True
        if self._configured is None:
            return None
        cfg, password = self._configured
        same = (cfg.host, cfg.port, cfg.username) == (route.host, route.port, route.username)
        return password if same else None


def retry_one(spool: Spool, held: Held, passwords: ConfiguredPasswords, now: float,
              max_age: float) -> int:
    assert held.fd is not None
    try:
        entry = Queued.load(_read_fd(held.fd))
    except ValueError as e:
        spool.quarantine(held, str(e))
        return EXIT_FAILED
    password = passwords(entry.route) if entry.route.username is not None else None
    if entry.route.username is not None and password is None:
        outcome = Outcome(retry=entry.envelope.rcpt_to, reason=(
            f"no password for {entry.route.username} at {entry.route.where}: the mailcmd "
            f"in {passwords.config} has none for that server and user"))
    else:
        outcome = attempt(entry.route, password, entry.envelope, entry.data)
    if outcome.retry and now - entry.created > max_age:
        days = (now - entry.created) / 86400
        outcome = Outcome((), outcome.failed + outcome.retry,
                          f"gave up after {days:.1f} days: {outcome.reason}")
    return spool.settle(held, entry, outcome)


def flush(spool: Spool, passwords: ConfiguredPasswords, now: float,
          max_age: float = MAX_QUEUE_AGE) -> int:
    """Retry every queued mail once: 0 unless a mail was refused for good in this run (1)
    or the spool could not be updated (75)."""
    status, tried = EXIT_OK, 0
    for held in spool.pending():
        tried += 1
        try:
            status = max(status, retry_one(spool, held, passwords, now, max_age))
        except OSError as e:  # one unwritable file must not stop the others
            log.critical("cannot update %s: %s", held.path, e)
            status = max(status, EXIT_TEMPFAIL)
    left = len(list(spool.root.glob("*.mail"))) if spool.root.is_dir() else 0
    log.info("flush: %d mail(s) tried, %d still queued", tried, left)
    return status


def setup_logging(echo: bool) -> None:
    service.setup_logging(PROG, journal_outside_units=True)  # Asterisk runs it, not a unit
    if echo:  # -e: the seed's "also send log messages to stdout"
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logging.getLogger().addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.echo)
    spool = Spool.from_env()
    if args.flush:
        config = cli.find_config(CONFIG_NAME, args.config)
        return flush(spool, ConfiguredPasswords(config), time.time())
    return send_new(route_of(args), args.password, args.sender, sys.stdin.buffer, spool,
                    time.time())


if __name__ == "__main__":
    raise SystemExit(main())
