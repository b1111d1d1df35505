"""`websms`: send an SMS through the ITSP's HTTP API; `websms queue`."""

from __future__ import annotations

from pbxhost import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("websms", "Send an SMS through an ITSP's HTTP API.", "websms.conf")
    p.add_argument("to", help="destination number")
    p.add_argument("sender", metavar="from", help="sender number")
    p.add_argument("body", help="message text")
    p.add_argument("index", nargs="?", help="ITSP interface (WEBSMS_INDEX)")
    p.parse_args(argv)
    cli.not_yet("websms", "sending")
