"""Traefik acme.json, both layouts: the certificate for HOSTNAME or a wildcard
of its domain, the longest-lived valid one, and a clear reason otherwise.
Certificates come from a CA made by the test."""

from __future__ import annotations

import json

import pytest

from pbxhost.host import acme
from testbed.tlsca import TestCA, acme_v1, acme_v2, b64

HOST = "pbx.example.org"


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


def serial(pair) -> int:
    return pair.leaf.serial_number


def test_v1_layout(ca):
    mine, other = ca.issue(HOST, "sip.example.org"), ca.issue("www.example.org")
    text = acme_v1((("www.example.org",), other), ((HOST, "sip.example.org"), mine))
    assert serial(acme.choose(text, HOST)) == mine.serial
    assert serial(acme.choose(text, "sip.example.org")) == mine.serial


def test_v2_layout_several_resolvers_the_latest_wins(ca):
    old = ca.issue(HOST, days=90, age=60)
    wildcard = ca.issue("*.example.org", "example.org", days=90, age=1)
    exact = ca.issue(HOST, days=90, age=20)
    text = acme_v2(le=[((HOST,), old), (("www.example.org",), ca.issue("www.example.org"))],
                   dns=[(("*.example.org", "example.org"), wildcard)],
                   staging=None,  # an account without certificates yet
                   other=[((HOST,), exact)])
    chosen = acme.choose(text, HOST)
    assert serial(chosen) == wildcard.serial and "resolver dns" in chosen.source
    assert len(acme.entries(text)) == 4


def test_the_chain_is_kept_and_the_key_normalised(ca):
    issued = ca.issue(HOST)
    pair = acme.choose(acme_v2(le=[((HOST,), issued)]), HOST)
    assert pair.cert_pem.count(b"BEGIN CERTIFICATE") == 2
    assert pair.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


@pytest.mark.parametrize("text, says", [
    (b"", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "a JSON object was expected"),
    (b'{"Certificates": 3}', "Certificates is not a list"),
    (b'{"le": {"Certificates": [{"domain": {"main": "x"}}]}}', "no 'certificate' and 'key'"),
    (b'{"http": {"entryPoints": {}}}', "no resolver"),
])
def test_malformed_or_foreign(text, says):
    with pytest.raises(acme.AcmeError, match=says):
        acme.choose(text, HOST)


def test_none_for_us_names_what_there_is(ca):
    text = acme_v2(le=[(("www.example.org",), ca.issue("www.example.org")),
                       (("*.other.org",), ca.issue("*.other.org"))])
    with pytest.raises(acme.AcmeError) as exc:
        acme.choose(text, HOST)
    assert str(exc.value) == ("no certificate for pbx.example.org among 2 "
                              "(names: *.other.org, www.example.org)")
    with pytest.raises(acme.AcmeError, match="among 0"):
        acme.choose(acme_v2(le=None), HOST)


def test_ours_but_unusable_says_why(ca):
    expired = ca.issue(HOST, days=30, age=40)
    with pytest.raises(acme.AcmeError, match=r"no usable certificate for pbx.example.org: "
                       r"acme.json resolver le, certificate 1: the certificate .* expired on"):
        acme.choose(acme_v2(le=[((HOST,), expired)]), HOST)
    a, b = ca.issue(HOST), ca.issue(HOST)
    a.key_pem = b.key_pem
    with pytest.raises(acme.AcmeError, match="the key does not match the certificate"):
        acme.choose(acme_v2(le=[((HOST,), a)]), HOST)
    broken = json.loads(acme_v2(le=[((HOST,), b)]))
    broken["le"]["Certificates"][0]["certificate"] = "@@not base64@@"
    with pytest.raises(acme.AcmeError, match="certificate 1: certificate: not base64"):
        acme.choose(json.dumps(broken).encode(), HOST)
    broken["le"]["Certificates"][0]["certificate"] = b64(b"-----BEGIN CERTIFICATE-----\nAAAA\n"
                                                         b"-----END CERTIFICATE-----\n")
    with pytest.raises(acme.AcmeError, match="not a valid certificate"):
        acme.choose(json.dumps(broken).encode(), HOST)


def test_a_bad_entry_does_not_hide_a_good_one(ca):
    good = ca.issue(HOST, days=30)
    a, b = ca.issue(HOST, days=90), ca.issue(HOST)
    a.key_pem = b.key_pem  # the longer-lived one is unusable
    assert serial(acme.choose(acme_v2(le=[((HOST,), a), ((HOST,), good)]), HOST)) == good.serial
