"""One run of `pbxhost tls`: finish a pair cut short, take ACME's certificate
or make/renew the self-signed one, then have Asterisk serve it and run the
admin's ACME_POSTHOOK.

Run at boot before Asterisk, daily by pbxhost-tls.timer and whenever the
acme.json changes (pbxhost-acme.path). Exit status: 0 when the pair in place
is usable, 1 when ACME_FILE could not be used (one error line says why; the
pair in place stays) or Asterisk did not reload, 78 for a bad setting."""

from __future__ import annotations

import datetime as dt
import grp
import logging
import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pbxhost import settings
from pbxhost.host import acme, tls

log = logging.getLogger("pbxhost.tls")

ASTERISK = ("asterisk", "-C", "/srv/etc/asterisk/asterisk.conf")
# Asterisk 22 restarts a TLS transport's listener on this reload when its
# cert_file/priv_key_file keep their names and their size or mtime changed
# (res_pjsip config_transport.c; allow_reload = no stays on the transports, so
# no other transport is restarted). Calls and connections in progress stay up.
RELOAD = "module reload res_pjsip.so"
POSTHOOK_UNIT = "pbxhost-acme-posthook.service"
NOT_RUNNING = "Unable to connect to remote asterisk"


@dataclass(frozen=True)
class Options:
    dest: Path = tls.DEST
    reload: bool = True                    # tell Asterisk and run the posthook
    asterisk: Sequence[str] = ASTERISK     # how to reach Asterisk's CLI (-rx is added)
    key_group: str = tls.KEY_GROUP         # "": the key stays root's alone


def run(env: Mapping[str, str] = os.environ, opts: Options = Options(),
        now: dt.datetime | None = None) -> int:
    """settings.SettingError for a bad setting; else the exit status (module doc)."""
    hostname = settings.hostname(env)
    keybits, certdays = settings.tls_keybits(env), settings.tls_certdays(env)
    acme_file, posthook = settings.acme_file(env), settings.acme_posthook(env)
    if acme_file is not None and not hostname:
        raise settings.SettingError("HOSTNAME", "", "ACME_FILE is set: HOSTNAME names the "
                                    "certificate to take from it")
    hostname = hostname or socket.getfqdn()
    now = now or tls.utcnow()
    status = 0
    gid = _gid(opts.key_group)
    tls.make_dir(opts.dest, gid)
    with tls.locked(opts.dest):
        if done := tls.recover(opts.dest):
            log.warning("%s: %s", opts.dest, done)
        current, broken = tls.read_current(opts.dest, now)
        from_acme = None
        if acme_file is not None:
            from_acme, status = _from_acme(acme_file, hostname, now)
        step = tls.plan(current, broken, from_acme, hostname, certdays, now)
        if step.action == "keep":
            log.info("%s: kept: %s", opts.dest, step.reason)
            _warn_if_ending(current, now)
            return status
        pair = step.pair if step.action == "install" else tls.self_signed(
            hostname, keybits, certdays, now)
        assert pair is not None
        tls.install(pair, opts.dest, gid)
    info = pair.info(now)
    log.log(25, "%s: new certificate from %s (%s): %s, serial %x, until %s UTC (%s)",
            opts.dest, pair.source, ", ".join(info.names), info.subject, info.serial,
            f"{info.not_after:%Y-%m-%d %H:%M}", step.reason)
    if opts.reload:
        if not reload_asterisk(opts.asterisk):
            status = 1
        if step.action == "install" and posthook:
            start_posthook(posthook)
    return status


def _from_acme(path: Path, hostname: str, now: dt.datetime) -> tuple[tls.Pair | None, int]:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        # Traefik has not written it yet (first start): not an error.
        log.warning("ACME_FILE %s does not exist (yet)", path)
        return None, 0
    except OSError as exc:
        log.error("ACME_FILE %s: %s; the certificate in place stays", path, exc.strerror)
        return None, 1
    try:
        return acme.choose(text, hostname, now), 0
    except acme.AcmeError as exc:
        log.error("ACME_FILE %s: %s; the certificate in place stays", path, exc)
        return None, 1


def _warn_if_ending(current: tls.Pair | None, now: dt.datetime) -> None:
    if current is None:
        return
    info = current.info(now)
    if not info.self_signed and info.days_left < tls.WARN_DAYS:
        log.warning("the certificate by %s ends in %d days and is not ours to renew "
                    "(ACME_FILE has no newer one)", info.issuer, info.days_left)


def _gid(group: str) -> int | None:
    if not group:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        log.warning("no group %s: the key is readable by root alone", group)
        return None


def reload_asterisk(asterisk: Sequence[str]) -> bool:
    """Have a running Asterisk serve the new pair; False when it did not reload."""
    argv = [*asterisk, "-rx", RELOAD]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        log.info("no %s command: no Asterisk to reload", argv[0])
        return True
    except subprocess.TimeoutExpired:
        log.error("Asterisk did not answer %r within 30 s; it serves the new certificate "
                  "after a restart", RELOAD)
        return False
    out = " ".join((r.stdout + r.stderr).split())
    if NOT_RUNNING in out:
        log.info("Asterisk is not running: it reads the new certificate when it starts")
        return True
    if r.returncode != 0 or "reloaded successfully" not in out:
        log.error("Asterisk's %r failed (%d): %s", RELOAD, r.returncode, out[:300])
        return False
    log.info("Asterisk reloaded res_pjsip: its TLS transports serve the new certificate")
    return True


def start_posthook(command: str) -> None:
    """ACME_POSTHOOK: under systemd in a unit of its own (its sandbox is not
    ours: it is the admin's command), elsewhere by sh here."""
    if Path("/run/systemd/system").is_dir():
        argv = ["systemctl", "start", "--no-block", POSTHOOK_UNIT]
    else:
        argv = ["sh", "-c", command]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("ACME_POSTHOOK not run: %s", exc)
        return
    if r.returncode != 0:
        log.error("ACME_POSTHOOK (%s) failed (%d): %s", argv[0], r.returncode,
                  " ".join((r.stdout + r.stderr).split())[:300])
    else:
        log.info("ACME_POSTHOOK %s", "started" if argv[0] == "systemctl" else "ran")
