"""The one reader of Asterisk-dialect config files (autoban.conf, websms.conf, pjsip*.conf, ...).

Supports comments (`;`, `\\;`, `;-- block --;`), sections, templates and inheritance
(`[s](!,tpl)`, `[s](+)`), `key = value` / `key => value`, indexed keys (`key [idx] = v`,
`key [] = v`) and `#include` / `#tryinclude` with globs. Every error is a ConfigError that
names the file and line of the offending text.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")

STRING_PATH = "<string>"  # pseudo path used by loads(); includes resolve against the cwd


class ConfigError(Exception):
    """Any problem in a config file; str() is "PATH:LINE: message"."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message, path, line)  # all args kept so the error survives pickling
        self.message = message
        self.path = path
        self.line = line

    def __str__(self) -> str:
        where = self.path or ""
        if self.path is not None and self.line is not None:
            where = f"{self.path}:{self.line}"
        return f"{where}: {self.message}" if where else self.message


@dataclass(frozen=True)
class Item:
    key: str
    value: str
    index: str | None  # None for a plain key, else the (string) index of `key [idx] = value`
    path: str  # origin of the item, kept through inheritance for error messages
    line: int


# ---------------------------------------------------------------- value parsers

_BOOLS = {"yes": True, "true": True, "on": True, "1": True,
          "no": False, "false": False, "off": False, "0": False}
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", re.I | re.A)
_INT = re.compile(r"[+-]?\d+", re.A)
_FLOAT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?", re.I | re.A)


def parse_bool(text: str) -> bool:
    try:
        return _BOOLS[text.strip().lower()]
    except KeyError:
        expected = "yes/no, true/false, on/off or 1/0"
        raise ValueError(f"not a boolean: {text!r} (use {expected})") from None


def parse_duration(text: str) -> int:
    """Seconds from `90` or `1d2h3m4s`-style groups (units d,h,m,s in that order, each once)."""
    s = text.strip()
    if s.isascii() and s.isdigit():
        return int(s)
    m = _DURATION.fullmatch(s)
    if not s or m is None:
        raise ValueError(f"not a duration: {text!r} (use seconds or e.g. 90, 20m, 1d2h3m4s)")
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _parse_int(text: str) -> int:
    # stricter than int(): no "1_000", no non-ASCII digits
    if not _INT.fullmatch(text.strip()):
        raise ValueError(f"not an integer: {text!r}")
    return int(text)


def _parse_float(text: str) -> float:
    # stricter than float(): no "nan"/"inf", no "1_0"
    if not _FLOAT.fullmatch(text.strip()):
        raise ValueError(f"not a number: {text!r}")
    return float(text)


def _unbracket(text: str) -> str:
    return text[1:-1] if text.startswith("[") and text.endswith("]") else text


def _parse_network(entry: str) -> list[Network]:
    if "-" in entry:  # range a-b; "-" never occurs in an IPv4/IPv6 address
        lo, hi = (ipaddress.ip_address(_unbracket(part)) for part in entry.split("-", 1))
        if lo.version != hi.version:
            raise ValueError("range mixes IPv4 and IPv6")
        if lo > hi:  # type: ignore[operator]  # same family checked above
            raise ValueError("range start is after its end")
        return list(ipaddress.summarize_address_range(lo, hi))
    addr, slash, prefix = entry.partition("/")
    return [ipaddress.ip_network(_unbracket(addr) + slash + prefix, strict=False)]


def parse_networks(text: str) -> list[Network]:
    """Addresses, CIDR prefixes and a-b ranges, separated by commas and/or whitespace."""
    networks: list[Network] = []
    for entry in re.split(r"[\s,]+", text.strip()):
        if entry:
            try:
                networks.extend(_parse_network(entry))
            except ValueError as e:
                raise ValueError(f"bad network entry {entry!r}: {e}") from None
    return networks


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


# ---------------------------------------------------------------- model


@dataclass
class Section:
    name: str
    templates: tuple[str, ...]
    is_template: bool
    path: str
    line: int
    items: list[Item] = field(default_factory=list)  # inherited first, then own

    # Option names are case-insensitive in Asterisk, so every lookup compares lowered keys.
    def _matching(self, key: str, idx: str | None = None) -> list[Item]:
        k = key.lower()
        return [i for i in self.items if i.index == idx and i.key.lower() == k]

    def _find(self, key: str, idx: str | None = None) -> Item | None:
        found = self._matching(key, idx) if idx is not None else []
        found = found or self._matching(key)  # an index falls back to the plain key
        return found[-1] if found else None

    def get(self, key: str, default: str | None = None) -> str | None:
        found = self._matching(key)
        return found[-1].value if found else default

    def getall(self, key: str) -> list[str]:
        return [i.value for i in self._matching(key)]

    def __contains__(self, key: str) -> bool:
        return bool(self._matching(key))

    def keys(self) -> list[str]:
        seen: dict[str, str] = {}
        for i in self.items:
            if i.index is None:
                seen.setdefault(i.key.lower(), i.key)
        return list(seen.values())

    def indexed(self, key: str, idx: str, default: str | None = None) -> str | None:
        item = self._find(key, idx)
        return item.value if item else default

    def indexes(self) -> list[str]:
        return list(dict.fromkeys(i.index for i in self.items if i.index is not None))

    def _typed(self, key: str, default: T | None, idx: str | None,
               parse: Callable[[str], T]) -> T | None:
        item = self._find(key, idx)
        if item is None:
            return default
        try:
            return parse(_unquote(item.value))
        except ValueError as e:
            label = item.key if item.index is None else f"{item.key} [{item.index}]"
            raise ConfigError(f"{label}: {e}", item.path, item.line) from None

    def get_bool(self, key: str, default: bool | None = None,
                 idx: str | None = None) -> bool | None:
        return self._typed(key, default, idx, parse_bool)

    def get_int(self, key: str, default: int | None = None, idx: str | None = None) -> int | None:
        return self._typed(key, default, idx, _parse_int)

    def get_float(self, key: str, default: float | None = None,
                  idx: str | None = None) -> float | None:
        return self._typed(key, default, idx, _parse_float)

    def get_duration(self, key: str, default: int | None = None,
                     idx: str | None = None) -> int | None:
        return self._typed(key, default, idx, parse_duration)

    def get_str(self, key: str, default: str | None = None, idx: str | None = None) -> str | None:
        return self._typed(key, default, idx, str)

    def get_networks(self, key: str, default: list[Network] | None = None,
                     idx: str | None = None) -> list[Network] | None:
        return self._typed(key, default, idx, parse_networks)


@dataclass
class Config:
    path: str
    sections: list[Section]  # ordinary sections in file order (no templates)
    templates: dict[str, Section]

    def sections_named(self, name: str) -> list[Section]:
        n = name.lower()
        return [s for s in self.sections if s.name.lower() == n]

    def section(self, name: str) -> Section | None:
        found = self.sections_named(name)
        return found[0] if found else None

    def __contains__(self, name: str) -> bool:
        return bool(self.sections_named(name))


# ---------------------------------------------------------------- parser

_HEADER = re.compile(r"\[(?P<name>[^\]]*)\]\s*(?:\((?P<opts>[^)]*)\))?")
_ITEM = re.compile(r"(?P<key>[^\s=\[\]]+)\s*(?:\[(?P<idx>[^\]]*)\]\s*)?=>?(?P<value>.*)")
_DIRECTIVE = re.compile(r"#(?P<name>\w*)(?P<arg>.*)")
_GLOB_MAGIC = re.compile(r"[*?[]")


def _strip_comments(line: str, block_from: int | None, lineno: int) -> tuple[str, int | None]:
    """Remove comments from one line. block_from is the line where an open ;-- comment began."""
    out: list[str] = []
    i = 0
    while i < len(line):
        if block_from is not None:
            end = line.find("--;", i)
            if end < 0:
                break
            block_from, i = None, end + 3  # text after --; is parsed
        elif line.startswith("\\;", i):
            out.append(";")
            i += 2
        elif line[i] != ";":
            out.append(line[i])
            i += 1
        elif line.startswith(";--", i) and not line.startswith(";---", i):
            # like Asterisk, ";-----" separator lines are plain comments, not block openers
            block_from, i = lineno, i + 3
        else:
            break
    return "".join(out), block_from


def _next_index(section: Section, key: str) -> str:
    # `key [] = v` works like PHP's $a[] = v: highest integer index so far (inherited too) + 1
    k = key.lower()
    used = [int(i.index) for i in section.items
            if i.index is not None and i.index.isascii() and i.index.isdigit()
            and i.key.lower() == k]
    return str(max(used, default=-1) + 1)


def _read(path: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError("not valid UTF-8", path, data[: e.start].count(b"\n") + 1) from None


class _Parser:
    def __init__(self) -> None:
        self.blocks: list[Section] = []  # sections and templates, in file order
        self.current: Section | None = None  # included text continues the current section
        self.reading: list[str] = []  # real paths of files being read, to detect include loops

    def feed(self, text: str, path: str) -> None:
        real = os.path.realpath(path) if path != STRING_PATH else path
        self.reading.append(real)
        block_from: int | None = None
        for lineno, raw in enumerate(text.split("\n"), 1):
            stripped, block_from = _strip_comments(raw, block_from, lineno)
            line = stripped.strip()
            if not line:
                continue
            if line.startswith("["):
                self._header(line, path, lineno)
            elif line.startswith("#"):
                self._directive(line, path, lineno)
            else:
                self._item(line, path, lineno)
        if block_from is not None:
            raise ConfigError("unterminated ;-- block comment", path, block_from)
        self.reading.pop()

    def _lookup(self, name: str) -> Section | None:
        # the most recent section/template of that name defined so far (case-insensitive)
        n = name.lower()
        return next((b for b in reversed(self.blocks) if b.name.lower() == n), None)

    def _header(self, line: str, path: str, lineno: int) -> None:
        m = _HEADER.fullmatch(line)
        name = m["name"].strip() if m else ""
        if not m or not name:
            raise ConfigError(f"bad section header: {line}", path, lineno)
        opts = [o.strip() for o in m["opts"].split(",")] if m["opts"] is not None else []
        if "" in opts:
            raise ConfigError(f"empty option in section header: {line}", path, lineno)
        if "+" in opts:
            if len(opts) > 1:
                raise ConfigError("(+) cannot be combined with other options", path, lineno)
            self.current = self._lookup(name)
            if self.current is None:
                raise ConfigError(f"(+) appends to unknown section [{name}]", path, lineno)
            return
        bases = tuple(o for o in opts if o != "!")
        section = Section(name, bases, "!" in opts, path, lineno)
        for base_name in bases:
            base = self._lookup(base_name)
            if base is None:
                raise ConfigError(f"unknown template [{base_name}]", path, lineno)
            section.items.extend(base.items)  # already resolved, origins kept
        self.blocks.append(section)
        self.current = section

    def _item(self, line: str, path: str, lineno: int) -> None:
        m = _ITEM.fullmatch(line)
        if not m:
            raise ConfigError(f"expected 'key = value', got: {line}", path, lineno)
        if self.current is None:
            raise ConfigError(f"'{m['key']}' is not inside any [section]", path, lineno)
        key, idx = m["key"], m["idx"]
        if idx is not None:
            idx = idx.strip() or _next_index(self.current, key)
        self.current.items.append(Item(key, m["value"].strip(), idx, path, lineno))

    def _directive(self, line: str, path: str, lineno: int) -> None:
        m = _DIRECTIVE.fullmatch(line)
        name = m["name"].lower() if m else ""
        if name == "exec":
            raise ConfigError("#exec is not supported", path, lineno)
        if not m or name not in ("include", "tryinclude"):
            raise ConfigError(f"unknown directive: {line}", path, lineno)
        arg = m["arg"].strip()
        if len(arg) >= 2 and (arg[0], arg[-1]) in (('"', '"'), ("<", ">")):
            arg = arg[1:-1].strip()
        if not arg:
            raise ConfigError(f"#{name} needs a file name", path, lineno)
        base = os.getcwd() if path == STRING_PATH else os.path.dirname(path)
        required = name == "include"
        if _GLOB_MAGIC.search(arg):
            # root_dir keeps glob characters in the including file's directory literal
            found = glob.glob(arg, root_dir=base or None)
            matches = sorted(os.path.join(base, f) for f in found)  # absolute f replaces base
            if not matches and required:
                raise ConfigError(f"#include {arg}: no file matches", path, lineno)
        else:
            matches = [os.path.join(base, arg)]
        for match in matches:
            self._include(match, required, path, lineno)

    def _include(self, target: str, required: bool, path: str, lineno: int) -> None:
        if os.path.realpath(target) in self.reading:
            raise ConfigError(f"include loop: {target} is already being read", path, lineno)
        try:
            text = _read(target)
        except FileNotFoundError:
            if not required:
                return  # #tryinclude of a missing file is silently nothing
            raise ConfigError(f"cannot include {target}: file not found", path, lineno) from None
        except OSError as e:
            raise ConfigError(f"cannot include {target}: {e.strerror or e}", path, lineno) from None
        self.feed(text, target)


def loads(text: str, path: str = STRING_PATH) -> Config:
    """Parse config text; includes resolve against dirname(path) (the cwd for "<string>")."""
    parser = _Parser()
    parser.feed(text, path)
    sections = [b for b in parser.blocks if not b.is_template]
    templates = {b.name: b for b in parser.blocks if b.is_template}  # a redefinition wins
    return Config(path, sections, templates)


def load(path: str | os.PathLike[str]) -> Config:
    p = os.fspath(path)
    try:
        text = _read(p)
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", p) from None
    return loads(text, p)
