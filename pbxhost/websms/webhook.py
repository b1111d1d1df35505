"""`websmsd`: the HTTP server for the ITSP's incoming-SMS webhook."""

from __future__ import annotations

from pbxhost import cli


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("websmsd", "Receive SMS webhooks from an ITSP and hand them to Asterisk.",
                   "websms.conf")
    p.parse_args(argv)
    cli.not_yet("websmsd", "the webhook server")
