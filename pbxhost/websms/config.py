"""websms.conf → typed settings: outgoing interfaces ([websms]), incoming
interfaces ([websmsd]), the queue ([astqueue]) and the AMI login
([asmanager]); and the migration of a seed-era sms.conf.

Several ITSP interfaces are indexed keys (`url_host [api-1] = ...`): the
indexes of a section are its interfaces, and a plain key is the default of
every interface. A section without indexed keys is one interface named ""."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pbxhost import conf, settings
from pbxhost.ami import AmiSettings
from pbxhost.conf import ConfigError, Network, Section
from pbxhost.durable import write_durably
from pbxhost.websms import providers, signatures

log = logging.getLogger("pbxhost.websms")

CONFIG_NAME = "websms.conf"
SEED_NAME = "sms.conf"
DEFAULT_SPOOL = Path("/srv/var/spool/websms")
AUTH_METHODS = ("none", "plain", "basic", "bearer", "zadarma")
NUMFORMS = ("", "E164", "E.164")
AMI_PART_LIMIT = 750  # AMI reads lines of 1024 bytes: Base64Body of at most 1000 chars
AGI_ADDR = ("127.0.0.1", 4573)  # contracts: agi://127.0.0.1:4573/websms
PROXY_AUTH = "X-Websms-Proxy"  # the header a trusted proxy proves itself with
OPT_OUT = "insecure_open"  # [websmsd] key: serve an interface with no signature and no remt_addr
_V4_LOOP = ipaddress.ip_network("127.0.0.0/8")
_KEY = re.compile(r"[A-Za-z0-9_.\-\[\]]{1,64}")


@dataclass(frozen=True)
class Outgoing:
    """One ITSP API that SMS are sent through ([websms], one index)."""

    name: str = ""
    url_host: str = "http://localhost"
    url_path: str = "/"
    auth_method: str = "basic"
    auth_user: str = ""
    auth_secret: str = ""
    key_to: str = "To"
    key_from: str = "From"
    key_body: str = "Body"
    key_user: str = ""
    key_secret: str = ""
    resp_check: str = ""
    val_numform: str = ""
    val_unicode: str = ""
    val_static: tuple[tuple[str, str], ...] = ()
    req_format: str = "form"          # form | json
    tls_cafile: str = ""              # extra CA for a private ITSP certificate
    timeout: float = 10.0
    provider: str = ""                # a preset of providers.py ("": none)
    account_id: str = ""              # {account_id} of a preset's URL (default: auth_user)

    @property
    def url(self) -> str:
        return self.url_host.rstrip("/") + "/" + self.url_path.lstrip("/")


@dataclass(frozen=True)
class Incoming:
    """One ITSP webhook ([websmsd], one index)."""

    name: str = ""
    url_path: tuple[str, ...] = ("/",)   # empty: any path
    remt_addr: tuple[Network, ...] = ()  # empty: any source
    key_to: str = "To"
    key_from: str = "From"
    key_body: str = "Body"
    key_echo: str = ""
    key_id: str = ""                     # the provider's message id (duplicates dropped)
    resp_ack: str = ""
    provider: str = ""                   # a preset of providers.py ("": none)
    sign_scheme: str = "none"            # signatures.SCHEMES
    sign_secret: str = ""                # the verifying secret or public key
    sign_url: str = ""                   # the webhook URL as the provider calls it (proxy)
    sign_maxage: int = signatures.DEFAULT_MAX_AGE
    insecure_open: bool = False          # OPT_OUT: unsigned SMS from any source, on purpose

    @property
    def unprotected(self) -> bool:
        """Anyone who finds the URL can post an SMS for any user with any sender."""
        return self.sign_scheme == "none" and not self.remt_addr and not self.insecure_open


@dataclass(frozen=True)
class Webhook:
    """What is decided before an interface is known, and the HTTP server."""

    port: int | None = None              # WEBSMSD_PORT; None: no webhook server
    bindaddr: str = ""                   # empty: every address
    prox_addr: tuple[Network, ...] = ()
    prox_header: str = "HTTP_X_FORWARDED_FOR"
    prox_secret: str = ""                # the proxy proves itself with it (PROXY_AUTH header)
    req_maxsize: int = 65536             # bytes of a request body
    body_maxlen: int = 5000              # characters of an SMS text
    dedup_time: int = 7 * 86400          # provider ids remembered this long
    concat_timeout: int = 3600           # a multi-part SMS still incomplete: delivered anyway


@dataclass(frozen=True)
class Queue:
    """[astqueue]: the hand-off to Asterisk and the spool."""

    channel_context: str = "default"     # seed keys of the call-file hand-off: read, unused
    context: str = "default"
    priority: int = 1
    maxretries: int = 0
    retrytime: int = 300                 # re-check for reachable phones at least this often
    waittime: int = 45                   # an AMI hand-off slower than this is retried
    archive: bool = False                # keep handled messages in spool/archive
    message_encode: str = "rfc3986"
    outgoingdir: str = "/srv/var/spool/asterisk/outgoing"
    stagingdir: str = "/srv/var/spool/asterisk/staging"
    spooldir: Path = DEFAULT_SPOOL
    expire: int = 3 * 86400              # an SMS no phone could take is reported after this
    part_bytes: int = 700                # UTF-8 bytes per SIP MESSAGE part
    hint_context: str = "dp_lookup_user" # where numbers map to users (wizard hint_exten)


@dataclass(frozen=True)
class Retry:
    """Outgoing retries: exponential backoff, given up after `expire`."""

    backoff_min: int = 10
    backoff_max: int = 600
    expire: int = 86400
    agi_wait: float = 3.0                # FastAGI waits this long for SENT before QUEUED


@dataclass(frozen=True)
class Guards:
    """Who may hand websms an SMS to send, and how many ([websms], plain keys)."""

    agi_users: tuple[str, ...] = ("asterisk",)  # besides root and websmsd's own user
    rate_limit: int = 5                  # outgoing SMS per user per rate_window; 0: no limit
    rate_window: int = 60                # seconds


@dataclass(frozen=True)
class WebsmsConfig:
    path: Path
    outgoing: tuple[Outgoing, ...] = (Outgoing(),)
    incoming: tuple[Incoming, ...] = (Incoming(),)
    webhook: Webhook = field(default_factory=Webhook)
    queue: Queue = field(default_factory=Queue)
    retry: Retry = field(default_factory=Retry)
    guards: Guards = field(default_factory=Guards)
    ami: AmiSettings = field(default_factory=lambda: AmiSettings(username="websms",
                                                                 events="system"))

    def outgoing_for(self, index: str | None) -> Outgoing:
        """The interface named INDEX (WEBSMS_INDEX); empty: the first one."""
        if not index:
            return self.outgoing[0]
        for iface in self.outgoing:
            if iface.name == index:
                return iface
        raise KeyError(f"no [websms] interface {index!r} "
                       f"(have {', '.join(repr(i.name) for i in self.outgoing)})")


# ---------------------------------------------------------------- helpers


def _where(section: Section, key: str, idx: str | None) -> tuple[str, int]:
    for item in reversed(section.items):
        if item.key.lower() == key.lower() and item.index in (idx, None):
            return item.path, item.line
    return section.path, section.line


def _fail(section: Section, key: str, idx: str | None, message: str) -> ConfigError:
    label = key if not idx else f"{key} [{idx}]"
    return ConfigError(f"{label}: {message}", *_where(section, key, idx))


def _text(section: Section | None, key: str, default: str, idx: str | None = None) -> str:
    if section is None:
        return default
    value = section.get_str(key, None, idx=idx)
    return default if value is None else value.strip()


def _key(section: Section | None, key: str, default: str, idx: str | None,
         required: bool = True) -> str:
    """A request key name: letters, digits and _ . - [ ] (it is matched, never executed)."""
    value = _text(section, key, default, idx)
    if section is not None and (value or required) and not _KEY.fullmatch(value):
        raise _fail(section, key, idx, f"not a usable key name: {value!r}")
    return value


def _choice(section: Section | None, key: str, default: str, idx: str | None,
            choices: tuple[str, ...]) -> str:
    value = _text(section, key, default, idx)
    if section is not None and value.lower() not in [c.lower() for c in choices]:
        raise _fail(section, key, idx, f"{value!r} is not one of {', '.join(choices)}")
    return value.lower() if key == "auth_method" else value


def _pairs(section: Section, key: str, idx: str | None) -> tuple[tuple[str, str], ...]:
    text = _text(section, key, "", idx)
    pairs = []
    for entry in filter(None, (e.strip() for e in text.split(","))):
        k, sep, v = entry.partition("=")
        if not sep or not k.strip():
            raise _fail(section, key, idx, f"expected key=value, got {entry!r}")
        pairs.append((k.strip(), v.strip()))
    return tuple(pairs)


def _check_resp(section: Section, idx: str | None, value: str) -> None:
    if value.startswith("/") and value.endswith("/") and len(value) >= 2:
        try:
            re.compile(value[1:-1])
        except re.error as exc:
            raise _fail(section, "resp_check", idx, f"bad regular expression: {exc}") from None
    elif value and "=" not in value:
        raise _fail(section, "resp_check", idx, "use key=value or /regex/")


def _url_host(section: Section, idx: str | None) -> str:
    host = _text(section, "url_host", "http://localhost", idx)
    if "://" not in host:
        host = "https://" + host  # the seed allowed a bare host name; never plain HTTP by accident
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _fail(section, "url_host", idx, f"not an http(s) URL: {host!r}")
    return host


def _interfaces(section: Section | None) -> list[str | None]:
    if section is None or not section.indexes():
        return [None]
    return list(section.indexes())


# ---------------------------------------------------------------- sections


def _outgoing(section: Section | None, idx: str | None) -> Outgoing:
    if section is None:
        return Outgoing()
    val_unicode = _text(section, "val_unicode", "", idx)
    if val_unicode and val_unicode.upper() != "UCS-2" and "=" not in val_unicode:
        raise _fail(section, "val_unicode", idx, "use UCS-2 or key=value")
    resp_check = _text(section, "resp_check", "", idx)
    _check_resp(section, idx, resp_check)
    iface = Outgoing(
        name=idx or "",
        url_host=_url_host(section, idx),
        url_path="/" + _text(section, "url_path", "/", idx).lstrip("/"),
        auth_method=_choice(section, "auth_method", "basic", idx, AUTH_METHODS),
        auth_user=_text(section, "auth_user", "", idx),
        auth_secret=_text(section, "auth_secret", "", idx),
        key_to=_key(section, "key_to", "To", idx),
        key_from=_key(section, "key_from", "From", idx),
        key_body=_key(section, "key_body", "Body", idx),
        key_user=_key(section, "key_user", "", idx, required=False),
        key_secret=_key(section, "key_secret", "", idx, required=False),
        resp_check=resp_check,
        val_numform=_choice(section, "val_numform", "", idx, NUMFORMS),
        val_unicode=val_unicode,
        val_static=_pairs(section, "val_static", idx),
        req_format=_choice(section, "req_format", "form", idx, ("form", "json")),
        tls_cafile=_text(section, "tls_cafile", "", idx),
        timeout=section.get_float("timeout", 10.0, idx=idx) or 10.0,
        provider=_text(section, "provider", "", idx).lower(),
        account_id=_text(section, "account_id", "", idx),
    )
    if iface.auth_method == "plain" and not (iface.key_user and iface.key_secret):
        raise _fail(section, "auth_method", idx, "plain needs key_user and key_secret")
    return iface


def _paths(section: Section, idx: str | None) -> tuple[str, ...]:
    text = _text(section, "url_path", "/", idx)
    paths = tuple(p.strip() for p in text.split(",") if p.strip())
    for p in paths:
        if not p.startswith("/") or any(c.isspace() for c in p):
            raise _fail(section, "url_path", idx, f"a path starts with / and has no spaces: {p!r}")
    return paths


def _signing(section: Section, idx: str | None) -> tuple[str, str]:
    scheme = _choice(section, "sign_scheme", "none", idx, signatures.SCHEMES).lower()
    secret = _text(section, "sign_secret", "", idx)
    if scheme != "none" and not secret:
        raise _fail(section, "sign_scheme", idx, f"{scheme} needs sign_secret")
    return scheme, secret


def _incoming(section: Section | None, idx: str | None) -> Incoming:
    if section is None:
        return Incoming()
    scheme, secret = _signing(section, idx)
    return Incoming(
        name=idx or "",
        url_path=_paths(section, idx),
        remt_addr=tuple(section.get_networks("remt_addr", [], idx=idx) or []),
        key_to=_key(section, "key_to", "To", idx),
        key_from=_key(section, "key_from", "From", idx),
        key_body=_key(section, "key_body", "Body", idx),
        key_echo=_key(section, "key_echo", "", idx, required=False),
        key_id=_key(section, "key_id", "", idx, required=False),
        resp_ack=_text(section, "resp_ack", "", idx),
        provider=_text(section, "provider", "", idx).lower(),
        sign_scheme=scheme,
        sign_secret=secret,
        sign_url=_text(section, "sign_url", "", idx),
        sign_maxage=section.get_duration("sign_maxage", signatures.DEFAULT_MAX_AGE,
                                         idx=idx) or signatures.DEFAULT_MAX_AGE,
        insecure_open=bool(section.get_bool(OPT_OUT, False, idx=idx)),
    )


def unprotected_refusal(cfg: WebsmsConfig) -> str | None:
    """Why websmsd must not serve this config, in one line; None when it may.
    Secure by default: with the webhook on, an interface with neither a
    signature scheme nor remt_addr would take a forged SMS from anyone."""
    if cfg.webhook.port is None:
        return None
    for iface in cfg.incoming:
        if iface.unprotected:
            idx = f" [{iface.name}]" if iface.name else ""
            return (f"[websmsd] interface {iface.name or '(default)'!r} of {cfg.path} "
                    f"(url_path {','.join(iface.url_path) or 'any'}) accepts unsigned SMS "
                    f"from any source: set remt_addr{idx} to the ITSP's addresses, or a "
                    f"signature (provider{idx} with sign_secret{idx}, or sign_scheme{idx}); "
                    f"or write {OPT_OUT}{idx} = yes to accept that")
    return None


def local_proxy_refusal(cfg: WebsmsConfig) -> str | None:
    """A proxy on this host is trusted by its secret, not its address: every
    local user can connect from 127.0.0.1 and send an X-Forwarded-For."""
    hook = cfg.webhook
    if hook.port is None or hook.prox_secret:
        return None
    local = [str(n) for n in hook.prox_addr if n.is_loopback or n.overlaps(_V4_LOOP)]
    if not local:
        return None
    return (f"[websmsd] prox_addr of {cfg.path} trusts a proxy on this host ({', '.join(local)}) "
            f"by its address, which every local user has: set prox_secret (the proxy sends "
            f"it as {PROXY_AUTH}: <secret>), or remove the local address from prox_addr")


def _webhook(section: Section | None, env: Mapping[str, str]) -> Webhook:
    port = settings.websmsd_port(env)
    if section is None:
        return Webhook(port=port)
    for key in ("prox_addr", "prox_header", "prox_secret"):
        if any(i.index is not None and i.key.lower() == key for i in section.items):
            # the proxy is trusted before any interface is known: one value only
            raise _fail(section, key, None, "cannot be indexed (one proxy for all interfaces)")
    header = _text(section, "prox_header", "HTTP_X_FORWARDED_FOR", None)
    return Webhook(
        port=port,
        bindaddr=_text(section, "bindaddr", "", None),
        prox_addr=tuple(section.get_networks("prox_addr", []) or []),
        prox_header=environ_key(header),
        prox_secret=_text(section, "prox_secret", "", None),
        req_maxsize=section.get_int("req_maxsize", 65536) or 65536,
        body_maxlen=section.get_int("body_maxlen", 5000) or 5000,
        dedup_time=section.get_duration("dedup_time", 7 * 86400) or 0,
        concat_timeout=section.get_duration("concat_timeout", 3600) or 3600,
    )


def environ_key(header: str) -> str:
    """X-Forwarded-For or HTTP_X_FORWARDED_FOR → the WSGI environ key."""
    key = header.strip().upper().replace("-", "_")
    return key if key.startswith("HTTP_") else "HTTP_" + key


def _queue(section: Section | None) -> Queue:
    if section is None:
        return Queue()
    part = section.get_int("part_bytes", 700) or 700
    if not 16 <= part <= AMI_PART_LIMIT:
        raise _fail(section, "part_bytes", None, f"must be 16..{AMI_PART_LIMIT} (AMI line limit)")
    return Queue(
        channel_context=_text(section, "channel_context", "default"),
        context=_text(section, "context", "default"),
        priority=section.get_int("priority", 1) or 1,
        maxretries=section.get_int("maxretries", 0) or 0,
        retrytime=max(1, section.get_duration("retrytime", 300) or 300),
        waittime=max(1, section.get_duration("waittime", 45) or 45),
        archive=bool(section.get_bool("archive", False)),
        message_encode=_text(section, "message_encode", "rfc3986"),
        outgoingdir=_text(section, "outgoingdir", "/srv/var/spool/asterisk/outgoing"),
        stagingdir=_text(section, "stagingdir", "/srv/var/spool/asterisk/staging"),
        spooldir=Path(_text(section, "spooldir", str(DEFAULT_SPOOL))),
        expire=section.get_duration("expire", 3 * 86400) or 3 * 86400,
        part_bytes=part,
        hint_context=_text(section, "hint_context", "dp_lookup_user"),
    )


def _retry(section: Section | None) -> Retry:
    if section is None:
        return Retry()
    low = section.get_duration("backoff_min", 10) or 1
    high = section.get_duration("backoff_max", 600) or 1
    if high < low:
        raise _fail(section, "backoff_max", None, "smaller than backoff_min")
    return Retry(backoff_min=low, backoff_max=high,
                 expire=section.get_duration("expire", 86400) or 86400,
                 agi_wait=section.get_float("agi_wait", 3.0) or 0.0)


def _guards(section: Section | None) -> Guards:
    if section is None:
        return Guards()
    users = tuple(u.strip() for u in _text(section, "agi_users", "asterisk").split(",")
                  if u.strip())
    limit = section.get_int("rate_limit", 5)
    if limit is None or limit < 0:
        raise _fail(section, "rate_limit", None, "a number of SMS, 0 for no limit")
    return Guards(agi_users=users, rate_limit=limit,
                  rate_window=max(1, section.get_duration("rate_window", 60) or 60))


def _ami(section: Section | None) -> AmiSettings:
    if section is None:
        return AmiSettings(username="websms", events="system")
    return AmiSettings(host=_text(section, "server", "127.0.0.1"),
                       port=section.get_int("port", 5038) or 5038,
                       username=_text(section, "username", "websms"),
                       secret=_text(section, "secret", ""),
                       events="system")  # ContactStatus is all websms listens to


def _preset(section: Section | None, idx: str | None, side: str) -> Section | None:
    """Interface IDX with its provider's defaults under the user's keys."""
    return None if section is None else providers.apply_preset(section, idx, side)


def parse(cfg: conf.Config, path: Path,
          env: Mapping[str, str] = os.environ) -> WebsmsConfig:
    out, inc = cfg.section("websms"), cfg.section("websmsd")
    return WebsmsConfig(
        path=path,
        outgoing=tuple(_outgoing(_preset(out, idx, providers.OUTGOING), idx)
                       for idx in _interfaces(out)),
        incoming=tuple(_incoming(_preset(inc, idx, providers.INCOMING), idx)
                       for idx in _interfaces(inc)),
        webhook=_webhook(inc, env),
        queue=_queue(cfg.section("astqueue")),
        retry=_retry(out),
        guards=_guards(out),
        ami=_ami(cfg.section("asmanager")),
    )


def load(path: Path, env: Mapping[str, str] = os.environ) -> WebsmsConfig:
    """websms.conf; when it is missing, a seed-era sms.conf beside it is migrated first."""
    if not path.exists():
        migrated = migrate_sms_conf(path)
        if migrated is None:
            return WebsmsConfig(path=path, webhook=Webhook(port=settings.websmsd_port(env)))
        return parse(migrated, path, env)
    return parse(conf.load(path), path, env)


# ---------------------------------------------------------------- users' interfaces


def user_set_vars(confdir: Path) -> dict[str, dict[str, str]]:
    """Endpoint → its set_var variables (WEBSMS_INDEX, TOLL_ALLOW, ...), from
    the endpoints and wizards in pjsip.conf (and what it includes). An SMS is
    no channel, so a set_var never becomes a variable in the message context:
    the dialplan tells websms the sending user and its variables are read
    here. An unreadable config is an empty map."""
    path = confdir / "pjsip.conf"
    try:
        cfg = conf.load(path)
    except ConfigError as exc:
        log.warning("users' set_var (WEBSMS_INDEX, TOLL_ALLOW) not read: %s", exc)
        return {}
    found: dict[str, dict[str, str]] = {}
    for section in cfg.sections:
        kind = (section.get("type") or "").strip().lower()
        key = {"wizard": "endpoint/set_var", "endpoint": "set_var"}.get(kind)
        for value in section.getall(key) if key else []:
            name, sep, var = value.partition("=")
            if sep:
                found.setdefault(section.name, {})[name.strip()] = var.strip()
    return found


def user_indexes(confdir: Path) -> dict[str, str]:
    """Endpoint → WEBSMS_INDEX (see user_set_vars)."""
    return {user: found["WEBSMS_INDEX"] for user, found in user_set_vars(confdir).items()
            if "WEBSMS_INDEX" in found}


# ---------------------------------------------------------------- sms.conf migration

# The seed's sms.conf: [sms] sms_* keys (outgoing), [smsd] smsd_* keys (incoming
# and the call-file contexts); older key names of websms.conf itself.
_RENAMES = {"host": "url_host", "path": "url_path", "auth_passwd": "auth_secret",
            "response_check": "resp_check", "number_format": "val_numform",
            "charset": "val_unicode", "val_charset": "val_unicode",
            "report_success": "resp_ack", "permit_addr": "remt_addr",
            "proxy_addr": "prox_addr", "proxy_header": "prox_header"}
_QUEUE_RENAMES = {"exten_context": "channel_context", "message_context": "context"}


def _migrated_key(section: str, key: str) -> tuple[str, str]:
    """(target section, key) of one sms.conf key."""
    k = key.lower()
    if section == "smsd":
        k = k.removeprefix("smsd_")
        if k in _QUEUE_RENAMES:
            return "astqueue", _QUEUE_RENAMES[k]
        return "websmsd", _RENAMES.get(k, k)
    k = k.removeprefix("sms_")
    return "websms", _RENAMES.get(k, k)


def _migrated_value(key: str, value: str) -> str:
    if key == "val_numform" and value.strip('"') in ("omit+", "no+"):
        return "E164"
    return value


def translate_sms_conf(old: conf.Config) -> str:
    """websms.conf text equivalent to a seed-era sms.conf."""
    sections: dict[str, list[str]] = {"websms": [], "websmsd": [], "astqueue": []}
    for section in old.sections:
        name = section.name.lower()
        if name not in ("sms", "smsd"):
            continue
        for item in section.items:
            target, key = _migrated_key(name, item.key)
            idx = f" [{item.index}]" if item.index is not None else ""
            sections[target].append(f"{key}{idx} = {_migrated_value(key, item.value)}")
    lines = ["; websms.conf — migrated from the seed's sms.conf by websms", ""]
    for name, items in sections.items():
        lines += [f"[{name}]", *items, ""]
    return "\n".join(lines)


def _same_access(model: Path, path: Path) -> None:
    """The new file is readable by whoever read the old one (same secrets)."""
    st = model.stat()
    os.chmod(path, st.st_mode & 0o660)
    if os.geteuid() == 0:  # `websms migrate` run as root by the unit's ExecStartPre
        os.chown(path, st.st_uid, st.st_gid)


def migrate_sms_conf(target: Path) -> conf.Config | None:
    """Write TARGET (websms.conf) from sms.conf beside it; None when there is none.
    When the directory is read-only the translation is still used, in memory."""
    old_path = target.with_name(SEED_NAME)
    if target.exists() or not old_path.exists():
        return None
    text = translate_sms_conf(conf.load(old_path))
    try:
        write_durably(target, text.encode("utf-8"), 0o640,
                      before_rename=lambda tmp: _same_access(old_path, tmp))
        log.warning("migrated %s to %s (the old file is left as it was)", old_path, target)
        return conf.loads(text, str(target))
    except OSError as exc:
        log.warning("%s not migrated to %s (%s); using its translation in memory",
                    old_path, target, exc.strerror or exc)
        return conf.loads(text, str(old_path))
