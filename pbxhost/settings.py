"""The host's settings: environment variables, as the seed had them, read by
systemd from /srv/etc/pbxhost.env (EnvironmentFile=) or given by hand.

Each variable has one reader here that either returns its typed value or
raises SettingError naming the variable: a service then logs that one line and
exits EX_CONFIG (78), which its unit does not restart-loop on, instead of
running with a guess."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

ENV_FILE = Path("/srv/etc/pbxhost.env")
EX_CONFIG = 78  # sysexits: configuration error
DEFAULT_SYSLOG_LEVEL = 6  # notice and worse: bans and connections show in journalctl
_HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*|[0-9A-Fa-f:.]+")
_TRUE, _FALSE = {"1", "yes", "true", "on"}, {"", "0", "no", "false", "off"}


class SettingError(ValueError):
    """A variable holds a value its reader does not accept."""

    def __init__(self, name: str, value: str, expected: str) -> None:
        super().__init__(f"{name}={value!r} in the environment ({ENV_FILE}): {expected}")
        self.name = name


def _raw(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip()


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = _raw(env, name)
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise SettingError(name, raw, f"expected a whole number from {low} to {high}")
    return int(raw)


def syslog_level(env: Mapping[str, str] = os.environ) -> int:
    """SYSLOG_LEVEL 0-8: 0 nothing, 1 emerg ... 4 err, 5 warning, 6 notice,
    7 info, 8 debug (each "or worse"); unset: 6."""
    return _int(env, "SYSLOG_LEVEL", DEFAULT_SYSLOG_LEVEL, 0, 8)


def log_to_syslog(env: Mapping[str, str] = os.environ) -> bool:
    """PBXHOST_LOG: "syslog" sends the log to the syslog socket (OpenRC hosts:
    their conf.d files set it); unset or "stderr": stderr (or the journal)."""
    raw = _raw(env, "PBXHOST_LOG").lower()
    if raw not in ("", "stderr", "syslog"):
        raise SettingError("PBXHOST_LOG", raw, "expected syslog or stderr")
    return raw == "syslog"


def websmsd_port(env: Mapping[str, str] = os.environ) -> int | None:
    """WEBSMSD_PORT: the webhook server's port. Unset or not a number: no
    webhook server (as in the seed); a number outside 1-65535 is an error."""
    raw = _raw(env, "WEBSMSD_PORT")
    if not (raw.isascii() and raw.isdigit()):
        return None
    if not 1 <= int(raw) <= 65535:
        raise SettingError("WEBSMSD_PORT", raw, "expected a port number from 1 to 65535")
    return int(raw)


def hostname(env: Mapping[str, str] = os.environ) -> str:
    """HOSTNAME: the SIP domain and external address ("" when unset)."""
    raw = _raw(env, "HOSTNAME")
    if raw and not _HOSTNAME.fullmatch(raw):
        raise SettingError("HOSTNAME", raw, "expected a host name or an IP address")
    return raw


def flag(env: Mapping[str, str], name: str) -> bool:
    raw = _raw(env, name).lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise SettingError(name, raw, "expected yes/no (1/0, true/false, on/off)")


def force_config(env: Mapping[str, str] = os.environ) -> bool:
    """FORCE_CONFIG: seed the files missing from a configured dir."""
    return flag(env, "FORCE_CONFIG")


def tls_keybits(env: Mapping[str, str] = os.environ) -> int:
    """TLS_KEYBITS: RSA key size of the self-signed certificate (default 2048)."""
    return _int(env, "TLS_KEYBITS", 2048, 2048, 16384)


def tls_certdays(env: Mapping[str, str] = os.environ) -> int:
    """TLS_CERTDAYS: validity of the self-signed certificate (default 30)."""
    return _int(env, "TLS_CERTDAYS", 30, 1, 3650)


def acme_file(env: Mapping[str, str] = os.environ) -> Path | None:
    """ACME_FILE: a Traefik acme.json to take certificates from (None: none)."""
    raw = _raw(env, "ACME_FILE")
    if raw and not raw.startswith("/"):
        raise SettingError("ACME_FILE", raw, "expected an absolute path")
    return Path(raw) if raw else None


def acme_posthook(env: Mapping[str, str] = os.environ) -> str:
    """ACME_POSTHOOK: the admin's command run after a new certificate."""
    return _raw(env, "ACME_POSTHOOK")
