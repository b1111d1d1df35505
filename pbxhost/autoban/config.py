"""autoban.conf → typed settings; and the addresses that must never be jailed
(loopback, this host's own, the ITSP trunk's, websms's webhook sources)."""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pbxhost import conf
from pbxhost.ami import AmiSettings
from pbxhost.autoban.policy import Settings

SEED_FILE = Path("/srv/var/lib/nftables/autoban.nft")  # the seed's saved table
MIN_PREFIX6 = 32  # a shorter prefix would jail whole providers

log = logging.getLogger("pbxhost.autoban")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
# The state file: on the /srv volume when pbxhost laid it out (its tmpfiles.d
# makes the dir), else in the unit's StateDirectory (autoban alone on a host).
SRV_STATEDIR, VAR_STATEDIR = Path("/srv/var/lib/autoban"), Path("/var/lib/autoban")


def default_statefile() -> Path:
    return (SRV_STATEDIR if SRV_STATEDIR.is_dir() else VAR_STATEDIR) / "state.json"


@dataclass(frozen=True)
class AutobanConfig:
    path: Path
    enabled: bool = False
    ami: AmiSettings = field(default_factory=AmiSettings)
    policy: Settings = field(default_factory=Settings)
    trusttime: int = 0                     # 0: no trust after a successful login
    prefix6: int = 64                      # IPv6 offenders are counted and jailed per prefix
    proventime: int = 7200                 # a successful login proves its address . port this long
    whitelist: tuple[str, ...] = ()        # as written: addresses, prefixes, ranges
    blacklist: tuple[str, ...] = ()
    statefile: Path = field(default_factory=default_statefile)
    table: str = "autoban"
    trunk_refresh: int = 300               # seconds between two resolutions of trunk names
    seedfile: Path = SEED_FILE             # the seed's saved table, imported once


def load(path: Path) -> AutobanConfig:
    """A missing file means autoban is off; a broken one raises conf.ConfigError."""
    if not path.exists():
        return AutobanConfig(path=path, enabled=False)
    cfg = conf.load(path)
    man = cfg.section("asmanager")
    ab = cfg.section("autoban")
    if man is None:
        raise conf.ConfigError("no [asmanager] section", str(path))
    if ab is None:
        raise conf.ConfigError("no [autoban] section", str(path))
    ami = AmiSettings(host=man.get_str("server", "127.0.0.1") or "127.0.0.1",
                      port=man.get_int("port", 5038) or 5038,
                      username=man.get_str("username", "") or "",
                      secret=man.get_str("secret", "") or "",
                      events="security")
    try:
        policy = Settings(maxcount=ab.get_int("maxcount", 10) or 0,
                          watchtime=ab.get_duration("watchtime", 1200) or 0,
                          jailtime=ab.get_duration("jailtime", 1200) or 0,
                          repeatmult=ab.get_float("repeatmult", 6.0) or 0)
    except ValueError as exc:
        line = ab.items[-1].line if ab.items else ab.line
        raise conf.ConfigError(str(exc), str(path), line) from exc
    for key in ("whitelist", "blacklist"):
        ab.get_networks(key, [])  # validated here so a typo is reported with file:line
    prefix6 = ab.get_int("prefix6", 64)
    if prefix6 is None or not MIN_PREFIX6 <= prefix6 <= 128:
        item = next((i for i in ab.items if i.key == "prefix6"), None)
        raise conf.ConfigError(f"prefix6 must be {MIN_PREFIX6}..128, not {prefix6}", str(path),
                               item.line if item else ab.line)
    return AutobanConfig(
        path=path,
        enabled=bool(ab.get_bool("enabled", True)),
        ami=ami,
        policy=policy,
        trusttime=ab.get_duration("trusttime", 0) or 0,
        prefix6=prefix6,
        proventime=ab.get_duration("proventime", 7200) or 0,
        whitelist=_entries(ab.getall("whitelist")),
        blacklist=_entries(ab.getall("blacklist")),
        statefile=Path(ab.get_str("statefile", "") or default_statefile()),
        table=ab.get_str("table", "autoban") or "autoban",
        trunk_refresh=max(ab.get_duration("trunk_refresh", 300) or 300, 1),
        seedfile=Path(ab.get_str("seedfile", str(SEED_FILE)) or SEED_FILE),
    )


def _entries(values: list[str]) -> tuple[str, ...]:
    return tuple(e for v in values for e in v.replace(",", " ").split())


def host_addresses() -> list[Network]:
    """This host's own addresses (from `ip -j addr`), never to be jailed."""
    try:
        out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True,
                             check=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("cannot list this host's addresses: %s", exc)
        return []
    return [ipaddress.ip_network(a["local"]) for link in json.loads(out)
            for a in link.get("addr_info", []) if "local" in a]


def _host_part(entry: str) -> str:
    """`[2001:db8::1]:5060` / `host:5060` / `2001:db8::1` / `192.0.2.0/24` → the host."""
    entry = entry.strip()
    if entry.startswith("["):
        return entry[1:entry.find("]")]
    return entry.split(":")[0] if entry.count(":") == 1 else entry


def resolve_host(host: str) -> list[Network] | None:
    """An address or prefix as it is; a host name resolved (None if that fails)."""
    try:
        return [ipaddress.ip_network(host, strict=False)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError) as exc:  # UnicodeError: a label idna refuses
        log.warning("cannot resolve trunk host %s: %s", host, exc)
        return None
    return list(dict.fromkeys(ipaddress.ip_network(info[4][0]) for info in infos))


def is_name(host: str) -> bool:
    """Whether HOST needs resolving (not an address or prefix)."""
    try:
        ipaddress.ip_network(host, strict=False)
        return False
    except ValueError:
        return True


def trunk_hosts(confdir: Path) -> list[str]:
    """The ITSP's hosts as written (names, addresses, prefixes): wizard
    `remote_hosts` and identify `match` in PJSIP config."""
    hosts: list[str] = []
    for name in ("pjsip.conf", "pjsip_wizard.conf"):
        path = confdir / name
        if not path.exists():
            continue
        try:
            cfg = conf.load(path)
        except conf.ConfigError as exc:
            log.warning("trunk addresses not read: %s", exc)
            continue
        for section in cfg.sections:
            values = section.getall("remote_hosts")
            if section.get("type") == "identify":
                values += section.getall("match")
            hosts += [_host_part(entry) for value in values
                      for entry in value.split(",") if entry.strip()]
    return list(dict.fromkeys(hosts))


def trunk_addresses(confdir: Path) -> list[Network]:
    """The ITSP's addresses now (names resolved once)."""
    return [n for host in trunk_hosts(confdir) for n in resolve_host(host) or []]


def sip_ports(confdir: Path) -> list[int]:
    """The ports of PJSIP's udp, tcp and tls transports (`bind`, default 5060,
    5061 for tls): what a sipjail closes. 5060 and 5061 when none is found."""
    path = confdir / "pjsip.conf"
    ports: list[int] = []
    try:
        sections = conf.load(path).sections if path.exists() else []
    except conf.ConfigError as exc:
        log.warning("SIP ports not read: %s", exc)
        sections = []
    for section in sections:
        protocol = (section.get("protocol") or "udp").lower()
        if section.get("type") != "transport" or protocol not in ("udp", "tcp", "tls"):
            continue
        bind = (section.get("bind") or "").strip()
        port = bind.rsplit(":", 1)[1] if bind.count(":") == 1 or "]:" in bind else ""
        ports.append(int(port) if port.isdigit() else 5061 if protocol == "tls" else 5060)
    return sorted(set(ports)) or [5060, 5061]


def websms_sources(confdir: Path) -> list[Network]:
    """websms's `remt_addr` (the ITSP's webhook sources), every interface."""
    path = confdir / "websms.conf"
    if not path.exists():
        return []
    try:
        section = conf.load(path).section("websmsd")
    except conf.ConfigError as exc:
        log.warning("websms sources not read: %s", exc)
        return []
    if section is None:
        return []
    nets: list[Network] = []
    for idx in [None, *section.indexes()]:
        nets += section.get_networks("remt_addr", [], idx=idx) or []
    return nets


def exempt_networks(confdir: Path) -> list[Network]:
    """Never jailed, fixed for the daemon's run: loopback, this host's addresses,
    the trunk's literal addresses, websms's sources (trunk host names: trunks.py)."""
    literal = [n for host in trunk_hosts(confdir) if not is_name(host)
               for n in resolve_host(host) or []]
    return [*LOOPBACK, *host_addresses(), *literal, *websms_sources(confdir)]
