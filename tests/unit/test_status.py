"""pbxhost status: the verdicts (pure), the seeding and certificate checks on
files made here, and the rendering that names what fails."""

from __future__ import annotations

import datetime as dt

import pytest

from pbxhost import service
from pbxhost.host import seed, status, tls
from testbed.tlsca import TestCA


@pytest.mark.parametrize(("state", "ok", "detail"), [
    ({}, False, "systemd cannot be asked"),
    ({"LoadState": "not-found"}, True, "not installed"),
    ({"LoadState": "loaded", "ActiveState": "inactive", "SubState": "dead",
      "UnitFileState": "disabled"}, True, "disabled by the admin"),
    ({"LoadState": "loaded", "ActiveState": "failed", "SubState": "failed",
      "UnitFileState": "enabled"}, False, "not running (failed/failed)"),
])
def test_unit_verdicts(state, ok, detail):
    item = status.unit_verdict("autoban.service", state)
    assert item is not None and item.ok is ok and detail in item.detail


def test_a_running_unit_is_checked_further():
    running = {"LoadState": "loaded", "ActiveState": "active"}
    assert status.unit_verdict("x.service", running) is None


@pytest.mark.parametrize(("text", "asterisk_up", "blind"), [
    (service.ami_status("connected", "watching for attacks"), True, False),
    (service.ami_status("disconnected", "watching for attacks"), True, True),
    (service.ami_status("connecting", "to 127.0.0.1:5038"), True, True),
    (service.ami_status("disconnected", "queued: 0"), False, False),  # Asterisk stopped: told there
    ("disabled: enabled = no", True, False),
    ("", True, False),  # not a daemon of ours (no status line)
])
def test_a_daemon_off_the_ami_while_asterisk_runs_is_bad(text, asterisk_up, blind):
    item = status.ami_verdict("autoban.service", {"StatusText": text}, asterisk_up)
    assert (item is not None) is blind
    assert item is None or (not item.ok and text in item.detail)


def test_seeding_states(tmp_path):
    assert not status.check_seed(tmp_path).ok
    (tmp_path / seed.STAGING).mkdir()
    assert "cut short" in status.check_seed(tmp_path).detail
    (tmp_path / seed.LOCK).touch()
    assert status.check_seed(tmp_path).ok


def test_render_names_what_fails_on_the_last_line():
    items = [status.Item("seeding", True, "seeded"), status.Item("asterisk.service", False, "x"),
             status.Item("TLS certificate", False, "y")]
    lines = status.render(items).splitlines()
    assert lines[0].startswith("ok  seeding") and lines[1].startswith("BAD asterisk.service")
    assert lines[-1] == "unhealthy: asterisk.service, TLS certificate"
    assert status.render(items[:1]).splitlines()[-1] == "healthy"


TIMER_ON = {"LoadState": "loaded", "ActiveState": "active"}
TIMER_OFF = {"LoadState": "loaded", "ActiveState": "inactive"}


@pytest.mark.parametrize(("days", "self_signed", "timer", "ok"), [
    (60, False, TIMER_OFF, True),    # an ACME certificate with time left
    (5, False, TIMER_ON, False),     # ACME, under 7 days: nothing of ours renews it
    (5, True, TIMER_ON, True),       # self-signed, under 7 days, the timer renews it
    (5, True, TIMER_OFF, False),     # ... unless the timer is off
    (-1, False, TIMER_ON, False),    # expired
])
def test_certificate_verdicts(tmp_path, days, self_signed, timer, ok):
    if self_signed:
        path = _self_signed(tmp_path, days)
    else:
        path = tmp_path / tls.CERT
        path.write_bytes(TestCA().issue("pbx.example.org", days=days + 1, age=1).cert_pem)
    item = status.check_tls(timer, path)
    assert item.ok is ok, item
    assert "days left" in item.detail and item.data["self_signed"] is self_signed


def _self_signed(tmp_path, days: float):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "pbx.example.org")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days, hours=1))
            .sign(key, hashes.SHA256()))
    path = tmp_path / tls.CERT
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_no_certificate_where_tls_is_installed_is_bad_else_not_installed(tmp_path):
    missing = tmp_path / tls.CERT
    assert not status.check_tls(TIMER_ON, missing).ok
    assert status.check_tls({"LoadState": "not-found"}, missing).detail == "not installed"
