"""A certificate authority made by the test: certificates for TLS tests, and
Traefik acme.json files (both layouts) holding them."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .netns import Host, in_netns

DAY = dt.timedelta(days=1)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


@dataclass
class Issued:
    cert_pem: bytes   # leaf then the CA: a chain as Traefik stores it
    key_pem: bytes
    serial: int
    not_after: dt.datetime


class TestCA:
    __test__ = False  # not a pytest class

    def __init__(self, name: str = "pbxhost test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        start = now() - DAY
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(start).not_valid_after(start + 3650 * DAY)
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, *names: str, days: float = 90, age: float = 1,
              key: ec.EllipticCurvePrivateKey | None = None) -> Issued:
        """A leaf for NAMES (DNS or IP) issued AGE days ago, valid DAYS days from then."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        start = now() - age * DAY
        alts: list[x509.GeneralName] = []
        for n in names:
            try:
                alts.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alts.append(x509.DNSName(n))
        leaf = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
                .issuer_name(self.name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(start + days * DAY)
                .add_extension(x509.SubjectAlternativeName(alts), False)
                .sign(self.key, hashes.SHA256()))
        return Issued(leaf.public_bytes(serialization.Encoding.PEM) + self.pem, _key_pem(key),
                      leaf.serial_number, start + days * DAY)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def acme_v1(*certs: tuple[tuple[str, ...], Issued]) -> bytes:
    """Traefik 1.x: {"Account", "Certificates": [{"Domain": {"Main", "SANs"}, ...}]}."""
    return json.dumps({"Account": {"Email": "admin@example.org"}, "Certificates": [
        {"Domain": {"Main": names[0], "SANs": list(names[1:]) or None},
         "Certificate": b64(i.cert_pem), "Key": b64(i.key_pem)} for names, i in certs],
        "HTTPChallenges": {}}).encode()


def acme_v2(**resolvers: list[tuple[tuple[str, ...], Issued]] | None) -> bytes:
    """Traefik 2.x+: {resolver: {"Account", "Certificates": [{"domain": {"main", "sans"}}]}}."""
    return json.dumps({name: {"Account": {"Email": "admin@example.org"}, "Certificates": None
                              if certs is None else [
        {"domain": {"main": names[0], **({"sans": list(names[1:])} if names[1:] else {})},
         "certificate": b64(i.cert_pem), "key": b64(i.key_pem), "Store": "default"}
        for names, i in certs]} for name, certs in resolvers.items()}, indent=1).encode()


def served(client: Host, address: str, cafile: Path | None = None) -> int | None:
    """The serial of the certificate served on ADDRESS:5061, seen from CLIENT's
    namespace (verified against CAFILE, host name included, when given); None
    while nothing answers (the listener restarting)."""
    def handshake() -> int | None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if cafile is None:
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        else:
            ctx.load_verify_locations(cafile)
        try:
            with socket.socket(family) as raw:
                raw.settimeout(3)
                raw.connect((address, 5061))
                with ctx.wrap_socket(raw, server_hostname=address) as conn:
                    der = conn.getpeercert(binary_form=True)
        except ConnectionError:
            return None
        return x509.load_der_x509_certificate(der).serial_number
    return in_netns(client.ns, handshake)
