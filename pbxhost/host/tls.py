"""Asterisk's TLS certificate: /srv/etc/ssl/asterisk/cert.pem and priv_key.pem.

`pbxhost tls` keeps one valid pair there: a certificate taken from a Traefik
acme.json (acme.py) when ACME_FILE holds one for HOSTNAME, else a self-signed
one it makes (TLS_KEYBITS, TLS_CERTDAYS) and renews. The decisions (plan) are
pure; the file work is install() and recover().

The two files can never be replaced in one step, so a new pair is first
staged, complete and fsynced, under hidden names (.priv_key.pem.new, then
.cert.pem.new: the staged certificate is the commit point), then renamed
over the old pair, key first. A run cut short between the two renames is
finished by the next run (recover, which `pbxhost tls` does before anything
else, and which runs before Asterisk at boot): the pair on disk is then the
old one or the new one, never a mix, once `pbxhost tls` has run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import ipaddress
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from pbxhost.durable import TEMP_GLOB, atomic_writer, fsync_dir

log = logging.getLogger("pbxhost.tls")

DEST = Path("/srv/etc/ssl/asterisk")
CERT, KEY = "cert.pem", "priv_key.pem"
STAGED = ".new"  # .cert.pem.new / .priv_key.pem.new: a pair on its way in
LOCK = ".lock"
CERT_MODE, KEY_MODE = 0o644, 0o640  # the key: root and Asterisk's group only
KEY_GROUP = "asterisk"
DAY = dt.timedelta(days=1)
# Renewal of our self-signed certificate: when less than a third of its life is
# left, and at the latest 7 days before it ends (half of TLS_CERTDAYS when that
# is shorter, so a 1-day certificate is not renewed on every run). With the
# default 30 days: 10 days before; the daily timer then has 10 tries.
RENEW_FLOOR = 7 * DAY
# `pbxhost status` turns non-zero under this many days when we cannot renew.
WARN_DAYS = 7
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", re.S)


class TlsError(Exception):
    """A certificate or key that cannot be used; str() says why, in one line."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _not_after(cert: x509.Certificate) -> dt.datetime:
    # cryptography >= 42 has the aware property and deprecates the naive one
    aware = getattr(cert, "not_valid_after_utc", None)
    return aware if aware is not None else cert.not_valid_after.replace(tzinfo=dt.UTC)


def _not_before(cert: x509.Certificate) -> dt.datetime:
    aware = getattr(cert, "not_valid_before_utc", None)
    return aware if aware is not None else cert.not_valid_before.replace(tzinfo=dt.UTC)


# ---------------------------------------------------------------- reading certificates

@dataclass(frozen=True)
class CertInfo:
    """What `pbxhost status` shows of a certificate."""
    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    days_left: int           # whole days until not_after (negative: expired since)
    serial: int
    names: tuple[str, ...]   # subjectAltName DNS names and IP addresses
    self_signed: bool        # ours to renew (issuer == subject)

    @property
    def lifetime(self) -> dt.timedelta:
        return self.not_after - self.not_before


def names_of(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        # No SAN (old certificates): the common name is the name clients check.
        return tuple(a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
                     if isinstance(a.value, str))
    return (tuple(san.get_values_for_type(x509.DNSName))
            + tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress)))


def info_of(cert: x509.Certificate, now: dt.datetime | None = None) -> CertInfo:
    now = now or utcnow()
    not_after = _not_after(cert)
    return CertInfo(
        subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
        not_before=_not_before(cert), not_after=not_after,
        days_left=(not_after - now) // DAY, serial=cert.serial_number,
        names=names_of(cert), self_signed=cert.issuer == cert.subject)


def certificate_info(path: Path = DEST / CERT, now: dt.datetime | None = None) -> CertInfo:
    """The certificate at PATH (the first one of a chain). OSError when it
    cannot be read, TlsError when it is not a PEM certificate."""
    return info_of(load_chain(path.read_bytes(), str(path))[0], now)


def load_chain(pem: bytes, what: str = "certificate") -> list[x509.Certificate]:
    """Every certificate of a PEM chain, leaf first."""
    blocks = _PEM_CERT.findall(pem)
    if not blocks:
        raise TlsError(f"{what}: no PEM certificate in it")
    try:
        return [x509.load_pem_x509_certificate(b) for b in blocks]
    except ValueError as exc:
        raise TlsError(f"{what}: not a valid certificate ({exc})") from None


def load_key(pem: bytes, what: str = "key") -> rsa.RSAPrivateKey:
    try:
        return serialization.load_pem_private_key(pem, password=None)  # type: ignore[return-value]
    except (ValueError, TypeError) as exc:
        raise TlsError(f"{what}: not an unencrypted PEM private key ({exc})") from None


def covers(names: tuple[str, ...], hostname: str) -> bool:
    """HOSTNAME is one of NAMES, or one label under a wildcard of them (*.example.com
    covers pbx.example.com, not example.com or a.b.example.com)."""
    host = hostname.lower().rstrip(".")
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(host)
        return any(_same_ip(n, ip) for n in names)
    for name in (n.lower().rstrip(".") for n in names):
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


def _same_ip(name: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(name) == ip
    except ValueError:
        return False


# ---------------------------------------------------------------- a checked pair

@dataclass(frozen=True)
class Pair:
    """A certificate chain and its private key, checked to belong together."""
    cert_pem: bytes
    key_pem: bytes
    leaf: x509.Certificate
    source: str  # "self-signed", "acme.json (resolver le)", "/srv/etc/ssl/asterisk"

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.leaf.public_bytes(serialization.Encoding.DER)).hexdigest()

    def info(self, now: dt.datetime | None = None) -> CertInfo:
        return info_of(self.leaf, now)


def check_pair(cert_pem: bytes, key_pem: bytes, source: str,
               now: dt.datetime | None = None) -> Pair:
    """The pair, normalised (PEM re-encoded, key as PKCS#8), when the certificate
    parses, has not expired and KEY is its key; else TlsError saying which."""
    chain = load_chain(cert_pem, f"{source}: certificate")
    key = load_key(key_pem, f"{source}: key")
    leaf = chain[0]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if (leaf.public_key().public_bytes(serialization.Encoding.DER, spki)
            != key.public_key().public_bytes(serialization.Encoding.DER, spki)):
        raise TlsError(f"{source}: the key does not match the certificate "
                       f"({leaf.subject.rfc4514_string()})")
    not_after = _not_after(leaf)
    if not_after <= (now or utcnow()):
        raise TlsError(f"{source}: the certificate for {', '.join(names_of(leaf))} "
                       f"expired on {not_after:%Y-%m-%d %H:%M} UTC")
    return Pair(
        cert_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain),
        key_pem=key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
        leaf=leaf, source=source)


def self_signed(hostname: str, keybits: int, days: int, now: dt.datetime | None = None) -> Pair:
    """A new RSA key and a certificate for HOSTNAME (a DNS name or an IP address,
    in subjectAltName, which is what clients check) valid DAYS days. Like
    `openssl req -x509`, it is a CA certificate of its own, so a phone can take
    it as the trust anchor it is."""
    now = now or utcnow()
    key = rsa.generate_private_key(public_exponent=65537, key_size=keybits)
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        alt = x509.DNSName(hostname)
    # A common name is at most 64 characters; the SAN carries the name anyway.
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            # a little back-dated: a phone whose clock is a minute behind accepts it
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + days * DAY)
            .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                           critical=False)
            .sign(key, hashes.SHA256()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return check_pair(cert.public_bytes(serialization.Encoding.PEM), pem, "self-signed", now)


# ---------------------------------------------------------------- the decision

def renewal_due(info: CertInfo, certdays: int, now: dt.datetime | None = None) -> bool:
    """Whether our self-signed certificate is to be renewed now (see RENEW_FLOOR)."""
    left = info.not_after - (now or utcnow())
    return left < max(info.lifetime / 3, min(RENEW_FLOOR, certdays * DAY / 2))


@dataclass(frozen=True)
class Plan:
    action: str          # "keep", "install" (the ACME pair) or "self-sign"
    reason: str
    pair: Pair | None = None


def plan(current: Pair | None, broken: str, acme: Pair | None, hostname: str,
         certdays: int, now: dt.datetime | None = None) -> Plan:
    """What to do with the pair on disk (CURRENT, or None with BROKEN saying why)
    given ACME's pair for HOSTNAME (None: none usable)."""
    now = now or utcnow()
    if acme is not None:
        if current is not None and current.fingerprint == acme.fingerprint:
            return Plan("keep", "the certificate from acme.json is in place")
        if current is None:
            return Plan("install", broken, acme)
        info = current.info(now)
        if info.self_signed:
            return Plan("install", "replacing the self-signed certificate", acme)
        if not covers(info.names, hostname):
            return Plan("install", f"the current certificate is not for {hostname}", acme)
        if acme.info(now).not_after > info.not_after:
            return Plan("install", "acme.json has a newer certificate", acme)
        return Plan("keep", "the current certificate lasts at least as long as acme.json's")
    if current is None:
        return Plan("self-sign", broken)
    info = current.info(now)
    if not info.self_signed:
        # Someone else's (ACME's, the admin's): renewing it is theirs to do.
        return Plan("keep", f"certificate by {info.issuer}, not ours to renew")
    if not covers(info.names, hostname):
        return Plan("self-sign", f"the self-signed certificate is for {', '.join(info.names)}, "
                    f"not {hostname}")
    if renewal_due(info, certdays, now):
        return Plan("self-sign", f"the self-signed certificate ends in {info.days_left} days")
    return Plan("keep", f"self-signed, {info.days_left} days left")


# ---------------------------------------------------------------- files

def read_current(dest: Path, now: dt.datetime | None = None) -> tuple[Pair | None, str]:
    """The pair in DEST, or None and why it is not usable."""
    try:
        cert_pem, key_pem = (dest / CERT).read_bytes(), (dest / KEY).read_bytes()
    except FileNotFoundError:
        return None, f"no certificate in {dest} yet"
    except OSError as exc:
        return None, f"{dest}: {exc.strerror}"
    try:
        return check_pair(cert_pem, key_pem, str(dest), now), ""
    except TlsError as exc:
        return None, str(exc)


def make_dir(dest: Path, gid: int | None) -> None:
    """DEST when missing, as tmpfiles.d makes it: 0750, Asterisk's group
    (an existing one is left as it is)."""
    if dest.is_dir():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.mkdir(mode=0o750)
    if gid is not None:
        os.chown(dest, -1, gid)
    fsync_dir(dest.parent)


@contextlib.contextmanager
def locked(dest: Path) -> Iterator[None]:
    """One `pbxhost tls` at a time per DEST (the timer, the .path unit, a hand)."""
    fd = os.open(dest / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _staged(dest: Path, name: str) -> Path:
    return dest / f".{name}{STAGED}"


def install(pair: Pair, dest: Path, gid: int | None) -> None:
    """Stage PAIR, then rename it over the pair in DEST (module docstring).
    GID: the key's group (mode 0640); None: the key stays the owner's (0600)."""
    with atomic_writer(_staged(dest, KEY), KEY_MODE if gid is not None else 0o600,
                       before_rename=None if gid is None else
                       lambda tmp: os.chown(tmp, -1, gid)) as f:
        f.write(pair.key_pem.decode())
    with atomic_writer(_staged(dest, CERT), CERT_MODE) as f:
        f.write(pair.cert_pem.decode())
    _commit(dest)


def _commit(dest: Path) -> None:
    staged_key = _staged(dest, KEY)
    if staged_key.exists():
        os.replace(staged_key, dest / KEY)
    os.replace(_staged(dest, CERT), dest / CERT)
    fsync_dir(dest)


def recover(dest: Path) -> str:
    """Finish or undo a pair staged by a run that was cut short; what was done ("": nothing)."""
    staged_cert, staged_key = _staged(dest, CERT), _staged(dest, KEY)
    for tmp in dest.glob(TEMP_GLOB):  # atomic_writer's temp files after a crash
        tmp.unlink(missing_ok=True)
    if not staged_cert.exists():
        if staged_key.exists():
            staged_key.unlink()
            fsync_dir(dest)
            return "removed a staged key without its certificate"
        return ""
    key_file = staged_key if staged_key.exists() else dest / KEY
    try:
        check_pair(staged_cert.read_bytes(), key_file.read_bytes(), "staged pair",
                   dt.datetime.min.replace(tzinfo=dt.UTC))
    except (OSError, TlsError) as exc:
        staged_cert.unlink()
        staged_key.unlink(missing_ok=True)
        fsync_dir(dest)
        return f"removed a staged pair that does not match ({exc})"
    _commit(dest)
    return "finished installing the pair staged by an earlier run"
