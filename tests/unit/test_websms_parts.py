"""Vonage multi-part SMS parked durably in the spool (pbxhost/websms/parts.py)
and wired into the webhook path: parts in any order, a part twice kept once,
a restart between parts loses nothing, an incomplete set is delivered after
the timeout with the gaps marked, a late duplicate is dropped. Signed
webhooks are made by the vonage SDK (vonage_http_client.auth)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest

from pbxhost import service
from pbxhost.websms import config, inbound, providers
from pbxhost.websms.daemon import Websmsd
from pbxhost.websms.model import INBOUND
from pbxhost.websms.parts import Parts, Piece
from pbxhost.websms.spool import Spool

NOW = 1_800_000_000.0
TEXTS = ("The first part of a long SMS, ", "then the second one 😀, ", "and the end.")


def part(number: int, total: int = 3, ref: str = "08B5", text: str | None = None,
         mid: str | None = None) -> providers.Inbound:
    query = urlencode({"msisdn": "15017122661", "to": "12025550160",
                       "messageId": mid or f"0A00000012345{number:03d}",
                       "text": TEXTS[number - 1] if text is None else text, "type": "unicode",
                       "keyword": "THE", "message-timestamp": "2026-11-26 08:00:00",
                       "concat": "true", "concat-ref": ref, "concat-total": str(total),
                       "concat-part": str(number)})
    [got] = providers.adapt("vonage", "GET", "", query, b"").messages
    return got


def make(tmp_path: Path, timeout: float = 3600.0) -> Parts:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    parts = Parts(spool, timeout=timeout, expire=86400)
    parts.prepare()
    return parts


def test_out_of_order_with_a_duplicate_is_joined_once(tmp_path):
    parts = make(tmp_path)
    assert parts.add("v", part(3), NOW) == (True, [])
    assert parts.add("v", part(1), NOW + 1) == (True, [])
    assert parts.add("v", part(1), NOW + 2) == (False, [])  # the same part again
    assert parts.waiting() == 1
    new, [sms] = parts.add("v", part(2), NOW + 3)
    assert new and sms.body == "".join(TEXTS)
    assert (sms.to, sms.sender, sms.iface) == ("12025550160", "15017122661", "v")
    assert sms.provider_id == "0A00000012345001"  # the lowest part names the whole
    assert [s.id for s in parts.spool.pending(INBOUND)] == [sms.id]
    assert parts.waiting() == 0
    # a late duplicate of a joined part: dropped, no new set
    assert parts.add("v", part(2), NOW + 60) == (False, [])
    assert parts.waiting() == 0 and parts.sweep(NOW + 99999) == []


def test_each_part_is_on_disk_before_add_returns_and_survives_a_restart(tmp_path):
    parts = make(tmp_path)
    parts.add("v", part(2), NOW)
    [folder] = list((tmp_path / "spool" / "parts").iterdir())
    [stored] = list(folder.iterdir())
    assert stored.name == "2.json" and Piece.from_json(stored.read_bytes()).body == TEXTS[1]
    assert not list((tmp_path / "spool" / "tmp").iterdir())
    again = make(tmp_path)  # websmsd restarted: a new process, the same spool
    assert again.add("v", part(1), NOW + 5) == (True, [])
    _, [sms] = make(tmp_path).add("v", part(3), NOW + 9)
    assert sms.body == "".join(TEXTS)


def test_sets_are_kept_apart_by_ref_sender_and_interface(tmp_path):
    parts = make(tmp_path)
    parts.add("v", part(1, total=2, ref="A", text="a1"), NOW)
    parts.add("v", part(1, total=2, ref="B", text="b1", mid="b1"), NOW)
    parts.add("w", part(1, total=2, ref="A", text="w1", mid="w1"), NOW)
    assert parts.waiting() == 3
    _, [sms] = parts.add("v", part(2, total=2, ref="B", text="b2", mid="b2"), NOW)
    assert sms.body == "b1b2" and parts.waiting() == 2


def test_incomplete_set_is_delivered_after_the_timeout_with_gaps_marked(tmp_path):
    parts = make(tmp_path, timeout=600)
    parts.add("v", part(1), NOW)
    parts.add("v", part(3), NOW + 100)
    assert parts.sweep(NOW + 599) == []
    [sms] = make(tmp_path, timeout=600).sweep(NOW + 600)  # also after a restart
    assert sms.body == TEXTS[0] + "[part 2 of 3 missing]" + TEXTS[2]
    assert parts.waiting() == 0 and len(parts.spool.pending(INBOUND)) == 1
    # the missing part comes after all: it too is delivered, never dropped
    assert parts.add("v", part(2), NOW + 700) == (True, [])
    [late] = parts.sweep(NOW + 1300)
    assert late.body == "[part 1 of 3 missing]" + TEXTS[1] + "[part 3 of 3 missing]"


def test_crash_after_the_last_part_is_finished_by_the_sweep_once(tmp_path):
    parts = make(tmp_path)
    for n in (1, 2, 3):  # stored, then websmsd died before joining
        piece = part(n)
        assert piece.part is not None
        parts._store(Piece("v", piece.to, piece.sender, piece.part.ref, piece.part.total, n,
                           piece.body, piece.message_id, NOW))
    [sms] = make(tmp_path).sweep(NOW + 1)
    assert sms.body == "".join(TEXTS)
    # the whole was queued but the parts not yet removed: joined again, no second SMS
    for n in (1, 2, 3):
        piece = part(n)
        assert piece.part is not None
        parts._store(Piece("v", piece.to, piece.sender, piece.part.ref, piece.part.total, n,
                           piece.body, piece.message_id, NOW))
    assert make(tmp_path).sweep(NOW + 2) == []
    assert len(parts.spool.pending(INBOUND)) == 1 and parts.waiting() == 0


def test_unreadable_part_goes_to_failed_and_the_rest_still_arrives(tmp_path):
    parts = make(tmp_path, timeout=10)
    parts.add("v", part(1), NOW)
    [folder] = list(parts.root.iterdir())
    (folder / "2.json").write_bytes(b"{not json")
    [sms] = parts.sweep(NOW + 10)
    assert sms.body.startswith(TEXTS[0] + "[part 2 of 3 missing]")
    assert [p.name for p in (tmp_path / "spool" / "failed").iterdir()] == [
        f"{folder.name}.2.unreadable"]


# ---------------------------------------------------------------- wired in


@pytest.fixture(name="vonage")
def _vonage():
    return pytest.importorskip("vonage_http_client.auth")


SECRET = "vonage-signature-secret-42"


def signed_request(vonage, number: int, stamp: int) -> inbound.Request:
    auth = vonage.Auth(api_key="abcd1234", signature_secret=SECRET, signature_method="sha256")
    fields = {"msisdn": "15017122661", "to": "12025550160", "messageId": f"0A0{number}",
              "text": TEXTS[number - 1], "type": "unicode", "api-key": "abcd1234",
              "concat": "true", "concat-ref": "08B5", "concat-total": "3",
              "concat-part": str(number), "timestamp": str(stamp),
              "nonce": f"nonce-{number}-{stamp}"}
    fields["sig"] = auth.sign_params(dict(fields))
    return inbound.Request("POST", "/sms/vonage", "", "application/x-www-form-urlencoded",
                           urlencode(fields).encode(), "192.0.2.20", {"HTTP_HOST": "pbx"})


def test_signed_vonage_parts_reach_in_once_through_the_daemon(vonage, tmp_path):
    path = tmp_path / "websms.conf"
    path.write_text(f"[websmsd]\nurl_path = /sms/vonage\nprovider = vonage\n"
                    f"sign_secret = {SECRET}\n[astqueue]\nspooldir = {tmp_path / 'spool'}\n")
    cfg = config.load(path, env={})
    stamp = int(time.time())
    messages = [inbound.parse(signed_request(vonage, n, stamp), cfg.webhook, cfg.incoming)
                for n in (2, 3, 1)]
    assert all(isinstance(m, inbound.Message) and m.part is not None for m in messages)
    daemon = Websmsd(cfg, service.Notifier())
    daemon.spool.prepare()
    daemon.parts.prepare()
    handed: list = []
    daemon.delivery.add_many = handed.extend  # type: ignore[method-assign]

    async def accept_all() -> None:
        for message in (*messages[:2], messages[0], messages[2]):  # part 2 twice
            assert isinstance(message, inbound.Message)
            await daemon.accept(message)
    asyncio.run(accept_all())
    [sms] = handed
    assert sms.body == "".join(TEXTS) and sms.provider_id == "0A01"
    assert [s.id for s in daemon.spool.pending(INBOUND)] == [sms.id]
