"""Unit tests for pbxhost.conf, the Asterisk-dialect config reader."""

from __future__ import annotations

import ipaddress
import os
import pickle
from pathlib import Path

import pytest

from pbxhost.conf import (
    Config,
    ConfigError,
    Item,
    Section,
    load,
    loads,
    parse_bool,
    parse_duration,
    parse_networks,
)

net = ipaddress.ip_network


def only(text: str) -> Section:
    """The single ordinary section of text."""
    cfg = loads(text)
    assert len(cfg.sections) == 1
    return cfg.sections[0]


def error(text: str, path: str = "<string>") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        loads(text, path)
    return info.value


# ---------------------------------------------------------------- ConfigError


def test_config_error_str_and_attributes() -> None:
    e = ConfigError("boom", "/etc/x.conf", 7)
    assert (e.path, e.line, e.message) == ("/etc/x.conf", 7, "boom")
    assert str(e) == "/etc/x.conf:7: boom"
    assert str(ConfigError("boom", "/etc/x.conf")) == "/etc/x.conf: boom"
    assert str(ConfigError("boom")) == "boom"


def test_config_error_pickles() -> None:
    e = pickle.loads(pickle.dumps(ConfigError("boom", "a.conf", 3)))
    assert str(e) == "a.conf:3: boom"


# ---------------------------------------------------------------- comments


def test_line_comments() -> None:
    s = only("; leading\n[s] ; after header\nkey = value ; trailing\n  ; indented\n")
    assert s.items == [Item("key", "value", None, "<string>", 3)]


def test_escaped_semicolon_is_literal_other_backslashes_verbatim() -> None:
    s = only("[s]\na = one\\;two ; comment\nb = C:\\path\\n\\\\x\n")
    assert s.get("a") == "one;two"
    assert s.get("b") == "C:\\path\\n\\\\x"


def test_block_comment_spanning_lines() -> None:
    s = only("[s]\na = 1 ;-- start\nb = 2\n[t]\nstill comment --; c = 3\nd = 4\n")
    assert [(i.key, i.value, i.line) for i in s.items] == [
        ("a", "1", 2), ("c", "3", 5), ("d", "4", 6),
    ]


def test_block_comment_within_one_line() -> None:
    assert only("[s]\n;-- x --;a = 1\n").get("a") == "1"


def test_dash_separator_is_a_line_comment_not_a_block() -> None:
    # Asterisk: ";---" does not open a block comment, so separator lines are harmless
    s = only(";------------ header ------------\n[s]\na = 1\n")
    assert s.get("a") == "1"


def test_unterminated_block_comment() -> None:
    e = error("[s]\na = 1\n;-- never closed\nb = 2\n")
    assert str(e) == "<string>:3: unterminated ;-- block comment"


# ---------------------------------------------------------------- sections and templates


def test_sections_templates_and_file_positions() -> None:
    cfg = loads("[a]\nx = 1\n[tpl](!)\ny = 2\n[b](tpl)\n", "/etc/asterisk/t.conf")
    assert [s.name for s in cfg.sections] == ["a", "b"]
    assert list(cfg.templates) == ["tpl"]
    tpl = cfg.templates["tpl"]
    assert tpl.is_template and (tpl.path, tpl.line) == ("/etc/asterisk/t.conf", 3)
    b = cfg.section("b")
    assert b is not None
    assert (b.templates, b.is_template, b.line) == (("tpl",), False, 5)
    assert "tpl" not in cfg and "a" in cfg and "A" in cfg
    assert cfg.section("missing") is None


def test_inheritance_order_and_override() -> None:
    cfg = loads(
        "[t1](!)\nk = t1\nonly1 = yes\n"
        "[t2](!)\nk = t2\n"
        "[s](t1,t2)\nown = 1\n"
        "[o](t1, t2)\nk = own\n"
    )
    s = cfg.section("s")
    assert s is not None
    assert [(i.key, i.value) for i in s.items] == [
        ("k", "t1"), ("only1", "yes"), ("k", "t2"), ("own", "1"),
    ]
    assert s.get("k") == "t2"
    assert s.getall("k") == ["t1", "t2"]
    o = cfg.section("o")
    assert o is not None and o.get("k") == "own" and o.getall("k") == ["t1", "t2", "own"]


def test_inherit_from_earlier_ordinary_section() -> None:
    cfg = loads("[base]\na = 1\n[child](base)\nb = 2\n")
    child = cfg.section("child")
    assert child is not None and (child.get("a"), child.get("b")) == ("1", "2")
    assert [s.name for s in cfg.sections] == ["base", "child"]


def test_template_that_inherits_is_resolved_transitively() -> None:
    cfg = loads("[t](!)\na = 1\n[u](!,t)\nb = 2\n[s](u)\n")
    u = cfg.templates["u"]
    assert u.is_template and u.templates == ("t",)
    s = cfg.section("s")
    assert s is not None and [(i.key, i.value) for i in s.items] == [("a", "1"), ("b", "2")]


def test_header_options_may_have_spaces() -> None:
    cfg = loads("[t](!)\na = 1\n[u] ( ! , t )\n[s] (u)\n")
    assert cfg.templates["u"].is_template and cfg.templates["u"].templates == ("t",)
    s = cfg.section("s")
    assert s is not None and s.get("a") == "1"


def test_inherited_items_keep_their_origin() -> None:
    cfg = loads("[t](!)\nn = abc\n[s](t)\n", "x.conf")
    s = cfg.section("s")
    assert s is not None and (s.items[0].path, s.items[0].line) == ("x.conf", 2)


def test_inheritance_takes_a_snapshot() -> None:
    # like Asterisk: items appended to a template later do not reach earlier inheritors
    cfg = loads("[t](!)\na = 1\n[s](t)\n[t](+)\nb = 2\n")
    s = cfg.section("s")
    assert s is not None and "b" not in s
    assert cfg.templates["t"].getall("b") == ["2"]


def test_append_to_section_and_template() -> None:
    cfg = loads("[s]\na = 1\n[t](!)\nx = 1\n[other]\n[s](+)\nb = 2\n[t]( + )\ny = 2\n")
    s = cfg.section("s")
    assert s is not None and s.keys() == ["a", "b"] and s.line == 1
    assert [x.name for x in cfg.sections] == ["s", "other"]
    assert cfg.templates["t"].keys() == ["x", "y"]


def test_append_to_unknown_section() -> None:
    e = error("[s]\na = 1\n\n[nope](+)\n", "m.conf")
    assert str(e).startswith("m.conf:4: ") and "nope" in e.message


def test_append_cannot_be_combined() -> None:
    assert error("[s]\n[s](+,!)\n").line == 2


def test_unknown_template() -> None:
    e = error("[t](!)\n[s](t,missing)\n", "/etc/asterisk/pjsip.conf")
    assert str(e).startswith("/etc/asterisk/pjsip.conf:2: ") and "missing" in e.message


def test_template_defined_later_is_unknown() -> None:
    assert error("[s](t)\n[t](!)\n").line == 1


@pytest.mark.parametrize("header", ["[]", "[s", "[s] junk", "[s](!", "[s](!,)", "[ ]"])
def test_bad_section_headers(header: str) -> None:
    e = error(f"[ok]\n{header}\n")
    assert (e.path, e.line) == ("<string>", 2)


def test_repeated_section_names_stay_separate() -> None:
    cfg = loads("[jane]\ntype = endpoint\n[jane]\ntype = aor\nmax_contacts = 1\n")
    assert [s.get("type") for s in cfg.sections_named("JANE")] == ["endpoint", "aor"]
    jane = cfg.section("jane")
    assert jane is not None and jane.get("type") == "endpoint"
    assert "max_contacts" not in jane


def test_repeated_name_resolves_to_most_recent_definition() -> None:
    cfg = loads("[t](!)\na = 1\n[t](!)\na = 2\n[s](t)\n[s](+)\nb = 3\n")
    s = cfg.sections[0]
    assert s.get("a") == "2" and s.get("b") == "3"
    assert cfg.templates["t"].get("a") == "2"


# ---------------------------------------------------------------- key = value


def test_key_value_forms_and_verbatim_values() -> None:
    s = only(
        "[s]\n"
        "  a=1\n"
        "b => two words  \n"
        "exten => _X.,1,Dial(PJSIP/${EXTEN})\n"
        'callerid = "Jane Doe" <+12025550160>\n'
        "endpoint/allow = !all,ulaw\n"
        "resp_check = status=success\n"
        "empty =\n"
    )
    assert s.get("a") == "1"
    assert s.get("b") == "two words"
    assert s.get("exten") == "_X.,1,Dial(PJSIP/${EXTEN})"
    assert s.get("callerid") == '"Jane Doe" <+12025550160>'
    assert s.get("endpoint/allow") == "!all,ulaw"
    assert s.get("resp_check") == "status=success"
    assert s.get("empty") == ""


def test_repeated_keys_are_multivalued() -> None:
    s = only("[s]\nallow = ulaw\nallow = alaw\nother = x\nallow = g722\n")
    assert s.getall("allow") == ["ulaw", "alaw", "g722"]
    assert s.get("allow") == "g722"
    assert s.getall("missing") == []


def test_keys_case_sensitive_as_written_lookups_case_insensitive() -> None:
    s = only("[s]\nMaxContacts = 1\nmaxcontacts = 2\nOther = x\n")
    assert s.keys() == ["MaxContacts", "Other"]
    assert [i.key for i in s.items] == ["MaxContacts", "maxcontacts", "Other"]
    assert s.get("MAXCONTACTS") == "2"
    assert s.getall("maxContacts") == ["1", "2"]
    assert "OTHER" in s and "absent" not in s


def test_get_default() -> None:
    s = only("[s]\na = 1\n")
    assert s.get("b") is None and s.get("b", "dflt") == "dflt"


@pytest.mark.parametrize("line", ["just words", "= value", "a b = c", "k [x = 1"])
def test_bad_lines(line: str) -> None:
    e = error(f"[s]\na = 1\n{line}\n", "w.conf")
    assert str(e).startswith("w.conf:3: ")


def test_key_before_any_section() -> None:
    e = error("; header\n\nkey = value\n[s]\n", "w.conf")
    assert str(e).startswith("w.conf:3: ") and "section" in e.message


# ---------------------------------------------------------------- indexed keys


def test_indexed_keys_with_and_without_space() -> None:
    s = only("[s]\nurl_host = http://default\nurl_host [api-1] = https://a\nurl_host[api-2]=b\n")
    assert s.indexed("url_host", "api-1") == "https://a"
    assert s.indexed("url_host", "api-2") == "b"
    assert s.indexed("URL_HOST", "api-3") == "http://default"  # falls back to plain key
    assert s.indexed("nothing", "api-1") is None
    assert s.indexed("nothing", "api-1", "d") == "d"
    assert s.get("url_host") == "http://default"  # indexed values are not plain values
    assert s.getall("url_host") == ["http://default"]
    assert s.keys() == ["url_host"]
    assert s.indexes() == ["api-1", "api-2"]


def test_indexed_without_plain_key() -> None:
    s = only("[s]\nurl_path [a] = /x\n")
    assert s.indexed("url_path", "a") == "/x"
    assert s.get("url_path") is None and "url_path" not in s and s.keys() == []


def test_empty_index_appends_like_php() -> None:
    s = only(
        "[s]\nkey_body [] = text\nkey_body [ ] = message\nother [] = o\n"
        "key_body [7] = seven\nkey_body [x] = named\nkey_body [] = next\n"
    )
    assert [(i.key, i.index, i.value) for i in s.items] == [
        ("key_body", "0", "text"),
        ("key_body", "1", "message"),
        ("other", "0", "o"),
        ("key_body", "7", "seven"),
        ("key_body", "x", "named"),
        ("key_body", "8", "next"),
    ]
    assert s.indexes() == ["0", "1", "7", "x", "8"]


def test_empty_index_continues_after_inherited_indices() -> None:
    cfg = loads("[t](!)\nk [] = a\n[s](t)\nk [] = b\n")
    s = cfg.section("s")
    assert s is not None and [i.index for i in s.items] == ["0", "1"]


def test_indexed_typed_accessor_falls_back() -> None:
    s = only("[s]\nport = 80\nport [b] = 8080\n")
    assert s.get_int("port", idx="b") == 8080
    assert s.get_int("port", idx="c") == 80
    assert s.get_int("port") == 80


# ---------------------------------------------------------------- includes


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_include_forms_relative_to_including_file(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    write(sub / "a.conf", "a = 1\n")
    write(sub / "b.conf", "b = 2\n")
    write(sub / "c.conf", "c = 3\n#include d.conf\n")  # relative to sub/, not the top dir
    write(sub / "d.conf", "d = 4\n")
    top = write(
        tmp_path / "top.conf",
        "[s]\n#include sub/a.conf\n#include \"sub/b.conf\"\n#include <sub/c.conf>\nz = 0\n",
    )
    s = load(top).sections[0]
    assert [(i.key, Path(i.path).name, i.line) for i in s.items] == [
        ("a", "a.conf", 1), ("b", "b.conf", 1), ("c", "c.conf", 1), ("d", "d.conf", 1),
        ("z", "top.conf", 5),
    ]


def test_included_text_continues_current_section(tmp_path: Path) -> None:
    write(tmp_path / "inc.conf", "in_s = 1\n[t]\nin_t = 2\n")
    cfg = load(write(tmp_path / "top.conf", "[s]\n#include inc.conf\nafter = 3\n"))
    assert [(s.name, s.keys()) for s in cfg.sections] == [("s", ["in_s"]), ("t", ["in_t", "after"])]


def test_include_absolute_path(tmp_path: Path) -> None:
    inc = write(tmp_path / "abs.conf", "[abs]\nk = v\n")
    cfg = loads(f"#include {inc}\n")
    assert cfg.section("abs") is not None


def test_include_glob_sorted(tmp_path: Path) -> None:
    for name in ("pjsip_b.conf", "pjsip_a.conf", "pjsip_c.conf"):
        write(tmp_path / name, f"[{name[6]}]\n")
    write(tmp_path / "other.conf", "[other]\n")
    cfg = load(write(tmp_path / "pjsip.conf", "#include pjsip_*.conf\n"))
    assert [s.name for s in cfg.sections] == ["a", "b", "c"]


def test_include_glob_with_no_match(tmp_path: Path) -> None:
    top = write(tmp_path / "top.conf", "[s]\n#include none_*.conf\n")
    with pytest.raises(ConfigError) as info:
        load(top)
    assert str(info.value).startswith(f"{top}:2: ")


def test_include_missing_file(tmp_path: Path) -> None:
    top = write(tmp_path / "top.conf", "[s]\n\n#include missing.conf\n")
    with pytest.raises(ConfigError) as info:
        load(top)
    assert str(info.value).startswith(f"{top}:3: ") and "missing.conf" in info.value.message


def test_include_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "dir.conf").mkdir()  # reading a directory fails even for root
    top = write(tmp_path / "top.conf", "[s]\n#include dir.conf\n")
    with pytest.raises(ConfigError) as info:
        load(top)
    assert (info.value.path, info.value.line) == (str(top), 2)


def test_include_invalid_utf8_names_included_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "bad.conf").write_bytes(b"a = 1\nb = \xff\n")
    top = write(tmp_path / "top.conf", "[s]\n#include bad.conf\n")
    with pytest.raises(ConfigError) as info:
        load(top)
    assert (info.value.path, info.value.line) == (str(tmp_path / "bad.conf"), 2)


def test_tryinclude(tmp_path: Path) -> None:
    write(tmp_path / "here.conf", "k = 1\n")
    top = write(
        tmp_path / "top.conf",
        "[s]\n#tryinclude missing.conf\n#tryinclude \"none_*.conf\"\n#tryinclude <here.conf>\n",
    )
    assert load(top).sections[0].get("k") == "1"


def test_include_loop_direct(tmp_path: Path) -> None:
    top = write(tmp_path / "top.conf", "[s]\n#include top.conf\n")
    with pytest.raises(ConfigError) as info:
        load(top)
    assert str(info.value).startswith(f"{top}:2: ") and "loop" in info.value.message


def test_include_loop_indirect(tmp_path: Path) -> None:
    write(tmp_path / "a.conf", "; a\n#include b.conf\n")
    b = write(tmp_path / "b.conf", "\n\n#include a.conf\n")
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path / "top.conf", "[s]\n#include a.conf\n"))
    assert str(info.value).startswith(f"{b}:3: ") and "loop" in info.value.message


def test_including_same_file_twice_is_not_a_loop(tmp_path: Path) -> None:
    write(tmp_path / "common.conf", "k = v\n")
    top = write(tmp_path / "top.conf", "[a]\n#include common.conf\n[b]\n#include common.conf\n")
    cfg = load(top)
    assert [s.get("k") for s in cfg.sections] == ["v", "v"]


def test_loads_includes_relative_to_path_or_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "inc.conf", "k = v\n")
    text = "[s]\n#include inc.conf\n"
    assert loads(text, str(tmp_path / "virtual.conf")).sections[0].get("k") == "v"
    monkeypatch.chdir(tmp_path)
    assert loads(text).sections[0].get("k") == "v"


def test_exec_not_supported() -> None:
    e = error("[s]\n#exec /bin/echo a=1\n", "e.conf")
    assert str(e).startswith("e.conf:2: ") and "not supported" in e.message


@pytest.mark.parametrize(
    "line", ["#define x 1", "#", "#include", '#include ""', "#includex.conf", "#tryexec x"]
)
def test_other_directives_are_errors(line: str) -> None:
    assert (error(f"[s]\n{line}\n").line) == 2


def test_load_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    with pytest.raises(ConfigError) as info:
        load(missing)
    assert (info.value.path, info.value.line) == (str(missing), None)
    assert str(info.value).startswith(f"{missing}: ")


def test_load_returns_config_with_path(tmp_path: Path) -> None:
    top = write(tmp_path / "x.conf", "[s]\n")
    cfg = load(top)
    assert isinstance(cfg, Config) and cfg.path == str(top)
    assert cfg.sections[0].path == str(top)


def test_load_strips_utf8_bom(tmp_path: Path) -> None:
    top = tmp_path / "bom.conf"
    top.write_bytes(b"\xef\xbb\xbf[s]\nk = v\n")
    assert load(top).sections[0].get("k") == "v"


# ---------------------------------------------------------------- value parsers


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), ("0", 0), ("20m", 1200), ("1d2h3m4s", 93784), ("2h30m", 9000),
    ("1D", 86400), (" 5S ", 5), ("1h1s", 3601), ("0s", 0),
])
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "  ", "-5", "1x", "m", "1m1d", "1.5h", "1h 30m", "5m5m", "٣"])
def test_parse_duration_errors(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "value"), [
    ("yes", True), ("No", False), ("TRUE", True), ("false", False), ("on", True),
    ("Off", False), ("1", True), ("0", False), (" yes ", True),
])
def test_parse_bool(text: str, value: bool) -> None:
    assert parse_bool(text) is value


@pytest.mark.parametrize("text", ["", "y", "2", "enabled"])
def test_parse_bool_errors(text: str) -> None:
    with pytest.raises(ValueError, match="boolean"):
        parse_bool(text)


def test_parse_networks() -> None:
    assert parse_networks("") == [] and parse_networks("  ") == []
    assert parse_networks("192.0.2.1, 2001:db8::1 [2001:db8::2]") == [
        net("192.0.2.1/32"), net("2001:db8::1/128"), net("2001:db8::2/128"),
    ]
    assert parse_networks("192.0.2.0/24,2001:db8::/32,  198.51.100.7/24") == [
        net("192.0.2.0/24"), net("2001:db8::/32"), net("198.51.100.0/24"),
    ]
    assert parse_networks("192.0.2.0-192.0.2.3") == [net("192.0.2.0/30")]
    assert parse_networks("192.0.2.1-192.0.2.200") == list(ipaddress.summarize_address_range(
        ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.200"),
    ))
    assert parse_networks("[2001:db8::]-[2001:db8::ff]") == [net("2001:db8::/120")]
    assert parse_networks("192.0.2.5-192.0.2.5") == [net("192.0.2.5/32")]


@pytest.mark.parametrize("entry", [
    "192.0.2.300", "192.0.2.0/33", "host.example", "192.0.2.9-192.0.2.1",
    "192.0.2.1-2001:db8::1", "-", "192.0.2.1-", "[192.0.2.1",
])
def test_parse_networks_errors(entry: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_networks(f"10.0.0.0/8, {entry}")
    assert f"bad network entry {entry!r}" in str(info.value)


# ---------------------------------------------------------------- typed accessors

TYPED = """\
[s]
flag = yes
qflag = "off"
n = -42
f = 2.5
d = 1h30m
nets = 192.0.2.0/24 2001:db8::1
str = "quoted value"
raw = plain "inner"
bad_bool = maybe
bad_int = 4.2
bad_float = nan
bad_dur = 5 minutes
bad_net = 192.0.2.0/24, nonsense
bad_idx [b] = x
"""


def test_typed_accessors() -> None:
    s = only(TYPED)
    assert s.get_bool("flag") is True and s.get_bool("qflag") is False
    assert s.get_int("n") == -42
    assert s.get_float("f") == 2.5 and s.get_float("n") == -42.0
    assert s.get_duration("d") == 5400
    assert s.get_networks("nets") == [net("192.0.2.0/24"), net("2001:db8::1/128")]
    assert s.get_str("str") == "quoted value"
    assert s.get("str") == '"quoted value"'
    assert s.get_str("raw") == 'plain "inner"'


def test_typed_accessors_missing_key_returns_default_as_is() -> None:
    s = only(TYPED)
    sentinel: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    assert s.get_bool("missing") is None and s.get_bool("missing", True) is True
    assert s.get_int("missing", 7) == 7
    assert s.get_float("missing", 1.5) == 1.5
    assert s.get_duration("missing", 30) == 30
    assert s.get_str("missing", '"kept"') == '"kept"'
    assert s.get_networks("missing", sentinel) is sentinel


@pytest.mark.parametrize(("method", "key", "line"), [
    ("get_bool", "bad_bool", 10), ("get_int", "bad_int", 11), ("get_float", "bad_float", 12),
    ("get_duration", "bad_dur", 13), ("get_networks", "bad_net", 14), ("get_int", "str", 8),
])
def test_typed_accessor_errors_name_file_and_line(method: str, key: str, line: int) -> None:
    s = loads(TYPED, "/etc/pbxhost/t.conf").sections[0]
    with pytest.raises(ConfigError) as info:
        getattr(s, method)(key)
    assert str(info.value).startswith(f"/etc/pbxhost/t.conf:{line}: {key}: ")


def test_typed_accessor_error_names_index_and_inherited_origin(tmp_path: Path) -> None:
    write(tmp_path / "tpl.conf", "[t](!)\n\nport [b] = eighty\n")
    cfg = load(write(tmp_path / "main.conf", "#include tpl.conf\n[s](t)\n"))
    with pytest.raises(ConfigError) as info:
        cfg.sections[0].get_int("port", idx="b")
    assert str(info.value).startswith(f"{tmp_path / 'tpl.conf'}:3: port [b]: ")


# ---------------------------------------------------------------- realistic documents

PJSIP_WIZARD = """\
;================================ TEMPLATES ==

[trunk_defaults](!)
type = wizard
transport = transport
endpoint/context = dp_entry_trunk_calling
endpoint/allow = !all,ulaw
endpoint/direct_media=no
endpoint/rewrite_contact=yes
endpoint/rtp_symmetric=yes
endpoint/allow_subscribe = no
endpoint/send_rpid = yes
endpoint/send_pai = yes
aor/qualify_frequency = 60


[outbound_defaults](!,trunk_defaults)
type = wizard
sends_auth = yes

[inbound_defaults](!,trunk_defaults)
type = wizard
accepts_auth = yes


[user_defaults](!)
type = wizard
transport = transport
accepts_registrations = yes
accepts_auth = yes
has_hint = yes
hint_context = dp_lookup_user
endpoint/context = dp_entry_user_calling
endpoint/message_context = dp_entry_user_texting
endpoint/from_domain = example.com
endpoint/allow_subscribe = yes
endpoint/tos_audio=ef
endpoint/tos_video=af41
endpoint/cos_audio=5
endpoint/cos_video=4
endpoint/send_pai = yes
endpoint/allow = !all,ulaw
endpoint/rtp_symmetric = yes
endpoint/trust_id_inbound = yes
endpoint/language = en
aor/max_contacts = 5
aor/remove_existing = yes

;================================ SIP ITSP ==

[trunk_example](outbound_defaults)
remote_hosts = host.example.com
outbound_auth/username = user
outbound_auth/password = password

;================================ SIP USERS ==

[john.doe](user_defaults)
hint_exten = +12025550160
endpoint/callerid = John Doe <+12025550160>
endpoint/mailboxes = john.doe@example.com
endpoint/from_user = +12025550160
inbound_auth/username = john.doe
inbound_auth/password = password

[jane.doe](user_defaults)
hint_exten = +12025550183
endpoint/callerid = Jane Doe <+12025550183>
endpoint/mailboxes = jane.doe@example.com
endpoint/from_user = +12025550183
inbound_auth/username = jane.doe
inbound_auth/password = password
"""


def test_pjsip_wizard_document() -> None:
    cfg = loads(PJSIP_WIZARD, "/etc/asterisk/pjsip_wizard.conf")
    assert [s.name for s in cfg.sections] == ["trunk_example", "john.doe", "jane.doe"]
    assert list(cfg.templates) == [
        "trunk_defaults", "outbound_defaults", "inbound_defaults", "user_defaults",
    ]
    assert "trunk_defaults" not in cfg and cfg.section("user_defaults") is None
    assert cfg.templates["outbound_defaults"].templates == ("trunk_defaults",)

    trunk = cfg.section("trunk_example")
    assert trunk is not None and trunk.templates == ("outbound_defaults",)
    assert trunk.get("endpoint/context") == "dp_entry_trunk_calling"  # via outbound_defaults
    ctx = next(i for i in trunk.items if i.key == "endpoint/context")
    assert (ctx.path, ctx.line) == ("/etc/asterisk/pjsip_wizard.conf", 6)
    assert trunk.get_bool("sends_auth") is True
    assert "accepts_auth" not in trunk
    assert trunk.get("endpoint/allow") == "!all,ulaw"
    assert trunk.get_bool("endpoint/direct_media") is False
    assert trunk.get_int("aor/qualify_frequency") == 60
    assert trunk.getall("type") == ["wizard", "wizard"]
    assert trunk.get("remote_hosts") == "host.example.com"
    assert trunk.keys()[:3] == ["type", "transport", "endpoint/context"]
    assert trunk.keys()[-3:] == ["remote_hosts", "outbound_auth/username", "outbound_auth/password"]

    john = cfg.section("john.doe")
    assert john is not None
    assert john.get("endpoint/callerid") == "John Doe <+12025550160>"
    assert john.get("hint_exten") == "+12025550160"
    assert john.get("endpoint/context") == "dp_entry_user_calling"
    assert john.get_int("aor/max_contacts") == 5
    assert john.get_bool("accepts_registrations") is True
    assert john.line == 58 and john.indexes() == []

    jane = cfg.section("JANE.DOE")
    assert jane is not None
    assert jane.get("endpoint/callerid") == "Jane Doe <+12025550183>"
    assert jane.get("inbound_auth/username") == "jane.doe"
    assert len(jane.items) == len(cfg.templates["user_defaults"].items) + 6


WEBSMS = """\
[websms]
url_host = http://localhost
url_host [api-1] = https://api.one.example
url_path [api-1] = /sms/send
auth_method [api-1] = zadarma
url_host [api-2] = https://api.two.example
key_body [] = text
key_body [] = message
resp_check = status=success
[websmsd]
url_path = /
remt_addr = 192.0.2.0/24, 2001:db8::/32
prox_addr =
[astqueue]
waittime = 45
retrytime = 5m
"""


def test_websms_document(tmp_path: Path) -> None:
    cfg = load(write(tmp_path / "websms.conf", WEBSMS))
    assert [s.name for s in cfg.sections] == ["websms", "websmsd", "astqueue"]

    websms = cfg.section("websms")
    assert websms is not None
    assert websms.indexes() == ["api-1", "api-2", "0", "1"]
    assert websms.indexed("url_host", "api-1") == "https://api.one.example"
    assert websms.indexed("url_host", "api-2") == "https://api.two.example"
    assert websms.indexed("url_path", "api-1") == "/sms/send"
    assert websms.indexed("url_path", "api-2") is None
    assert websms.indexed("auth_method", "api-2", "none") == "none"
    assert websms.indexed("url_host", "api-3") == "http://localhost"
    assert websms.indexed("key_body", "0") == "text"
    assert websms.indexed("key_body", "1") == "message"
    assert websms.get("key_body") is None
    assert websms.get("resp_check") == "status=success"
    assert websms.keys() == ["url_host", "resp_check"]

    websmsd = cfg.section("websmsd")
    assert websmsd is not None
    assert websmsd.get_str("url_path") == "/"
    assert websmsd.get_networks("remt_addr") == [net("192.0.2.0/24"), net("2001:db8::/32")]
    assert websmsd.get_networks("prox_addr") == []
    assert websmsd.get_networks("missing", None) is None

    astqueue = cfg.section("astqueue")
    assert astqueue is not None
    assert astqueue.get_duration("waittime") == 45
    assert astqueue.get_duration("retrytime") == 300
    assert astqueue.get_int("waittime") == 45
    with pytest.raises(ConfigError) as info:
        astqueue.get_int("retrytime")
    assert str(info.value).startswith(f"{tmp_path / 'websms.conf'}:16: retrytime: ")


def test_pathlike_and_str_paths_agree(tmp_path: Path) -> None:
    top = write(tmp_path / "websms.conf", WEBSMS)
    assert load(top) == load(os.fspath(top))
