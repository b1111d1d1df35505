"""service.py: SYSLOG_LEVEL mapping and journald-friendly stderr."""

from __future__ import annotations

import logging

import pytest

from pbxhost import service


@pytest.mark.parametrize(("raw", "level"), [
    ("0", logging.CRITICAL + 10), ("1", logging.CRITICAL), ("3", logging.CRITICAL),
    ("4", logging.ERROR), ("5", logging.WARNING), ("6", service.NOTICE), ("7", logging.INFO),
    ("8", logging.DEBUG), ("", service.NOTICE), ("9", service.NOTICE), ("debug", service.NOTICE),
])
def test_syslog_level_mapping(raw, level):
    assert service.log_level({"SYSLOG_LEVEL": raw}) == level


def test_stderr_under_systemd_carries_syslog_priority_prefix(capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "systemd", None)  # no systemd-python
    log = service.setup_logging("autoban", {"JOURNAL_STREAM": "8:123", "SYSLOG_LEVEL": "8"})
    log.error("e")
    log.log(service.NOTICE, "n")
    log.debug("d")
    assert capsys.readouterr().err.splitlines() == ["<3>e", "<5>n", "<7>d"]


def test_level_filters(capsys):
    log = service.setup_logging("autoban", {"SYSLOG_LEVEL": "4"})
    log.warning("hidden")
    log.error("shown")
    err = capsys.readouterr().err
    assert "shown" in err and "hidden" not in err


# ---------------------------------------------------------------- forged log lines

HOSTILE = "a\n<0>FAKE\r\x1b[31mred\x1b[0m\u2028<1>x\u2029\x00\x9b\u202eevil\t."


def test_escape_leaves_one_printable_line():
    text = service.escape(HOSTILE)
    assert text.isprintable() and "<0>FAKE" in text
    assert text == ("a\\n<0>FAKE\\r\\x1b[31mred\\x1b[0m\\u2028<1>x\\u2029\\x00\\x9b"
                    "\\u202eevil\\t.")
    assert service.escape("plain ✓ ümlaut 📱") == "plain ✓ ümlaut 📱"


def test_stderr_fallback_cannot_be_given_a_forged_line_or_priority(capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "systemd", None)  # no systemd-python
    log = service.setup_logging("websmsd", {"JOURNAL_STREAM": "8:123", "SYSLOG_LEVEL": "8"})
    log.info("delivery report status=%s", HOSTILE)
    try:
        raise ValueError("bad\n<0>FAKE")
    except ValueError:
        log.exception("failed on %s", "x\ny")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("<6>delivery report status=a\\n<0>FAKE")
    assert lines[1].startswith("<3>failed on x\\ny") and "ValueError: bad\\n<0>FAKE" in lines[1]
    assert all(line.isprintable() for line in lines)


@pytest.mark.parametrize("one_line", [False, True])
def test_journal_message_is_escaped(one_line):
    """What JournalHandler puts in MESSAGE: the formatter's output."""
    fmt = service.SafeFormatter("%(message)s", one_line=one_line)
    record = logging.LogRecord("websms", logging.WARNING, __file__, 1, "refused: %s",
                               (HOSTILE,), None)
    text = fmt.format(record)
    assert text.isprintable() and text.startswith("refused: a\\n<0>FAKE")


def test_setup_logging_uses_the_safe_formatter_everywhere(monkeypatch):
    for env in ({}, {"JOURNAL_STREAM": "8:1"}):
        service.setup_logging("x", env)
        formatter = logging.getLogger().handlers[0].formatter
        assert isinstance(formatter, service.SafeFormatter)
