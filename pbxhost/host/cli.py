"""`pbxhost`: host tasks (seeding /srv/etc, TLS certificates, health)."""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path

from pbxhost import cli, service, settings
from pbxhost.host import renew, seed, status, tls


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("pbxhost", "Set up the host: seed the configuration, make certificates.",
                   "asterisk.conf")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    seed_p = sub.add_parser(
        "seed", help="copy the default configuration into an empty config dir",
        description="Copy the default configuration into DEST when it is empty (FORCE_CONFIG: "
        "copy the files missing from it), generating every password and AMI secret; "
        "HOSTNAME sets the SIP domain and external addresses.")
    seed_p.add_argument("--dest", type=Path, default=seed.DEST,
                        help=f"config dir (default {seed.DEST})")
    seed_p.add_argument("--diff", action="store_true",
                        help="copy nothing: show DEST's files against the defaults as a "
                        "seeding would write them now (after an upgrade: what changed), "
                        "secrets masked; exit 0 when the same, 1 when not, 2 on trouble")
    tls_p = sub.add_parser(
        "tls", help="make, renew or take from acme.json Asterisk's TLS certificate",
        description="Keep a valid certificate and key in DEST for HOSTNAME: taken from the "
        "Traefik acme.json ACME_FILE when it has one (then ACME_POSTHOOK runs), else "
        "self-signed (TLS_KEYBITS, TLS_CERTDAYS) and renewed when a third of its life or "
        "7 days are left; a running Asterisk then serves it (module reload res_pjsip.so). "
        "Exit 1: ACME_FILE unusable (the pair in place stays) or no reload; 78: a bad setting.")
    tls_p.add_argument("--dest", type=Path, default=tls.DEST,
                       help=f"certificate dir (default {tls.DEST})")
    tls_p.add_argument("--no-reload", action="store_true",
                       help="neither reload Asterisk nor run ACME_POSTHOOK")
    tls_p.add_argument("--asterisk", metavar="CMD", default=shlex.join(renew.ASTERISK),
                       help="the command reaching Asterisk's CLI, -rx is added "
                       "(default: %(default)s)")
    tls_p.add_argument("--key-group", metavar="GROUP", default=tls.KEY_GROUP,
                       help="the group that may read the key (default %(default)s; "
                       "'': root alone)")
    status_p = sub.add_parser(
        "status", help="the PBX's health (exit 0 when healthy)",
        description="Asterisk, the AMI logins, autoban's table, websmsd, the seeding and the "
        "TLS certificate on one screen; exit 0 when healthy, 1 naming what is not (the "
        "container's health check).")
    status_p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    if args.command == "seed":
        return run_diff(args.dest) if args.diff else run_seed(args.dest)
    if args.command == "status":
        return status.main(args.json)
    return run_tls(renew.Options(args.dest, not args.no_reload, shlex.split(args.asterisk),
                                 args.key_group))


def _seed_logging() -> None:
    """The journal for the migrations' NOTICE and WARNING lines. A bad
    SYSLOG_LEVEL or PBXHOST_LOG (named once by setup_logging) stops the daemons,
    not the seeding: /srv is still seeded, logging at NOTICE."""
    try:
        service.setup_logging("pbxhost-seed")
    except SystemExit:
        logging.getLogger().setLevel(service.NOTICE)


def run_seed(dest: Path) -> int:
    _seed_logging()
    try:
        result = seed.seed(dest, env=os.environ)
    except settings.SettingError as exc:
        cli.fail("pbxhost seed", str(exc), settings.EX_CONFIG)
    except (seed.SeedError, OSError) as exc:
        cli.fail("pbxhost seed", str(exc))
    # The journal keeps the report; the passwords are only in the secrets file.
    print(result.report(), flush=True)
    return 0


def run_diff(dest: Path) -> int:
    try:
        result = seed.diff(dest, env=os.environ)
    except settings.SettingError as exc:
        cli.fail("pbxhost seed --diff", str(exc), settings.EX_CONFIG)
    except (seed.SeedError, OSError) as exc:
        cli.fail("pbxhost seed --diff", str(exc), 2)
    print(result.report(), flush=True)
    return 0 if result.same else 1
def run_tls(opts: renew.Options) -> int:
    log = service.setup_logging("pbxhost-tls")
    try:
        return renew.run(os.environ, opts)
    except settings.SettingError as exc:
        service.config_error(log, exc)
    except (tls.TlsError, OSError) as exc:
        log.error("%s: %s", opts.dest, exc)
        return 1
