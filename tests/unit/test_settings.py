"""settings.py: each variable of pbxhost.env read strictly, errors naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pbxhost import settings
from pbxhost.settings import SettingError


@pytest.mark.parametrize(("raw", "port"), [("80", 80), ("8080", 8080), ("", None),
                                           ("http", None), (" 81 ", 81), ("８０", None),
                                           ("65535", 65535), ("1", 1)])
def test_websmsd_port(raw, port):
    assert settings.websmsd_port({"WEBSMSD_PORT": raw}) == port


@pytest.mark.parametrize("raw", ["0", "70000", "65536", "00000"])
def test_websmsd_port_out_of_range_is_an_error_naming_it(raw):
    with pytest.raises(SettingError, match="WEBSMSD_PORT") as err:
        settings.websmsd_port({"WEBSMSD_PORT": raw})
    assert err.value.name == "WEBSMSD_PORT"


def test_defaults_when_unset():
    assert settings.syslog_level({}) == 6
    assert settings.websmsd_port({}) is None
    assert settings.hostname({}) == ""
    assert settings.force_config({}) is False
    assert (settings.tls_keybits({}), settings.tls_certdays({})) == (2048, 30)
    assert settings.acme_file({}) is None and settings.acme_posthook({}) == ""


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("yes", True), ("TRUE", True),
                                            ("on", True), ("0", False), ("no", False),
                                            ("", False)])
def test_force_config(raw, value):
    assert settings.force_config({"FORCE_CONFIG": raw}) is value


@pytest.mark.parametrize(("name", "raw"), [
    ("FORCE_CONFIG", "maybe"), ("SYSLOG_LEVEL", "9"), ("SYSLOG_LEVEL", "info"),
    ("HOSTNAME", "pbx example"), ("HOSTNAME", "-x"), ("HOSTNAME", "a;rm -rf /"),
    ("TLS_KEYBITS", "1024"), ("TLS_KEYBITS", "big"), ("TLS_CERTDAYS", "0"),
    ("ACME_FILE", "acme.json"), ("PBXHOST_LOG", "journal"),
])
def test_invalid_values_name_the_variable(name, raw):
    reader = {"FORCE_CONFIG": settings.force_config, "SYSLOG_LEVEL": settings.syslog_level,
              "HOSTNAME": settings.hostname, "TLS_KEYBITS": settings.tls_keybits,
              "TLS_CERTDAYS": settings.tls_certdays, "ACME_FILE": settings.acme_file,
              "PBXHOST_LOG": settings.log_to_syslog}[name]
    with pytest.raises(SettingError) as err:
        reader({name: raw})
    assert err.value.name == name and str(err.value).startswith(f"{name}=")


def test_valid_values():
    env = {"HOSTNAME": "pbx.example.com", "TLS_KEYBITS": "4096", "TLS_CERTDAYS": "90",
           "ACME_FILE": "/srv/acme/acme.json", "ACME_POSTHOOK": " systemctl reload x "}
    assert settings.hostname(env) == "pbx.example.com"
    assert settings.hostname({"HOSTNAME": "2001:db8::1"}) == "2001:db8::1"
    assert (settings.tls_keybits(env), settings.tls_certdays(env)) == (4096, 90)
    assert settings.acme_file(env) == Path("/srv/acme/acme.json")
    assert settings.acme_posthook(env) == "systemctl reload x"


@pytest.mark.parametrize(("raw", "value"), [
    ("", False), ("stderr", False), ("syslog", True), (" SYSLOG ", True)])
def test_pbxhost_log(raw, value):
    assert settings.log_to_syslog({"PBXHOST_LOG": raw}) is value
