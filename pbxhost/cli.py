"""What every command line shares: argument parsing with one-line usage errors
and the config-file lookup of the contracts (design.md)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

SRV_CONFDIR = Path("/srv/etc/asterisk")
ETC_CONFDIR = Path("/etc/asterisk")
USAGE_EXIT = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but bad usage is one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_EXIT, f"{self.prog}: error: {message} (see --help)\n")


def parser(prog: str, description: str, config_name: str | None) -> ArgumentParser:
    p = ArgumentParser(prog=prog, description=description)
    if config_name:
        p.add_argument(
            "-c", "--config", metavar="PATH", type=Path,
            help=f"config file (default: {config_name} found via $PBXHOST_CONFDIR, "
            f"{SRV_CONFDIR} or {ETC_CONFDIR})",
        )
    return p


def find_config(name: str, explicit: Path | None = None,
                env: Mapping[str, str] = os.environ) -> Path:
    """-c PATH; else $PBXHOST_CONFDIR/NAME; else /srv/etc/asterisk/NAME when that
    directory exists; else /etc/asterisk/NAME (a stock Asterisk host)."""
    if explicit is not None:
        return explicit
    if env.get("PBXHOST_CONFDIR"):
        return Path(env["PBXHOST_CONFDIR"]) / name
    if SRV_CONFDIR.is_dir():
        return SRV_CONFDIR / name
    return ETC_CONFDIR / name


def fail(prog: str, message: str, status: int = 1) -> NoReturn:
    print(f"{prog}: {message}", file=sys.stderr)
    raise SystemExit(status)


def not_yet(prog: str, what: str) -> NoReturn:
    fail(prog, f"{what} is not implemented yet")
