"""Certificates from a Traefik acme.json: pure parsing and choice.

Two layouts exist. Traefik 1.x:
    {"Account": ..., "Certificates": [{"Domain": {"Main": "a.example", "SANs": [...]},
                                       "Certificate": "<base64 PEM>", "Key": "<base64 PEM>"}]}
Traefik 2.x and later, one entry per certificate resolver:
    {"le": {"Account": ..., "Certificates": [{"domain": {"main": ..., "sans": [...]},
                                              "certificate": "...", "key": "...",
                                              "Store": "default"}]}, "other": {...}}
"Certificate"/"certificate" is the full chain, leaf first.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass

from pbxhost.host.tls import Pair, TlsError, check_pair, covers, load_chain, names_of, utcnow


class AcmeError(Exception):
    """acme.json holds no usable certificate for us; str() says why, in one line."""


@dataclass(frozen=True)
class Entry:
    where: str          # "resolver le, certificate 2" / "certificate 1"
    domains: tuple[str, ...]
    cert: str           # base64 as stored
    key: str


def _domains(domain: object, main: str, sans: str) -> tuple[str, ...]:
    if not isinstance(domain, dict):
        return ()
    names = [domain.get(main), *(domain.get(sans) or [])]
    return tuple(n for n in names if isinstance(n, str) and n)


def _entries(certs: object, where: str, v1: bool) -> list[Entry]:
    if certs is None:          # a resolver with an account and no certificate yet
        return []
    if not isinstance(certs, list):
        raise AcmeError(f"{where}Certificates is not a list")
    keys = ("Domain", "Main", "SANs", "Certificate", "Key") if v1 else (
        "domain", "main", "sans", "certificate", "key")
    out = []
    for i, c in enumerate(certs, 1):
        if not isinstance(c, dict):
            raise AcmeError(f"{where}certificate {i} is not an object")
        cert, key = c.get(keys[3]), c.get(keys[4])
        if not isinstance(cert, str) or not isinstance(key, str):
            raise AcmeError(f"{where}certificate {i} has no {keys[3]!r} and {keys[4]!r} strings")
        out.append(Entry(f"{where}certificate {i}", _domains(c.get(keys[0]), keys[1], keys[2]),
                         cert, key))
    return out


def entries(text: bytes) -> list[Entry]:
    """Every certificate of an acme.json, either layout; AcmeError when it is
    not JSON or not Traefik's."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AcmeError(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise AcmeError("not a Traefik acme.json (a JSON object was expected)")
    if "Certificates" in data:  # Traefik 1.x
        return _entries(data["Certificates"], "", v1=True)
    resolvers = {name: r for name, r in data.items()
                 if isinstance(r, dict) and ("Certificates" in r or "Account" in r)}
    if not resolvers:
        raise AcmeError("not a Traefik acme.json (no \"Certificates\" list and no resolver)")
    found: list[Entry] = []
    for name, resolver in resolvers.items():
        found += _entries(resolver.get("Certificates"), f"resolver {name}, ", v1=False)
    return found


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise TlsError(f"{what}: not base64") from None


def choose(text: bytes, hostname: str, now: dt.datetime | None = None) -> Pair:
    """The pair for HOSTNAME (its own name or a wildcard of its domain, as the
    certificate's subjectAltName says) that lasts longest among the valid ones;
    AcmeError saying why when there is none."""
    now = now or utcnow()
    found = entries(text)
    valid: list[Pair] = []
    refused: list[str] = []
    others: list[str] = []
    for e in found:
        ours = covers(e.domains, hostname)  # until the certificate itself says
        try:
            cert_pem = _b64(e.cert, f"acme.json {e.where}: certificate")
            leaf = load_chain(cert_pem, f"acme.json {e.where}: certificate")[0]
            ours = covers(names_of(leaf), hostname)
            if not ours:
                others += names_of(leaf) or e.domains
                continue
            valid.append(check_pair(cert_pem, _b64(e.key, f"acme.json {e.where}: key"),
                                    f"acme.json {e.where}", now))
        except TlsError as exc:
            if ours:  # ours but unusable: said when nothing better is found
                refused.append(str(exc))
            else:
                others += e.domains
    if valid:
        return max(valid, key=lambda p: p.info(now).not_after)
    if refused:
        raise AcmeError(f"no usable certificate for {hostname}: {'; '.join(refused)}")
    listed = ", ".join(sorted(set(others))) or "none"
    raise AcmeError(f"no certificate for {hostname} among {len(found)} "
                    f"(names: {listed})")
