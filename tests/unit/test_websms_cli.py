"""`websms` by hand: the queue listing (safe to print), flush requests,
migration, and usage errors."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pbxhost.websms import cli, providers
from pbxhost.websms.config import DEFAULT_SPOOL
from pbxhost.websms.model import INBOUND, OUTBOUND, Sms, new_id
from pbxhost.websms.parts import Parts
from pbxhost.websms.spool import Spool


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "websms.conf"
    path.write_text(f"[astqueue]\nspooldir = {tmp_path / 'spool'}\n"
                    "[websms]\nurl_host = http://127.0.0.1:9\ntimeout = 2\n")
    return path


def run(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


def test_queue_lists_both_directions_with_control_characters_escaped(conf, tmp_path, capsys):
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    evil = "\x1b[2J\x1b]0;owned\x07 hi\nthere"
    spool.add(Sms(kind=INBOUND, id=new_id(), to="jane", sender="+1555", body=evil,
                  created=1.0, expires=2.0))
    spool.add(Sms(kind=OUTBOUND, id=new_id(), to="+1555", sender="+1202", body="out",
                  created=1.0, expires=2.0, attempts=2, error="HTTP 503"))
    assert run(["-c", str(conf), "queue"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b[2J" in out and "hi\\nthere" in out
    assert "2 attempts: HTTP 503" in out and "1 for phones, 1 for the ITSP, 0 failed" in out
    assert run(["queue", "--json", "-c", str(conf)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert sorted(d["queue"] for d in doc) == ["in", "out"] and evil in [d["body"] for d in doc]


def test_queue_escapes_itsp_replies_and_senders_in_every_field(conf, tmp_path, capsys):
    """An ITSP's reply snippet (error) and a failed SMS carry raw escape
    sequences, C1 CSI and Unicode line separators: none reaches the terminal."""
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    reply = "HTTP 400: \x1b]8;;http://evil\x07click\x1b]8;;\x07\r\n<0>FAKE\x9b2J\u2028x\x7f"
    spool.add(Sms(kind=OUTBOUND, id=new_id(), to="+1555", sender="+1202", body="out\u2029",
                  created=1.0, expires=2.0, attempts=1, error=reply))
    sms = Sms(kind=OUTBOUND, id=new_id(), to="+1556", sender="+1202", body="b",
              created=1.0, expires=2.0, error=reply)
    spool.add(sms)
    spool.fail(sms, reply)
    for argv in (["-c", str(conf), "queue"], ["queue", "--json", "-c", str(conf)]):
        assert run(argv) == 0
        out = capsys.readouterr().out
        for bad in ("\x1b", "\x07", "\r", "\x9b", "\u2028", "\u2029", "\x7f"):
            assert bad not in out, (argv, bad)
        if "--json" in argv:
            assert [d["error"] for d in json.loads(out)] == [reply, reply]
        else:
            assert len(out.splitlines()) == 3 and "\\r\\n<0>FAKE" in out


def test_queue_lists_what_the_daemon_holds_in_its_journal(conf, tmp_path, capsys):
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    spool.open_journal()
    held, parked = (Sms(kind=INBOUND, id=new_id(), to="jane", sender="+1555", body=text,
                        created=float(n), expires=9e9) for n, text in enumerate(("a", "b")))
    asyncio.run(spool.accept(held))
    asyncio.run(spool.accept(parked))
    spool.park(parked)  # in in/ now, and marked done in the journal
    assert run(["queue", "--json", "-c", str(conf)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(d["queue"], d["body"]) for d in doc] == [("in", "a"), ("in", "b")]


def test_queue_lists_multi_part_sms_waiting_for_parts(conf, tmp_path, capsys):
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    parts = Parts(spool)
    for number, text in ((3, "world"), (1, "Hello ")):
        part = providers.Part("08B5", 3, number)
        new, whole = parts.add("", providers.Inbound("jane", "+1555", text, f"0A0{number}",
                                                     part), 1000.0 + number)
        assert new and whole == []
    assert run(["-c", str(conf), "queue"]) == 0
    out = capsys.readouterr().out
    assert "parts 1, 3 of 3, waiting for the rest" in out and '"Hello world"' in out
    assert "0 for phones, 0 for the ITSP, 0 failed, 1 multi-part incomplete" in out
    assert run(["queue", "--json", "-c", str(conf)]) == 0
    [doc] = json.loads(capsys.readouterr().out)
    assert (doc["queue"], doc["parts"], doc["total"], doc["to"]) == ("parts", [1, 3], 3, "jane")


def test_flush_request(conf, tmp_path, capsys):
    Spool(tmp_path / "spool").prepare()
    assert run(["-c", str(conf), "queue", "flush"]) == 0
    assert (tmp_path / "spool" / "flush").exists()


def test_send_refuses_bad_numbers_and_queues_when_the_itsp_is_down(conf, tmp_path, capsys):
    assert run(["-c", str(conf), "+1 555", "+1202", "x"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert run(["-c", str(conf), "+1555", "+1202", "x", "nope"]) == 2
    assert run(["-c", str(conf), "+1555", "+1202", "queued"]) == cli.EX_TEMPFAIL
    (queued,) = Spool(tmp_path / "spool").pending(OUTBOUND)
    assert queued.body == "queued" and queued.attempts == 1 and queued.next_try > queued.created


def test_migrate(tmp_path, capsys):
    (tmp_path / "sms.conf").write_text("[sms]\nsms_host = api.example.com\n")
    target = tmp_path / "websms.conf"
    assert run(["migrate", "-c", str(target)]) == 0
    assert "url_host = api.example.com" in target.read_text()
    assert run(["migrate", "-c", str(target)]) == 0
    assert "nothing to migrate" in capsys.readouterr().out


def test_queue_shows_sms_set_aside_for_a_number_no_user_has(conf, tmp_path, capsys):
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    spool.add(Sms(kind=INBOUND, id=new_id(), to="+19995550000", sender="+1555", body="hi",
                  created=1.0, expires=2.0,
                  error="set aside: no user has the number +19995550000"))
    assert run(["-c", str(conf), "queue"]) == 0
    assert "SET ASIDE: no user has the number +19995550000" in capsys.readouterr().out


@pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                    reason="another uid and a private mount namespace need root")
def test_plain_agi_as_a_user_who_cannot_read_the_credentials_queues_for_websmsd(tmp_path):
    """Asterisk's user runs `websms agi` but cannot read websms.conf (0600, the
    ITSP credentials): the SMS is queued in the default spool, due at once,
    and no ITSP is called (url_host points nowhere that answers anyway)."""
    source = tmp_path / "websms.conf"
    source.write_text("[websms]\nurl_host = http://192.0.2.1:9\nauth_secret = s3cret\n")
    conf = "/srv/etc/asterisk/websms.conf"  # in the private /srv of the namespace
    root = Path(__file__).resolve().parents[2]
    # Asterisk's answers: every GET is empty (no hint, no TOLL_HOME), SET is taken
    replies = "200 result=0\n" * 20
    env_lines = ("agi_network_script: websms\nagi_arg_1: +15017122661\n"
                 "agi_arg_2: +12025550160\nagi_arg_3: hi%20there\nagi_arg_4: \n"
                 "agi_arg_5: jane\n\n")
    script = (f"mount -t tmpfs tmpfs /srv && mkdir -p {DEFAULT_SPOOL} /srv/etc/asterisk && "
              f"chown nobody {DEFAULT_SPOOL} && chmod 755 /srv && "
              f"install -m 600 {source} {conf} && "
              f"setpriv --reuid=nobody --regid=nogroup --clear-groups env PYTHONPATH={root} "
              f"{sys.executable} -m pbxhost.websms.cli agi -c {conf} && "
              f"cat {DEFAULT_SPOOL}/out/*.json")
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          input=env_lines + replies, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert 'SET VARIABLE WEBSMS_STATUS "QUEUED"' in done.stdout
    record = json.loads(done.stdout[done.stdout.rindex("{\"format\""):])
    assert (record["to"], record["body"], record["owner"], record["next_try"]) == (
        "+15017122661", "hi there", 0, 0.0)
    assert "not readable by this user" in done.stderr
