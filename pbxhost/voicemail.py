"""`minivm-send`: send the voicemail e-mail Asterisk pipes to MiniVM's mailcmd."""

from __future__ import annotations

from pbxhost import cli

PROTOCOLS = ("smtp", "smtps", "tls", "starttls")


def main(argv: list[str] | None = None) -> int:
    # -h is help and -H the host, as in the seed's minivm-send.
    p = cli.parser("minivm-send", "Send a mail read from stdin over SMTP.", "minivm.conf")
    p.add_argument("-H", dest="host", metavar="HOST:PORT", required=True, help="mail server")
    p.add_argument("-P", dest="protocol", choices=PROTOCOLS, default="smtp", help="protocol")
    p.add_argument("-u", dest="username", help="user name for AUTH")
    p.add_argument("-p", dest="password", help="password for AUTH")
    p.add_argument("-f", dest="sender", metavar="FROM", help="MAIL FROM address")
    p.add_argument("-e", dest="echo", action="store_true", help="also log to stdout")
    p.parse_args(argv)
    cli.not_yet("minivm-send", "sending mail")
