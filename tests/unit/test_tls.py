"""`pbxhost tls`: the self-signed certificate (names, renewal), the choice
between it and ACME's, the pair on disk (modes, staged then swapped, a run cut
short finished), and certificate_info for `pbxhost status`."""

from __future__ import annotations

import datetime as dt
import grp
import os
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509

from pbxhost.host import cli, renew, tls
from pbxhost.settings import EX_CONFIG, SettingError
from testbed.tlsca import DAY, TestCA, acme_v2, now

HOST = "pbx.example.org"
GROUP = grp.getgrgid(os.getgid()).gr_name  # a group that exists wherever the test runs


@pytest.fixture(scope="module")
def pair() -> tls.Pair:
    return tls.self_signed(HOST, 2048, 30)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


def run(dest: Path, **env: str) -> int:
    return renew.run({"HOSTNAME": HOST, **env}, renew.Options(dest, reload=False,
                                                               key_group=GROUP))


def files(dest: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(dest.iterdir()) if p.name != tls.LOCK}


# ---------------------------------------------------------------- the self-signed certificate

def test_self_signed_names_the_host_in_its_san_for_its_days(pair):
    info = pair.info()
    assert info.names == (HOST,) and info.subject == info.issuer == f"CN={HOST}"
    assert info.self_signed and info.days_left == 29
    assert abs(info.not_after - (now() + 30 * DAY)) < dt.timedelta(minutes=1)
    assert pair.leaf.public_key().key_size == 2048


@pytest.mark.parametrize("address", ["192.0.2.10", "2001:db8:1::a"])
def test_self_signed_for_an_ip_address_has_an_ip_san(address):
    leaf = tls.self_signed(address, 2048, 1).leaf
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [address]
    assert san.get_values_for_type(x509.DNSName) == []


def test_a_client_trusting_the_self_signed_certificate_verifies_the_host(pair, tmp_path):
    """A real handshake on loopback, host name checked, as a phone given the
    certificate as its CA does."""
    (tmp_path / "c.pem").write_bytes(pair.cert_pem)
    (tmp_path / "k.pem").write_bytes(pair.key_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
            tls_conn.recv(1)

    server = threading.Thread(target=serve)
    server.start()
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "c.pem"))
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            client_ctx.wrap_socket(raw, server_hostname=HOST) as conn:
        assert x509.load_der_x509_certificate(
            conn.getpeercert(binary_form=True)).serial_number == pair.leaf.serial_number
        conn.send(b"x")
    server.join(10)
    listener.close()


@pytest.mark.parametrize("name, host, ok", [
    ("pbx.example.org", "pbx.example.org", True),
    ("PBX.Example.org.", "pbx.example.org", True),
    ("*.example.org", "pbx.example.org", True),
    ("*.example.org", "example.org", False),
    ("*.example.org", "a.pbx.example.org", False),
    ("other.example.org", "pbx.example.org", False),
    ("192.0.2.10", "192.0.2.10", True),
    ("2001:db8:1::a", "2001:DB8:1:0::a", True),
    ("*.0.2.10", "192.0.2.10", False),
])
def test_covers(name, host, ok):
    assert tls.covers((name,), host) is ok


@pytest.mark.parametrize("lifetime, left, certdays, due", [
    (30, 10.5, 30, False),   # a third of 30 days: renewed from 10 days left
    (30, 9.5, 30, True),
    (90, 31, 30, False),     # an admin's 90-day certificate: a third is 30 days
    (90, 29, 30, True),
    (2, 1.9, 30, True),      # made to end in 2 days: under the 7-day floor
    (1, 0.6, 1, False),      # TLS_CERTDAYS=1: the floor is half a day, not every run
    (1, 0.4, 1, True),
])
def test_renewal_due(lifetime, left, certdays, due):
    t = now()
    info = tls.CertInfo("CN=x", "CN=x", t - (lifetime - left) * DAY, t + left * DAY,
                        int(left), 1, ("x",), True)
    assert tls.renewal_due(info, certdays, t) is due


# ---------------------------------------------------------------- the choice

def pair_of(issued, source="test") -> tls.Pair:
    return tls.check_pair(issued.cert_pem, issued.key_pem, source)


def test_plan(ca, pair):
    acme = pair_of(ca.issue(HOST, days=90, age=1))
    older_acme = pair_of(ca.issue(HOST, days=90, age=30))
    other = pair_of(ca.issue("other.example.org"))
    ending_self = tls.self_signed(HOST, 2048, 2)
    plan = tls.plan
    assert plan(None, "no certificate", None, HOST, 30).action == "self-sign"
    assert plan(pair, "", None, HOST, 30).action == "keep"
    assert plan(ending_self, "", None, HOST, 30).action == "self-sign"
    assert "not other.example.org" in plan(pair, "", None, "other.example.org", 30).reason
    assert plan(None, "broken", acme, HOST, 30).action == "install"
    assert plan(pair, "", acme, HOST, 30).action == "install"       # ACME replaces ours
    assert plan(acme, "", acme, HOST, 30).action == "keep"          # already in place
    assert plan(older_acme, "", acme, HOST, 30).action == "install"  # renewed by ACME
    assert plan(acme, "", older_acme, HOST, 30).action == "keep"    # never an older one
    assert plan(other, "", acme, HOST, 30).action == "install"      # HOSTNAME changed
    # someone else's certificate is never replaced by a self-signed one
    assert plan(older_acme, "", None, HOST, 30).action == "keep"


def test_check_pair_refuses_a_foreign_key_and_an_expired_certificate(ca):
    a, b = ca.issue(HOST), ca.issue(HOST)
    with pytest.raises(tls.TlsError, match="the key does not match the certificate"):
        tls.check_pair(a.cert_pem, b.key_pem, "x")
    expired = ca.issue(HOST, days=30, age=31)
    with pytest.raises(tls.TlsError, match="expired on"):
        tls.check_pair(expired.cert_pem, expired.key_pem, "x")
    with pytest.raises(tls.TlsError, match="no PEM certificate"):
        tls.check_pair(b"junk", a.key_pem, "x")
    with pytest.raises(tls.TlsError, match="not an unencrypted PEM private key"):
        tls.check_pair(a.cert_pem, b"junk", "x")


# ---------------------------------------------------------------- the files

def test_install_writes_the_key_for_the_group_only_and_the_chain(ca, tmp_path):
    issued = ca.issue(HOST)
    tls.install(pair_of(issued), tmp_path, os.getgid())
    key, cert = os.stat(tmp_path / tls.KEY), os.stat(tmp_path / tls.CERT)
    assert stat.S_IMODE(key.st_mode) == 0o640 and key.st_gid == os.getgid()
    assert stat.S_IMODE(cert.st_mode) == 0o644
    assert len(tls.load_chain((tmp_path / tls.CERT).read_bytes())) == 2  # leaf + CA
    assert sorted(p.name for p in tmp_path.iterdir()) == [tls.CERT, tls.KEY]


def test_a_pair_cut_short_is_finished_or_undone_never_mixed(ca, tmp_path, monkeypatch):
    old, new = pair_of(ca.issue(HOST)), pair_of(ca.issue(HOST))
    tls.install(old, tmp_path, None)
    real_replace = os.replace

    def crash_on_cert(src, dst):
        if Path(dst).name == tls.CERT and Path(src).name.endswith(tls.STAGED):
            raise KeyboardInterrupt("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_cert)
    with pytest.raises(KeyboardInterrupt):
        tls.install(new, tmp_path, None)
    monkeypatch.setattr(os, "replace", real_replace)
    # the new key is in place, the old certificate too: the next run finishes
    assert "finished" in tls.recover(tmp_path)
    assert tls.read_current(tmp_path)[0].fingerprint == new.fingerprint
    assert not list(tmp_path.glob(".*"))
    # a staged key alone (cut short while staging) is dropped
    (tmp_path / f".{tls.KEY}{tls.STAGED}").write_bytes(old.key_pem)
    assert "removed a staged key" in tls.recover(tmp_path)
    assert tls.read_current(tmp_path)[0].fingerprint == new.fingerprint
    # a staged certificate that matches no key is dropped
    (tmp_path / f".{tls.CERT}{tls.STAGED}").write_bytes(old.cert_pem)
    assert "does not match" in tls.recover(tmp_path)
    assert tls.read_current(tmp_path)[0].fingerprint == new.fingerprint
    assert tls.recover(tmp_path) == ""


def test_certificate_info_for_status(ca, tmp_path):
    issued = ca.issue(HOST, "*.example.org", days=20, age=10)
    tls.install(pair_of(issued), tmp_path, None)
    info = tls.certificate_info(tmp_path / tls.CERT)
    assert (info.subject, info.issuer) == (f"CN={HOST}", "CN=pbxhost test CA")
    assert info.names == (HOST, "*.example.org") and not info.self_signed
    assert info.days_left == 9 and info.serial == issued.serial
    assert info.not_after == issued.not_after.replace(microsecond=0)
    with pytest.raises(FileNotFoundError):
        tls.certificate_info(tmp_path / "absent.pem")
    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(tls.TlsError):
        tls.certificate_info(tmp_path / "bad.pem")


# ---------------------------------------------------------------- one run

def test_first_run_makes_a_self_signed_pair_then_keeps_it(tmp_path):
    dest = tmp_path / "ssl/asterisk"
    assert run(dest, TLS_CERTDAYS="20") == 0
    assert stat.S_IMODE(dest.stat().st_mode) == 0o750
    first = files(dest)
    info = tls.certificate_info(dest / tls.CERT)
    assert info.self_signed and info.names == (HOST,) and info.days_left == 19
    assert run(dest) == 0
    assert files(dest) == first
    # HOSTNAME changed: a new self-signed certificate for the new name
    assert renew.run({"HOSTNAME": "192.0.2.10"}, renew.Options(dest, False, key_group="")) == 0
    assert tls.certificate_info(dest / tls.CERT).names == ("192.0.2.10",)


def test_a_self_signed_certificate_ending_in_2_days_is_renewed(tmp_path):
    """What the daily timer's run does to a certificate made to expire in 2 days."""
    tls.install(tls.self_signed(HOST, 2048, 2), tmp_path, None)
    old = tls.certificate_info(tmp_path / tls.CERT)
    assert run(tmp_path) == 0
    new = tls.certificate_info(tmp_path / tls.CERT)
    assert new.serial != old.serial and new.days_left == 29


def test_run_takes_acme_and_a_bad_acme_json_leaves_the_pair(ca, tmp_path, caplog):
    dest, acme_file = tmp_path / "ssl", tmp_path / "acme.json"
    assert run(dest) == 0
    issued = ca.issue("*.example.org", days=90)
    acme_file.write_bytes(acme_v2(le=[(("*.example.org",), issued)]))
    assert run(dest, ACME_FILE=str(acme_file)) == 0
    assert tls.certificate_info(dest / tls.CERT).serial == issued.serial
    good = files(dest)
    for bad, says in ((b"{not json", "not JSON"),
                      (b'{"foo": {"bar": 1}}', "not a Traefik acme.json"),
                      (acme_v2(le=[(("other.example.org",), ca.issue("other.example.org"))]),
                       "no certificate for pbx.example.org among 1"),
                      (acme_v2(le=[((HOST,), ca.issue(HOST, days=10, age=11))]), "expired on")):
        acme_file.write_bytes(bad)
        caplog.clear()
        assert run(dest, ACME_FILE=str(acme_file)) == 1
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and says in errors[0] and "stays" in errors[0], errors
        assert files(dest) == good
    # not there yet (Traefik's first start): a warning, and the pair stays
    acme_file.unlink()
    assert run(dest, ACME_FILE=str(acme_file)) == 0 and files(dest) == good


def test_no_usable_acme_and_no_pair_still_gives_asterisk_a_certificate(tmp_path):
    acme_file = tmp_path / "acme.json"
    acme_file.write_text("[]")
    assert run(tmp_path / "ssl", ACME_FILE=str(acme_file)) == 1
    assert tls.certificate_info(tmp_path / "ssl" / tls.CERT).self_signed


def test_settings_are_checked(tmp_path):
    with pytest.raises(SettingError, match="TLS_KEYBITS"):
        run(tmp_path, TLS_KEYBITS="1024")
    with pytest.raises(SettingError, match=r"HOSTNAME.*ACME_FILE"):
        renew.run({"ACME_FILE": "/srv/etc/acme/acme.json"}, renew.Options(tmp_path, False))
    assert not (tmp_path / tls.CERT).exists()


def test_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSTNAME", HOST)
    monkeypatch.delenv("ACME_FILE", raising=False)
    assert cli.main(["tls", "--dest", str(tmp_path), "--no-reload", "--key-group", ""]) == 0
    assert stat.S_IMODE((tmp_path / tls.KEY).stat().st_mode) == 0o600
    monkeypatch.setenv("TLS_CERTDAYS", "0")
    with pytest.raises(SystemExit) as exc:
        cli.main(["tls", "--dest", str(tmp_path), "--no-reload"])
    assert exc.value.code == EX_CONFIG


def test_reload_tells_a_stopped_asterisk_from_a_failed_reload(tmp_path):
    fake = tmp_path / "asterisk"
    fake.write_text("#!/bin/sh\necho 'Unable to connect to remote asterisk (does "
                    "/var/run/asterisk/asterisk.ctl exist?)'; exit 1\n")
    fake.chmod(0o755)
    assert renew.reload_asterisk([str(fake)])
    fake.write_text("#!/bin/sh\necho \"$@\" > \"$0.args\"; "
                    "echo \"Module 'res_pjsip.so' reloaded successfully.\"\n")
    assert renew.reload_asterisk([str(fake), "-C", "/x.conf"])
    assert (tmp_path / "asterisk.args").read_text() == "-C /x.conf -rx module reload res_pjsip.so\n"
    fake.write_text("#!/bin/sh\necho 'No such command'; exit 1\n")
    assert not renew.reload_asterisk([str(fake)])
    assert renew.reload_asterisk([str(tmp_path / "absent")])
