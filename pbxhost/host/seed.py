"""Seeding: the default configuration suite copied into the config dir.

The defaults (etc/asterisk/ of the source tree, /usr/share/pbxhost/asterisk
when installed) are copied into an empty config dir, once: a lock file there
stops a second seeding. With FORCE_CONFIG set, files missing from a non-empty
dir are copied; a file that exists is never touched.

Nothing shipped is a usable credential: every empty SIP password of a user
(inbound_auth/password) and the AMI secrets of autoban and websms are
generated here. An AMI secret lives in two files (manager.conf and
autoban.conf / websms.conf) and both always get the same value: when one of
them already exists, its secret is taken over.

A seeding cut short is completed by the next run: the files are first
written, secrets and all, to a staging dir inside the config dir, marked
complete, then moved into place one by one (os.replace, never over an
existing file), and only then is the lock written.

A dir seeded before (or the user's own) gets the migrations of
pbxhost.host.migrate at every run: an earlier release's flaw in a seeded
file fixed where its text is unedited, else named in a warning.
"""

from __future__ import annotations

import difflib
import grp
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pbxhost import conf, settings
from pbxhost.durable import atomic_writer, fsync_dir
from pbxhost.host import migrate

log = logging.getLogger("pbxhost.seed")

DEST = Path("/srv/etc/asterisk")
# The defaults: the source tree's etc/asterisk when run from it, else where
# `make install-data` (packages) or pip (a venv: <prefix>/share) put them.
_SOURCE_TREE = Path(__file__).resolve().parents[2] / "etc" / "asterisk"
INSTALLED = Path("/usr/share/pbxhost/asterisk")
_PIP_PREFIX = Path(sys.prefix) / "share" / "pbxhost" / "asterisk"
DEFAULTS = next((p for p in (_SOURCE_TREE, _PIP_PREFIX) if p.is_dir()), INSTALLED)

LOCK = ".pbxhost-seeded"
# Beside the config dir (/srv/etc/pbxhost-secrets), root only: the generated SIP
# passwords, never printed (the journal is readable by groups adm and systemd-journal).
SECRETS = "pbxhost-secrets"
STAGING = ".pbxhost-seeding"
COMPLETE = ".complete"   # in STAGING: all files written; holds what is to be reported
# Who may read a seeded file: (owner, group, mode). Asterisk reads the suite;
# autoban.conf is root's alone; websms.conf holds the ITSP credentials: websmsd's
# (owner websms) and root's (group root: autoband is root without
# CAP_DAC_OVERRIDE and reads websms's remt_addr), never Asterisk's, whose user is
# in group websms only to hand SMS to the spool. A missing user or group (a
# host without websms) leaves root's.
SUITE_ACCESS = ("root", "asterisk", 0o640)
ACCESS = {"autoban.conf": ("root", "root", 0o600), "websms.conf": ("websms", "root", 0o640)}
# (AMI user in manager.conf, the file holding its secret in [asmanager])
AMI_PAIRS = (("autoban", "autoban.conf"), ("websms", "websms.conf"))
# pjsip_transport.conf keys that HOSTNAME fills.
HOSTNAME_KEYS = ("domain", "external_signaling_address", "external_media_address")
USER_FILE = "pjsip_endpoint.conf"
USER_PASSWORD_KEY = "inbound_auth/password"


class SeedError(Exception):
    """The defaults or the config dir are unusable."""


@dataclass
class SeedResult:
    dest: Path
    copied: list[str] = field(default_factory=list)
    passwords: dict[str, str] = field(default_factory=dict)  # SIP user -> password
    ami_users: list[str] = field(default_factory=list)       # AMI secrets generated
    warnings: list[str] = field(default_factory=list)
    skipped: str = ""                                         # why nothing was done

    @property
    def secrets_file(self) -> Path:
        return self.dest.parent / SECRETS

    def report(self) -> str:
        """The one report of a seeding: what was copied and where the generated
        passwords are (not the passwords: the report goes to the journal)."""
        if self.skipped:
            return f"{self.dest}: not seeded: {self.skipped}"
        lines = [f"{self.dest}: seeded {len(self.copied)} files"]
        if self.passwords:
            lines.append(f"SIP passwords generated for {', '.join(sorted(self.passwords))}: "
                         f"in {self.secrets_file} (root only)")
        lines += [f"AMI user {u}: secret generated (manager.conf and {u}.conf)"
                  for u in self.ami_users]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# ---------------------------------------------------------------- editing config text
# Seeding edits the shipped text line by line, so every comment stays where it is.

_HEADER = re.compile(r"^\s*\[([^\]]+)\]\s*(?:\(([^)]*)\))?")


@dataclass(frozen=True)
class _Span:
    name: str
    template: bool  # [name](!...): not an object of its own
    start: int      # the header line
    end: int        # the next header line (or the end)


def _sections(lines: list[str]) -> list[_Span]:
    heads = [(i, m) for i, line in enumerate(lines) if (m := _HEADER.match(line))]
    ends = [i for i, _ in heads[1:]] + [len(lines)]
    return [_Span(m.group(1).strip(), "!" in (m.group(2) or ""), i, end)
            for (i, m), end in zip(heads, ends, strict=True)]


def _option(key: str) -> re.Pattern[str]:
    return re.compile(rf"^\s*{re.escape(key)}\s*=>?\s*(?P<value>[^;]*?)\s*(?:;.*)?$")


def set_option(text: str, section: str, key: str, value: str) -> str:
    """TEXT with `key = value` in [SECTION]: an existing line of KEY is replaced,
    else a commented-out `; key = ...` placeholder, else a line after the header."""
    lines = text.splitlines(keepends=True)
    span = next((s for s in _sections(lines) if s.name == section), None)
    if span is None:
        raise SeedError(f"no section [{section}]")
    placeholder = re.compile(rf"^\s*;\s*{re.escape(key)}\s*=")
    for pattern in (_option(key), placeholder):
        for i in range(span.start + 1, span.end):
            if pattern.match(lines[i]):
                lines[i] = f"{key} = {value}\n"
                return "".join(lines)
    lines.insert(span.start + 1, f"{key} = {value}\n")
    return "".join(lines)


def empty_option_sections(text: str, key: str) -> list[str]:
    """Objects (not templates) that set KEY to nothing."""
    lines = text.splitlines()
    pattern = _option(key)
    return [s.name for s in _sections(lines) if not s.template
            and any((m := pattern.match(lines[i])) and not m["value"]
                    for i in range(s.start + 1, s.end))]


def get_option(path: Path, section: str, key: str) -> str:
    """KEY of [SECTION] in an existing config file ("" when absent)."""
    found = conf.load(path).section(section)
    return (found.get(key) or "") if found is not None else ""


# ---------------------------------------------------------------- what is generated


def _new_secret() -> str:
    return secrets.token_urlsafe(18)


def fill_user_passwords(text: str) -> tuple[str, dict[str, str]]:
    """Every user of pjsip_endpoint.conf with an empty inbound_auth/password
    gets a generated one."""
    generated = {user: _new_secret() for user in empty_option_sections(text, USER_PASSWORD_KEY)}
    for user, password in generated.items():
        text = set_option(text, user, USER_PASSWORD_KEY, password)
    return text, generated


def fill_hostname(text: str, hostname: str) -> str:
    """pjsip_transport.conf with HOSTNAME (checked by settings.hostname) as domain
    and external addresses wherever a section sets them (commented lines stay)."""
    keys = "|".join(HOSTNAME_KEYS)
    return re.sub(rf"(?m)^(\s*)({keys})\s*=.*$", lambda m: f"{m[1]}{m[2]} = {hostname}", text)


def pair_ami_secrets(texts: dict[str, str], dest: Path, result: SeedResult) -> None:
    """Give each AMI user the same secret in manager.conf and in its own file.
    TEXTS are the files about to be written; the others exist in DEST."""
    for user, other in AMI_PAIRS:
        writing_manager, writing_other = "manager.conf" in texts, other in texts
        if not (writing_manager or writing_other):
            continue
        if writing_manager and writing_other:
            secret = _new_secret()
            result.ami_users.append(user)
        elif writing_manager:
            secret = _existing(dest / other, "asmanager", "secret")
        else:
            secret = _existing(dest / "manager.conf", user, "secret")
        if not secret:
            result.warnings.append(
                f"AMI user {user}: no secret in the existing "
                f"{other if writing_manager else 'manager.conf'}; set the same one in both files")
            continue
        if writing_manager:
            texts["manager.conf"] = set_option(texts["manager.conf"], user, "secret", secret)
        if writing_other:
            texts[other] = set_option(texts[other], "asmanager", "secret", secret)


def _existing(path: Path, section: str, key: str) -> str:
    try:
        return get_option(path, section, key) if path.exists() else ""
    except conf.ConfigError as exc:
        log.warning("%s", exc)
        return ""


# ---------------------------------------------------------------- the seeding


def _user_files(dest: Path) -> list[str]:
    return [p.name for p in dest.iterdir() if p.name not in (LOCK, STAGING)]


def _defaults(source: Path) -> dict[str, str]:
    files = {p.name: p.read_text() for p in sorted(source.glob("*.conf"))}
    if not files:
        raise SeedError(f"no default configuration in {source}")
    return files


def _render(source: Path, dest: Path, env: Mapping[str, str],
            result: SeedResult) -> dict[str, str]:
    """The texts of the files to copy (those missing from DEST), secrets filled."""
    texts = {name: text for name, text in _defaults(source).items()
             if not (dest / name).exists()}
    hostname = settings.hostname(env)
    if hostname and "pjsip_transport.conf" in texts:
        texts["pjsip_transport.conf"] = fill_hostname(texts["pjsip_transport.conf"], hostname)
    if USER_FILE in texts:
        texts[USER_FILE], result.passwords = fill_user_passwords(texts[USER_FILE])
    pair_ami_secrets(texts, dest, result)
    return texts


def _write_private(path: Path, text: str, mode: int, uid: int = -1, gid: int = -1) -> None:
    """Create PATH with MODE before any secret is written into it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as out:
        os.fchown(out.fileno(), uid, gid)
        os.fchmod(out.fileno(), mode)  # whatever the umask
        out.write(text)
        out.flush()
        os.fsync(out.fileno())


def _access(name: str) -> tuple[int, int, int]:
    """(mode, uid, gid) of a seeded file; -1 keeps root's when the user or group
    does not exist (yet)."""
    owner, group, mode = ACCESS.get(name, SUITE_ACCESS)
    try:
        uid = pwd.getpwnam(owner).pw_uid
    except KeyError:
        uid = -1
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        gid = -1
    return mode, uid, gid


def _stage(staging: Path, texts: dict[str, str], result: SeedResult) -> None:
    """All files in STAGING, then the mark that they are complete, which keeps the
    generated secrets to report should the install be cut short."""
    shutil.rmtree(staging, ignore_errors=True)  # a staging cut short: start it again
    staging.mkdir(mode=0o700)
    for name, text in texts.items():
        _write_private(staging / name, text, *_access(name))
    fsync_dir(staging)  # every staged file is there before the mark says so
    pending = {"passwords": result.passwords, "ami_users": result.ami_users}
    _write_private(staging / COMPLETE, json.dumps(pending), 0o600)


def _resume(staging: Path, result: SeedResult) -> None:
    pending = json.loads((staging / COMPLETE).read_text() or "{}")
    result.passwords = dict(pending.get("passwords", {}))
    result.ami_users = list(pending.get("ami_users", []))
    result.warnings.append("completed a seeding that was cut short")


def _install(staging: Path, dest: Path) -> Iterator[str]:
    """Move the staged files into DEST (never over an existing file), then lock."""
    for path in sorted(staging.iterdir()):
        if path.name != COMPLETE and not (dest / path.name).exists():
            os.replace(path, dest / path.name)
            yield path.name
    fsync_dir(dest)  # every file is in place before the lock says so
    _write_private(dest / LOCK, "seeded by pbxhost\n", 0o644)
    shutil.rmtree(staging)


def write_secrets(result: SeedResult) -> None:
    """The generated SIP passwords, once, in a root-only file beside the config dir."""
    if not result.passwords:
        return
    with atomic_writer(result.secrets_file, 0o600) as f:
        f.write(f"# SIP passwords generated by `pbxhost seed` for {result.dest}.\n"
                "# Asterisk reads them from pjsip_endpoint.conf: change them there.\n")
        f.writelines(f"{user} = {pw}\n" for user, pw in sorted(result.passwords.items()))


def parse_secrets(text: str) -> dict[str, str]:
    """The SIP passwords in a secrets file's TEXT, as write_secrets wrote them."""
    return dict(line.split(" = ", 1) for line in text.splitlines()
                if " = " in line and not line.startswith("#"))


def seed(dest: Path = DEST, source: Path = DEFAULTS,
         env: Mapping[str, str] = os.environ) -> SeedResult:
    """Seed DEST from SOURCE; see the module's doc for the rules."""
    result = SeedResult(dest)
    if not dest.exists():
        # whatever the umask: Asterisk and websms must reach their files, which
        # carry their own modes (0640 to a group, 0600)
        dest.mkdir(parents=True)
        dest.chmod(0o755)
    staging = dest / STAGING
    if (staging / COMPLETE).exists():
        _resume(staging, result)
        result.copied = list(_install(staging, dest))
        write_secrets(result)
        return result
    if (dest / LOCK).exists() or _user_files(dest):
        migrate.apply(dest)  # logged: a NOTICE per file fixed, a WARNING per flaw left
    force = settings.force_config(env)
    if (dest / LOCK).exists() and not force:
        result.skipped = f"already seeded ({LOCK} exists; FORCE_CONFIG copies missing files)"
        return result
    if _user_files(dest) and not force:
        result.skipped = "the config dir is not empty (FORCE_CONFIG copies missing files)"
        return result
    texts = _render(source, dest, env, result)
    _stage(staging, texts, result)
    result.copied = list(_install(staging, dest))
    write_secrets(result)
    return result


# ---------------------------------------------------------------- seed --diff
# After an upgrade the defaults may have changed, but seeding never rewrites a
# file of the config dir: `pbxhost seed --diff` shows the user's files against
# the defaults as a seeding would write them now. Secrets never show: every
# value of a key named *secret or *password (and minivm-send's -p in mailcmd)
# is masked on both sides, and the defaults get the seed's generated secrets
# (masked) where it puts them. So a generated secret is no difference, a secret
# the user set where the default has none shows as a masked line, and the diff
# never prints a secret. HOSTNAME is the environment's, else the one the
# seeding wrote (the user's external_signaling_address, empty in the defaults):
# a shell has no pbxhost.env, and the seeded host name is no difference either.

MASK = "********"
_ASSIGNMENT = re.compile(r"^(?P<head>\s*(?P<key>[\w/.-]+)\s*(?:\[[^\]]*\]\s*)?=>?\s*)"
                         r"(?P<value>[^;\n]*?)(?P<tail>\s*(?:;.*)?)$")
_PASSWORD_OPTION = re.compile(r"(\s(?:-p|--password)(?:\s+|=))(?!-)\S+")


def mask_secrets(text: str) -> str:
    """TEXT with every secret value replaced by MASK (empty values stay empty)."""
    out = []
    for line in text.splitlines(keepends=True):
        m = _ASSIGNMENT.match(line.rstrip("\n"))
        if m and m["value"]:
            key = m["key"].lower()
            if key.endswith(("secret", "password")):
                line = f"{m['head']}{MASK}{m['tail']}" + ("\n" if line.endswith("\n") else "")
            elif key == "mailcmd":
                line = _PASSWORD_OPTION.sub(rf"\g<1>{MASK}", line)
        out.append(line)
    return "".join(out)


def seeded_defaults(source: Path = DEFAULTS,
                    env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The defaults as a seeding would write them now (HOSTNAME applied, every
    generated secret in place), secrets masked."""
    texts = _defaults(source)
    hostname = settings.hostname(env)
    if hostname and "pjsip_transport.conf" in texts:
        texts["pjsip_transport.conf"] = fill_hostname(texts["pjsip_transport.conf"], hostname)
    if USER_FILE in texts:
        texts[USER_FILE], _ = fill_user_passwords(texts[USER_FILE])
    for user, other in AMI_PAIRS:
        if "manager.conf" in texts:
            texts["manager.conf"] = set_option(texts["manager.conf"], user, "secret", MASK)
        if other in texts:
            texts[other] = set_option(texts[other], "asmanager", "secret", MASK)
    return {name: mask_secrets(text) for name, text in texts.items()}


@dataclass
class SeedDiff:
    dest: Path
    source: Path
    changed: dict[str, str] = field(default_factory=dict)  # file -> unified diff
    only_defaults: list[str] = field(default_factory=list)  # FORCE_CONFIG would copy them
    only_dest: list[str] = field(default_factory=list)      # the user's own files

    @property
    def same(self) -> bool:
        return not (self.changed or self.only_defaults or self.only_dest)

    def report(self) -> str:
        if self.same:
            return f"{self.dest}: the same as the defaults in {self.source} (secrets aside)"
        parts = [self.changed[name] for name in sorted(self.changed)]
        parts += [f"only in the defaults: {name} (FORCE_CONFIG=1 `pbxhost seed` copies it)\n"
                  for name in self.only_defaults]
        parts += [f"only in {self.dest}: {name}\n" for name in self.only_dest]
        return "".join(parts).rstrip("\n")


def diff(dest: Path = DEST, source: Path = DEFAULTS,
         env: Mapping[str, str] = os.environ) -> SeedDiff:
    """DEST's files against the defaults as seeded now: `---` is the user's
    file, `+++` the default (a `+` line is in the default, not in DEST)."""
    if not dest.is_dir():
        raise SeedError(f"{dest} does not exist: nothing seeded to compare")
    defaults = seeded_defaults(source, {**env, "HOSTNAME": _seeded_hostname(dest, env)})
    mine = {p.name for p in dest.iterdir()
            if p.is_file() and not p.name.startswith(".")} - {SECRETS}
    result = SeedDiff(dest, source)
    result.only_defaults = sorted(set(defaults) - mine)
    result.only_dest = sorted(mine - set(defaults))
    for name in sorted(mine & set(defaults)):
        text = mask_secrets((dest / name).read_text(errors="replace"))
        lines = difflib.unified_diff(
            _lines(text), _lines(defaults[name]),
            fromfile=str(dest / name), tofile=f"{source / name} (default)")
        if patch := "".join(lines):
            result.changed[name] = patch
    return result


def _seeded_hostname(dest: Path, env: Mapping[str, str]) -> str:
    if hostname := settings.hostname(env):
        return hostname
    try:
        text = (dest / "pjsip_transport.conf").read_text(errors="replace")
    except FileNotFoundError:
        return ""
    found = re.search(r"(?m)^\s*external_signaling_address\s*=\s*([^\s;]+)", text)
    try:  # a value the seeding could not have written is no HOSTNAME: it shows
        return settings.hostname({"HOSTNAME": found[1]}) if found else ""
    except settings.SettingError:
        return ""


def _lines(text: str) -> list[str]:
    """Lines that all end in a newline, so a missing last one makes no odd diff."""
    return [line if line.endswith("\n") else line + "\n" for line in text.splitlines()]
