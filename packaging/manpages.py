"""Write a man page (section 1) for each command of setup.cfg's console_scripts,
made from its --help, so the pages never disagree with the commands.

Usage: python3 packaging/manpages.py OUTDIR  (run from the source tree)"""

from __future__ import annotations

import configparser
import contextlib
import importlib
import io
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commands() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict((part.strip() for part in line.split("=", 1)) for line in lines)


def help_text(target: str) -> str:
    module, func = target.split(":")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        getattr(importlib.import_module(module), func)(["--help"])
    return out.getvalue()


def roff(text: str) -> str:
    """TEXT as literal roff lines: backslashes doubled, no line read as a request."""
    return "\n".join("\\&" + line.replace("\\", "\\e") for line in text.splitlines())


def page(name: str, text: str, version: str) -> str:
    usage, _, rest = text.partition("\n\n")
    summary = rest.strip().split("\n\n")[0].replace("\n", " ").split(". ")[0].rstrip(".")
    return (f'.TH {name.upper()} 1 "" "pbxhost {version}" "pbxhost"\n'
            f".SH NAME\n{name} \\- {summary.replace(chr(92), '')}\n"
            f".SH SYNOPSIS\n.nf\n{roff(usage.removeprefix('usage: '))}\n.fi\n"
            f".SH DESCRIPTION\n.nf\n{roff(rest.rstrip())}\n.fi\n"
            ".SH SEE ALSO\n/usr/share/doc/pbxhost/\n")


def main(argv: list[str]) -> int:
    outdir = Path(argv[1])
    outdir.mkdir(parents=True, exist_ok=True)
    os.environ["COLUMNS"] = "80"  # argparse wraps to it: the same page on every machine
    sys.path.insert(0, str(ROOT))
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    version = cfg["metadata"]["version"]
    for name, target in commands().items():
        (outdir / f"{name}.1").write_text(page(name, help_text(target), version))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
