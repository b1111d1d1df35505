"""`pbxhost`: host tasks (seeding /srv/etc, TLS certificates)."""

from __future__ import annotations

from pathlib import Path

from pbxhost import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("pbxhost", "Set up the host: seed the configuration, make certificates.",
                   "asterisk.conf")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    seed = sub.add_parser("seed", help="copy the default configuration into an empty dir")
    seed.add_argument("--dest", type=Path, help="config dir (default /srv/etc/asterisk)")
    sub.add_parser("tls", help="make or extract the TLS certificate")
    args = p.parse_args(argv)
    cli.not_yet("pbxhost", args.command)
