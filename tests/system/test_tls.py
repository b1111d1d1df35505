"""TLS in the booted system: the self-signed certificate made at first boot and
served on 5061 over IPv4 and IPv6; Traefik acme.json files (both layouts, a
wildcard) written where pbxhost-acme.path watches, served within 10 s with the
posthook run; bad acme.json files leave the certificate in place; the timer's
service renews a certificate about to end.

Hosts: the PBX .10, a TLS client .30."""

from __future__ import annotations

import datetime as dt
import json
import re
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from testbed.system import BootedSystem
from testbed.tlsca import TestCA, acme_v1, acme_v2, b64, served
from testbed.wait import poll

HOSTNAME = "pbx.example.org"
ACME = "/srv/etc/acme/acme.json"
CERT = "srv/etc/ssl/asterisk/cert.pem"
POSTHOOK_MARK = "/srv/etc/acme/posthook-ran"
ENV = (f"HOSTNAME={HOSTNAME}\nACME_FILE={ACME}\n"
       f"ACME_POSTHOOK=date +%s.%N >> {POSTHOOK_MARK}\n")


def posthooks(pbx: BootedSystem) -> int:
    """How often ACME_POSTHOOK ran (it appends a line to POSTHOOK_MARK)."""
    mark = pbx.root / POSTHOOK_MARK.lstrip("/")
    return len(mark.read_text().splitlines()) if mark.exists() else 0


def tls_errors(pbx: BootedSystem, *matches: str) -> list[str]:
    """pbxhost tls's error lines (of one run, given its invocation's match)."""
    return [e["MESSAGE"] for e in pbx.journal("-t", "pbxhost-tls", *matches)
            if e.get("PRIORITY") == "3"]


def serial_on_disk(pbx: BootedSystem) -> int:
    return x509.load_pem_x509_certificate((pbx.root / CERT).read_bytes()).serial_number


@pytest.fixture(scope="module")
def tls(source_install, base, module_net, module_boot, tmp_path_factory):
    pbx_host, client = module_net.host("pbx", 10), module_net.host("client", 30)
    pbx = BootedSystem([source_install, base], pbx_host, tmp_path_factory.mktemp("tls"))
    pbx.prepare("/srv/etc/pbxhost.env", ENV)
    module_boot(pbx)
    pbx.wait_active("asterisk.service")
    return pbx, pbx_host, client, TestCA()


def wait_served(client, pbx_host, serial: int, timeout: float = 10) -> float:
    """Seconds until SERIAL is served on 5061 over IPv4 and IPv6."""
    started = time.monotonic()
    for address in (pbx_host.v4, pbx_host.v6):
        poll(lambda a=address: served(client, a) == serial or None, timeout,
             f"serial {serial:x} on {address}:5061")
    return time.monotonic() - started


def write_acme(pbx: BootedSystem, data: bytes) -> None:
    """As Traefik's store does (os.WriteFile): the file rewritten in place."""
    target = pbx.root / ACME.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def test_first_boot_serves_a_self_signed_certificate_over_ipv4_and_ipv6(tls):
    pbx, pbx_host, client, _ = tls
    key = pbx.root / "srv/etc/ssl/asterisk/priv_key.pem"
    st = key.stat()
    assert st.st_mode & 0o777 == 0o640 and st.st_uid == 0
    assert pbx.run("stat", "-c", "%G", "/srv/etc/ssl/asterisk/priv_key.pem").stdout.strip() \
        == "asterisk"
    wait_served(client, pbx_host, serial_on_disk(pbx))
    status = json.loads(pbx.run("pbxhost", "status", "--json", check=False).stdout)
    item = next(i for i in status["items"] if i["name"] == "TLS certificate")
    assert item["ok"] and item["data"]["self_signed"] and 28 <= item["data"]["days_left"] <= 30
    assert HOSTNAME in item["data"]["subject"]


@pytest.mark.parametrize("layout", ["v2 wildcard", "v1"])
def test_an_acme_certificate_is_served_within_10_s_and_the_posthook_runs(tls, layout):
    pbx, pbx_host, client, ca = tls
    hooks = posthooks(pbx)
    if layout == "v1":  # lasts longer than the v2 one before it: it replaces it
        issued = ca.issue(HOSTNAME, days=80)
        data = acme_v1(((HOSTNAME,), issued))
    else:
        issued = ca.issue("*.example.org", days=70)
        data = acme_v2(le=[(("www.example.net",), ca.issue("www.example.net"))],
                       other=[(("*.example.org",), issued)])
    write_acme(pbx, data)
    took = wait_served(client, pbx_host, issued.serial)
    print(f"{layout}: served after {took:.2f} s")
    poll(lambda: posthooks(pbx) > hooks or None, 10, "ACME_POSTHOOK ran")


BAD = {
    "malformed": b'{"le": {"Certificates": [',
    "foreign": b'{"something": "else"}',
}


@pytest.mark.parametrize("case", ["malformed", "foreign", "not ours", "expired", "wrong key"])
def test_a_bad_acme_json_leaves_the_certificate_in_place(tls, case):
    pbx, pbx_host, client, ca = tls
    before = serial_on_disk(pbx)
    if case in BAD:
        data = BAD[case]
    elif case == "not ours":
        data = acme_v2(le=[(("www.example.net",), ca.issue("www.example.net", days=300))])
    elif case == "expired":
        data = acme_v2(le=[((HOSTNAME,), ca.issue(HOSTNAME, days=10, age=20))])
    else:  # a certificate with another certificate's key
        good, other = ca.issue(HOSTNAME, days=300), ca.issue(HOSTNAME, days=300)
        data = json.dumps({"le": {"Certificates": [{
            "domain": {"main": HOSTNAME}, "certificate": b64(good.cert_pem),
            "key": b64(other.key_pem)}]}}).encode()
    write_acme(pbx, data)
    # started here, not through pbxhost-acme.path (proven by the good files above):
    # in a row of failing runs, the path unit missed every other change here
    assert pbx.run("systemctl", "start", "pbxhost-tls.service", check=False).returncode != 0
    run = pbx.run("systemctl", "show", "-p", "InvocationID", "--value",
                  "pbxhost-tls.service").stdout.strip()
    errors = poll(lambda: tls_errors(pbx, f"_SYSTEMD_INVOCATION_ID={run}") or None, 10,
                  "the error line of that run")
    assert len(errors) == 1 and ACME in errors[0], errors
    assert serial_on_disk(pbx) == before
    assert served(client, pbx_host.v4) == before
    # nothing half-written: no staged pair left (.lock is the runs' lock file)
    assert not list((pbx.root / "srv/etc/ssl/asterisk").glob(".*.new*"))


def test_the_timer_renews_a_self_signed_certificate_about_to_end(tls):
    pbx, pbx_host, client, _ = tls
    assert pbx.unit("pbxhost-tls.timer")["ActiveState"] == "active"
    # back to self-signed, with one made to end in 2 days
    pbx.write("/srv/etc/pbxhost.env", f"HOSTNAME={HOSTNAME}\n")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, HOSTNAME)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=28))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOSTNAME)]), False)
            .sign(key, hashes.SHA256()))
    pbx.write("/" + CERT, cert.public_bytes(serialization.Encoding.PEM).decode())
    pbx.write("/srv/etc/ssl/asterisk/priv_key.pem", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode(), 0o640)
    status = pbx.run("pbxhost", "status", check=False).stdout
    assert re.search(r"TLS certificate .* [12] days left", status), status
    timer_unit = pbx.run("systemctl", "show", "-p", "Unit", "--value", "pbxhost-tls.timer").stdout
    pbx.run("systemctl", "start", timer_unit.strip())  # what the timer starts, now
    renewed = serial_on_disk(pbx)
    assert renewed != cert.serial_number
    wait_served(client, pbx_host, renewed)
    status = json.loads(pbx.run("pbxhost", "status", "--json", check=False).stdout)
    item = next(i for i in status["items"] if i["name"] == "TLS certificate")
    assert item["ok"] and item["data"]["days_left"] >= 28
