"""websms.conf: the seed's keys and defaults, several interfaces through
indexed keys, clear errors, and the migration of a seed-era sms.conf."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import pytest

from pbxhost import conf
from pbxhost.websms import config


def load(text: str, tmp_path: Path, env: dict[str, str] | None = None) -> config.WebsmsConfig:
    path = tmp_path / "websms.conf"
    path.write_text(text)
    return config.load(path, env or {})


def test_defaults_are_the_seeds(tmp_path):
    cfg = load("[websms]\n[websmsd]\n[astqueue]\n", tmp_path)
    out, inc, q, hook = cfg.outgoing[0], cfg.incoming[0], cfg.queue, cfg.webhook
    assert (out.auth_method, out.url_host, out.url_path) == ("basic", "http://localhost", "/")
    assert (out.key_to, out.key_from, out.key_body) == ("To", "From", "Body")
    assert (out.resp_check, out.val_numform, out.val_unicode, out.val_static) == ("", "", "", ())
    assert (inc.key_to, inc.key_from, inc.key_body, inc.key_echo, inc.resp_ack) == (
        "To", "From", "Body", "", "")
    assert inc.remt_addr == () and inc.url_path == ("/",)
    assert hook.prox_addr == () and hook.prox_header == "HTTP_X_FORWARDED_FOR"
    assert hook.port is None  # WEBSMSD_PORT unset: no webhook server
    assert (q.waittime, q.maxretries, q.retrytime, q.archive, q.priority) == (45, 0, 300, False, 1)
    assert (q.context, q.channel_context, q.message_encode) == ("default", "default", "rfc3986")
    assert q.outgoingdir.startswith("/srv/var/spool/asterisk")
    assert q.stagingdir.startswith("/srv/var/spool/asterisk")
    assert q.spooldir == Path("/srv/var/spool/websms")
    assert cfg.ami.username == "websms" and cfg.ami.events == "system"


def test_missing_file_is_all_defaults(tmp_path):
    cfg = config.load(tmp_path / "websms.conf", {"WEBSMSD_PORT": "8080"})
    assert cfg.outgoing == (config.Outgoing(),) and cfg.webhook.port == 8080


def test_several_interfaces_by_index(tmp_path):
    cfg = load("""\
[websms]
url_host [api-1] = api.example1.com
url_path = /sms/send/
auth_user [api-1] = user1
auth_secret [api-1] = secret1
url_host [api-2] = https://api.example2.com
auth_method [api-2] = zadarma
val_numform [api-2] = E164

[websmsd]
remt_addr [api-1] = 1.2.3.0/24
url_path [api-1] = /incoming1
remt_addr [api-2] = 5.6.7.8, 2001:db8::/32
url_path [api-2] = /incoming2,/other
key_body [api-2] = text
""", tmp_path)
    one, two = cfg.outgoing
    assert (one.name, one.url, one.auth_user) == ("api-1", "https://api.example1.com/sms/send/",
                                                  "user1")
    assert (two.name, two.auth_method, two.val_numform) == ("api-2", "zadarma", "E164")
    assert two.url == "https://api.example2.com/sms/send/"  # the plain key is every default
    assert cfg.outgoing_for("api-2") is two and cfg.outgoing_for("") is one
    with pytest.raises(KeyError):
        cfg.outgoing_for("api-3")
    a, b = cfg.incoming
    assert a.url_path == ("/incoming1",) and a.key_body == "Body"
    assert b.url_path == ("/incoming2", "/other") and b.key_body == "text"
    assert ipaddress.ip_address("2001:db8::5") in b.remt_addr[1]


def test_anonymous_indexes_count_in_order(tmp_path):
    cfg = load("[websmsd]\nurl_path [] = /a\nkey_body [] = text\nurl_path [] = /b\n", tmp_path)
    assert [(i.name, i.url_path, i.key_body) for i in cfg.incoming] == [
        ("0", ("/a",), "text"), ("1", ("/b",), "Body")]


@pytest.mark.parametrize(("text", "where"), [
    ("[websms]\nauth_method = digest\n", "auth_method"),
    ("[websms]\nauth_method = plain\n", "plain needs key_user"),
    ("[websms]\nresp_check = success\n", "resp_check"),
    ("[websms]\nresp_check = /[/\n", "bad regular expression"),
    ("[websms]\nval_unicode = UTF-8\n", "val_unicode"),
    ("[websms]\nval_numform = E123\n", "val_numform"),
    ("[websms]\nval_static = a=1,b\n", "val_static"),
    ("[websms]\nkey_to = a b\n", "key_to"),
    ("[websms]\nurl_host = ftp://x\n", "url_host"),
    ("[websmsd]\nremt_addr = 1.2.3.400\n", "remt_addr"),
    ("[websmsd]\nprox_addr [x] = 10.0.0.1\n", "cannot be indexed"),
    ("[websmsd]\nurl_path = relative\n", "url_path"),
    ("[astqueue]\npart_bytes = 2000\n", "part_bytes"),
    ("[astqueue]\nexpire = forever\n", "expire"),
    ("[websms]\nbackoff_min = 60\nbackoff_max = 10\n", "backoff_max"),
])
def test_errors_name_file_line_and_key(tmp_path, text, where):
    with pytest.raises(conf.ConfigError) as err:
        load(text, tmp_path)
    assert where in str(err.value) and str(tmp_path / "websms.conf") + ":" in str(err.value)


def test_values_and_quotes(tmp_path):
    cfg = load("""\
[websms]
resp_check = "status=success"
val_static = k1=v1, k2 = v2
val_unicode = unicode=1
url_host = http://api.test:8080/
[websmsd]
resp_ack = "<Response></Response>"
prox_header = X-Real-IP
prox_addr = 10.0.0.0/8
[astqueue]
expire = 1d2h
archive = yes
""", tmp_path)
    assert cfg.outgoing[0].resp_check == "status=success"
    assert cfg.outgoing[0].val_static == (("k1", "v1"), ("k2", "v2"))
    assert cfg.outgoing[0].url == "http://api.test:8080/"
    assert cfg.incoming[0].resp_ack == "<Response></Response>"
    assert cfg.webhook.prox_header == "HTTP_X_REAL_IP"
    assert cfg.queue.expire == 93600 and cfg.queue.archive


# the seed-era sms.conf (as the seed image shipped it), shared with test_oci
SEED_SMS_CONF = (Path(__file__).parents[1] / "fixtures/seed/sms.conf").read_text()


def test_seed_sms_conf_is_migrated_with_a_log_line(tmp_path, caplog):
    (tmp_path / "sms.conf").write_text(SEED_SMS_CONF)
    with caplog.at_level(logging.WARNING):
        cfg = config.load(tmp_path / "websms.conf", {})
    assert "migrated" in caplog.text and "sms.conf" in caplog.text
    assert (tmp_path / "websms.conf").exists() and (tmp_path / "sms.conf").exists()
    out = cfg.outgoing[0]
    assert (out.url, out.auth_user, out.auth_secret) == (
        "https://api.example.com/sms/send/", "user", "passwd")
    assert cfg.queue.channel_context == "dp_entry_channel_open"
    assert cfg.queue.context == "dp_entry_trunk_texting"
    assert cfg.incoming[0].remt_addr == (ipaddress.ip_network("185.45.152.42/32"),)
    again = config.load(tmp_path / "websms.conf", {})  # now read as websms.conf
    assert again.outgoing == cfg.outgoing


def test_migration_in_a_read_only_dir_uses_the_translation(tmp_path, monkeypatch, caplog):
    (tmp_path / "sms.conf").write_text(SEED_SMS_CONF)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(config.os, "open", refuse)
    with caplog.at_level(logging.WARNING):
        cfg = config.load(tmp_path / "websms.conf", {})
    assert cfg.outgoing[0].auth_user == "user" and not (tmp_path / "websms.conf").exists()
    assert "not migrated" in caplog.text


def test_old_value_spellings_are_translated():
    old = conf.loads("[sms]\nnumber_format = omit+\nresponse_check = status=ok\n")
    text = config.translate_sms_conf(old)
    assert "val_numform = E164" in text and "resp_check = status=ok" in text


def test_users_interfaces_from_pjsip_set_var(tmp_path):
    (tmp_path / "pjsip.conf").write_text("#include pjsip_endpoint.conf\n[bob]\ntype = endpoint\n"
                                         "set_var = WEBSMS_INDEX=api-3\nset_var = X=1\n")
    (tmp_path / "pjsip_endpoint.conf").write_text(
        "[user_defaults](!)\ntype = wizard\nendpoint/set_var = TOLL_ALLOW=premium\n"
        "[jane.doe](user_defaults)\nendpoint/set_var = WEBSMS_INDEX = api-2\n"
        "[john.doe](user_defaults)\n")
    assert config.user_indexes(tmp_path) == {"jane.doe": "api-2", "bob": "api-3"}
    assert config.user_indexes(tmp_path / "missing") == {}


# ---------------------------------------------------------------- secure by default

PORT = {"WEBSMSD_PORT": "8080"}
SEEDED = Path(__file__).resolve().parents[2] / "etc" / "asterisk" / "websms.conf"


@pytest.mark.parametrize("text", [
    "",                                                  # no [websmsd] at all
    SEEDED.read_text(),                                  # the shipped file as it is
    "[websmsd]\nremt_addr [a] = 192.0.2.1\nurl_path [b] = /b\n",  # b is open
    "[websmsd]\nprovider = telnyx\nsign_scheme = none\n",
])
def test_an_open_interface_is_refused_with_both_fixes_named(tmp_path, text):
    cfg = load(text, tmp_path, PORT)
    why = config.unprotected_refusal(cfg)
    assert why is not None and "\n" not in why
    assert "remt_addr" in why and "sign_scheme" in why and "insecure_open" in why
    assert str(tmp_path / "websms.conf") in why


@pytest.mark.parametrize("text", [
    "[websmsd]\nremt_addr = 192.0.2.0/24\n",
    "[websmsd]\nprovider = twilio\nsign_secret = s3cret\n",
    "[websmsd]\ninsecure_open = yes\n",
    "[websmsd]\nremt_addr [a] = 192.0.2.1\nurl_path [b] = /b\ninsecure_open [b] = yes\n",
])
def test_a_protected_or_opted_out_interface_is_served(tmp_path, text):
    assert config.unprotected_refusal(load(text, tmp_path, PORT)) is None


def test_no_webhook_server_needs_no_protection(tmp_path):
    assert config.unprotected_refusal(load("[websmsd]\n", tmp_path, {})) is None


def test_websmsd_exits_78_with_one_line_on_an_open_interface(tmp_path, monkeypatch, capsys):
    from pbxhost.websms import daemon
    path = tmp_path / "websms.conf"
    path.write_text("[websmsd]\nurl_path [itsp] = /sms/in\n")
    monkeypatch.setenv("WEBSMSD_PORT", "8080")
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    with pytest.raises(SystemExit) as stop:
        daemon.main(["-c", str(path)])
    assert stop.value.code == 78
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "'itsp'" in lines[0] and "remt_addr [itsp]" in lines[0], lines


@pytest.mark.parametrize(("prox", "refused"), [
    ("prox_addr = 127.0.0.1\n", True), ("prox_addr = ::1\n", True),
    ("prox_addr = 127.0.0.0/8, 192.0.2.1\n", True),
    ("prox_addr = 127.0.0.1\nprox_secret = s3cret-proxy-key\n", False),
    ("prox_addr = 192.0.2.1, 2001:db8::1\n", False), ("", False),
])
def test_a_proxy_on_this_host_needs_its_secret(tmp_path, prox, refused):
    cfg = load(f"[websmsd]\nremt_addr = 198.51.100.0/24\n{prox}", tmp_path, PORT)
    why = config.local_proxy_refusal(cfg)
    assert (why is not None) == refused
    if why:
        assert "prox_secret" in why and "X-Websms-Proxy" in why and "\n" not in why
