"""service.py: SYSLOG_LEVEL mapping and journald-friendly stderr."""

from __future__ import annotations

import logging

import pytest

from pbxhost import service


@pytest.mark.parametrize(("raw", "level"), [
    ("0", logging.CRITICAL + 10), ("1", logging.CRITICAL), ("3", logging.CRITICAL),
    ("4", logging.ERROR), ("5", logging.WARNING), ("6", service.NOTICE), ("7", logging.INFO),
    ("8", logging.DEBUG), ("", service.NOTICE), (" 7 ", logging.INFO),
])
def test_syslog_level_mapping(raw, level):
    assert service.log_level({"SYSLOG_LEVEL": raw}) == level


@pytest.mark.parametrize("raw", ["9", "debug", "-1", "6.0", "٣"])
def test_invalid_syslog_level_is_one_line_naming_it_and_exit_78(raw, capsys):
    with pytest.raises(SystemExit) as stop:
        service.setup_logging("autoban", {"SYSLOG_LEVEL": raw})
    assert stop.value.code == 78
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SYSLOG_LEVEL" in err[0] and "0 to 8" in err[0]


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


@pytest.mark.parametrize(("level", "priority"), [
    (logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (service.NOTICE, 5),
    (logging.INFO, 6), (logging.DEBUG, 7)])
def test_journal_priorities_include_notice(level, priority):
    assert service.syslog_priority(level) == priority


def test_the_journal_handler_sends_notice_as_priority_5():
    pytest.importorskip("systemd.journal")
    sent = []
    log = service.setup_logging("autoban", {"JOURNAL_STREAM": "8:1", "SYSLOG_LEVEL": "7"})
    logging.getLogger().handlers[0].send = lambda *_, **kw: sent.append(kw)
    log.log(service.NOTICE, "jailed")
    log.info("connected")
    assert [kw["PRIORITY"] for kw in sent] == ["5", "6"]


# ------------------------------------------------ syslog (OpenRC hosts)

@pytest.fixture
def syslog_socket(tmp_path, monkeypatch):
    """A receiver on a Unix datagram socket in a tmp dir, standing in for /dev/log."""
    import socket
    path = tmp_path / "log"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setattr(service, "SYSLOG_SOCKET", str(path))
    yield sock
    sock.close()
    logging.getLogger().handlers[:] = []


def _received(sock, count):
    return [sock.recv(4096).decode() for _ in range(count)]


def test_syslog_when_asked_with_priorities_and_level(syslog_socket, capsys):
    import os
    log = service.setup_logging("autoban", {"PBXHOST_LOG": "syslog", "SYSLOG_LEVEL": "7"})
    log.error("e")
    log.log(service.NOTICE, "n")
    log.info("i")
    log.debug("hidden at 7")
    log.warning("w")
    pid = os.getpid()
    # facility daemon (3): <3*8+severity>; NOTICE is syslog's notice (5), not warning
    assert _received(syslog_socket, 4) == [
        f"<27>autoban[{pid}]: e\x00", f"<29>autoban[{pid}]: n\x00",
        f"<30>autoban[{pid}]: i\x00", f"<28>autoban[{pid}]: w\x00"]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("env", [
    {},                                                   # not asked: stderr as before
    {"PBXHOST_LOG": "stderr"},
    {"PBXHOST_LOG": "syslog", "JOURNAL_STREAM": "8:1"},   # under systemd: the journal's way
])
def test_no_syslog_unless_asked_outside_systemd(syslog_socket, capsys, monkeypatch, env):
    monkeypatch.setitem(__import__("sys").modules, "systemd", None)
    log = service.setup_logging("websmsd", env)
    log.error("to stderr")
    assert "to stderr" in capsys.readouterr().err
    syslog_socket.settimeout(0.05)
    with pytest.raises(TimeoutError):
        syslog_socket.recv(4096)


def test_syslog_asked_but_nobody_listens_falls_back_to_stderr(tmp_path, monkeypatch, capsys):
    import socket
    path = tmp_path / "log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as gone:
        gone.bind(str(path))  # the socket file stays, the daemon is gone
    monkeypatch.setattr(service, "SYSLOG_SOCKET", str(path))
    service.setup_logging("autoban", {"PBXHOST_LOG": "syslog"}).error("still seen")
    monkeypatch.setattr(service, "SYSLOG_SOCKET", str(tmp_path / "missing"))
    service.setup_logging("autoban", {"PBXHOST_LOG": "syslog"}).error("seen too")
    err = capsys.readouterr().err
    assert "still seen" in err and "seen too" in err


def test_invalid_pbxhost_log_is_one_line_naming_it_and_exit_78(capsys):
    with pytest.raises(SystemExit) as stop:
        service.setup_logging("autoban", {"PBXHOST_LOG": "journal"})
    assert stop.value.code == 78
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PBXHOST_LOG" in err[0]


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
