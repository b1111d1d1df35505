"""`pbxhost status`: one screen on the PBX's health, and the container's health
check (exit 0 when healthy, else 1 with the failing items named).

Each check is a small function returning an Item; the verdict is pure. A part
that is not installed (its unit unknown to systemd) or that its admin disabled
is reported, never failed; a part that should run and does not is a failure."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pbxhost import ami, cli, conf, service, settings
from pbxhost.host import seed

TIMEOUT = 5.0
ASTERISK_CONF = "/srv/etc/asterisk/asterisk.conf"
FASTAGI = ("127.0.0.1", 4573)


@dataclass
class Item:
    name: str
    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- systemd units

def unit_state(unit: str) -> dict[str, str]:
    try:
        out = subprocess.run(["systemctl", "show", unit, "-p",
                              "LoadState,ActiveState,SubState,UnitFileState,StatusText"],
                             capture_output=True, text=True, timeout=TIMEOUT).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def unit_verdict(unit: str, state: Mapping[str, str]) -> Item | None:
    """An Item that settles UNIT's check (not installed, disabled, not running),
    or None when it runs and the caller goes on checking it."""
    if not state:
        return Item(unit, False, "systemd cannot be asked (not booted with systemd?)")
    if state.get("LoadState") == "not-found":
        return Item(unit, True, "not installed", {"installed": False})
    active = state.get("ActiveState", "")
    if active == "active":
        return None
    if state.get("UnitFileState") in ("disabled", "masked"):
        return Item(unit, True, f"{state['UnitFileState']} by the admin", {"active": False})
    return Item(unit, False, f"not running ({active}/{state.get('SubState', '')})")


def ami_verdict(unit: str, state: Mapping[str, str], asterisk_up: bool) -> Item | None:
    """Bad when UNIT runs but is off the AMI while Asterisk runs: it is blind
    (autoban sees no attack, websmsd cannot reach a phone); None otherwise."""
    status = state.get("StatusText", "")
    if asterisk_up and service.ami_blind(status):
        return Item(unit, False, f"running but not on the AMI: {status}")
    return None


# ---------------------------------------------------------------- the checks

def check_seed(dest: Path = seed.DEST) -> Item:
    if (dest / seed.LOCK).exists():
        return Item("seeding", True, f"{dest} seeded")
    if (dest / seed.STAGING).exists():
        return Item("seeding", False, f"{dest}: a seeding was cut short (start pbxhost-seed)")
    return Item("seeding", False, f"{dest} not seeded")


def _asterisk_rx(command: str) -> str:
    proc = subprocess.run(["asterisk", "-C", ASTERISK_CONF, "-rx", command],
                          capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode != 0 or "Unable to connect" in proc.stdout:
        raise OSError(proc.stdout.strip() or proc.stderr.strip() or "no answer")
    return proc.stdout


def check_asterisk(state: Mapping[str, str]) -> Item:
    if (verdict := unit_verdict("asterisk.service", state)) is not None:
        return verdict
    try:
        version = _asterisk_rx("core show version").strip().split(" built ")[0]
        uptime = _asterisk_rx("core show uptime seconds")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Item("asterisk.service", False, f"running but its CLI does not answer: {exc}")
    seconds = {k.strip(): v.strip() for k, _, v in
               (line.partition(":") for line in uptime.splitlines())}.get("System uptime", "")
    up = int(seconds) if seconds.isdigit() else None
    shown = f", up {_duration(up)}" if up is not None else ""
    return Item("asterisk.service", True, f"{version}{shown}",
                {"version": version, "uptime": up})


def check_ami_login(user: str, config_name: str,
                    load: Callable[[Path], ami.AmiSettings]) -> Item:
    name = f"AMI login {user}"
    path = cli.find_config(config_name)
    if not path.exists():
        return Item(name, True, f"no {path}", {"configured": False})
    try:
        login = load(path)
        error = asyncio.run(ami.check_login(login, TIMEOUT))
    except (conf.ConfigError, OSError, settings.SettingError) as exc:
        error = str(exc)
    return Item(name, error is None, error or f"{login.username}@{login.host}:{login.port} works")


def _autoban_ami(path: Path) -> ami.AmiSettings:
    from pbxhost.autoban import config
    return config.load(path).ami


def _websms_ami(path: Path) -> ami.AmiSettings:
    from pbxhost.websms import config
    return config.load(path).ami


def check_autoban(state: Mapping[str, str], asterisk_up: bool) -> Item:
    if (verdict := unit_verdict("autoban.service", state)
            or ami_verdict("autoban.service", state, asterisk_up)) is not None:
        return verdict
    from pbxhost.autoban import config
    from pbxhost.autoban.firewall import Firewall, FirewallError
    try:
        cfg = config.load(cli.find_config("autoban.conf"))
        fw = Firewall(cfg.table)
        if not fw.exists():
            return Item("autoban.service", False, f"running but table inet {cfg.table} is missing")
        sizes = Counter(e.set for e in fw.elements())
    except (conf.ConfigError, FirewallError, OSError) as exc:
        return Item("autoban.service", False, f"running but its sets cannot be read: {exc}")
    shown = ", ".join(f"{name} {count}" for name, count in sorted(sizes.items())) or "all empty"
    return Item("autoban.service", True, f"table inet {cfg.table}: {shown}", dict(sizes))


def check_tls(timer: Mapping[str, str], path: Path | None = None) -> Item:
    """The certificate Asterisk serves: subject, issuer, days left. Bad when it
    has expired, or has fewer than tls.WARN_DAYS left and nothing will renew it
    (an ACME one, or a self-signed one whose renewal timer is not running)."""
    from pbxhost.host import tls
    path = path or tls.DEST / tls.CERT
    if timer.get("LoadState") == "not-found" and not path.exists():
        return Item("TLS certificate", True, "not installed", {"installed": False})
    try:
        cert = tls.certificate_info(path)
    except (OSError, tls.TlsError) as exc:
        return Item("TLS certificate", False, f"{path}: {exc}")
    data = {"subject": cert.subject, "issuer": cert.issuer, "days_left": cert.days_left,
            "not_after": cert.not_after.isoformat(), "self_signed": cert.self_signed}
    detail = f"{cert.subject}, issued by {cert.issuer}, {cert.days_left} days left"
    renewing = cert.self_signed and timer.get("ActiveState") == "active"
    if cert.days_left < 0 or (cert.days_left < tls.WARN_DAYS and not renewing):
        return Item("TLS certificate", False, detail + " and no renewal in sight", data)
    return Item("TLS certificate", True, detail, data)


def _answers(host: str, port: int, probe: bytes, expect: bytes) -> bool:
    with socket.create_connection((host, port), TIMEOUT) as conn:
        conn.settimeout(TIMEOUT)
        if probe:
            conn.sendall(probe)
        return not expect or conn.recv(64).startswith(expect)


def check_websmsd(state: Mapping[str, str], asterisk_up: bool,
                  env: Mapping[str, str]) -> Item:
    if (verdict := unit_verdict("websmsd.service", state)
            or ami_verdict("websmsd.service", state, asterisk_up)) is not None:
        return verdict
    try:
        port = settings.websmsd_port(env)
        _answers(*FASTAGI, b"", b"")
        if port is not None and not _answers("127.0.0.1", port, b"GET / HTTP/1.0\r\n\r\n",
                                             b"HTTP/1."):
            return Item("websmsd.service", False, f"webhook port {port} does not speak HTTP")
        queues = _websms_queues()
    except (OSError, subprocess.TimeoutExpired, settings.SettingError) as exc:
        return Item("websmsd.service", False, f"running but does not answer: {exc}")
    shown = ", ".join(f"{n} {queues[k]}" for k, n in (("in", "held for phones"),
                                                      ("out", "retrying to the ITSP"),
                                                      ("failed", "failed")))
    hook = f"webhook :{port}" if port is not None else "webhook off"
    return Item("websmsd.service", True, f"FastAGI and {hook} answer; {shown}", dict(queues))


def _websms_queues() -> Counter[str]:
    """SMS held for phones (in), retrying to the ITSP (out), failed: `websms queue`'s."""
    proc = subprocess.run(["websms", "queue", "--json"], capture_output=True, text=True,
                          timeout=TIMEOUT)
    try:
        docs = json.loads(proc.stdout) if proc.returncode == 0 else None
    except ValueError:
        docs = None
    if not isinstance(docs, list):
        raise OSError(f"websms queue failed: {proc.stderr.strip()[-200:]}")
    return Counter({"in": 0, "out": 0, "failed": 0}) + Counter(
        doc.get("queue", "partial") for doc in docs)


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    return (f"{days}d " if days else "") + f"{rest // 3600}h{rest % 3600 // 60:02d}m"


# ---------------------------------------------------------------- the verdict

def collect(env: Mapping[str, str] = os.environ) -> list[Item]:
    asterisk = check_asterisk(unit_state("asterisk.service"))
    asterisk_up = asterisk.ok and "uptime" in asterisk.data
    return [
        check_seed(),
        asterisk,
        check_ami_login("autoban", "autoban.conf", _autoban_ami),
        check_ami_login("websms", "websms.conf", _websms_ami),
        check_autoban(unit_state("autoban.service"), asterisk_up),
        check_websmsd(unit_state("websmsd.service"), asterisk_up, env),
        check_tls(unit_state("pbxhost-tls.timer")),
    ]


def render(items: list[Item]) -> str:
    width = max(len(i.name) for i in items)
    lines = [f"{'ok ' if i.ok else 'BAD'} {i.name:<{width}}  {i.detail}" for i in items]
    bad = [i.name for i in items if not i.ok]
    lines.append("healthy" if not bad else f"unhealthy: {', '.join(bad)}")
    return "\n".join(lines)


def main(as_json: bool) -> int:
    items = collect()
    healthy = all(i.ok for i in items)
    if as_json:
        print(json.dumps({"healthy": healthy, "items": [asdict(i) for i in items]}, indent=1))
    else:
        print(render(items))
    return 0 if healthy else 1
