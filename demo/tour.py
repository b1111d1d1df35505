"""The demo's tour around the PBX, one copy for both demos: `make demo`
(demo/product.py, the booted image) and `make demo-dev` (demo/run.py, the
daemons of this source tree). Steps 3–6 are the same there; what differs is
how the PBX is asked (its CLI inside a machine or from the source tree) and
which of the daemons' own lines can be shown: a back-end's job (Pbx).

Import it after benchlib, which puts the test bed on sys.path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from testbed.itsp import FakeItsp, WebhookClient
from testbed.netns import Host, Network
from testbed.sip import Baresip, sipp_register

JOHN, JANE = "+12025550160", "+12025550183"   # the suite's example users' numbers
OUTSIDE = "+15017122661"


def say(step: str) -> None:
    print(f"\n== {step}", flush=True)


def show(text: str, indent: str = "   ") -> None:
    for line in text.rstrip().splitlines():
        print(indent + line, flush=True)


@dataclass(frozen=True)
class Lan:
    """The demo's hosts: the PBX .10, john's phone .30, jane's .31, the ITSP .50
    and a stranger .66."""
    pbx: Host
    john: Host
    jane: Host
    itsp: Host
    stranger: Host

    @classmethod
    def on(cls, net: Network) -> Lan:
        return cls(net.host("pbx", 10), net.host("john", 30), net.host("jane", 31),
                   net.host("itsp", 50), net.host("stranger", 66))


class Pbx(Protocol):
    """What the tour asks of the PBX, wherever it runs."""

    webhook_port: int

    def contacts(self) -> str:
        """`pjsip show contacts`."""

    def autoban_show(self) -> str:
        """`autoban show`."""

    def jailed(self, addr: str) -> str | None:
        """Once ADDR is jailed: autoban's own line saying so, if it can be shown."""

    def log(self, daemon: str, text: str) -> str | None:
        """DAEMON's (autoban, websmsd) own line containing TEXT, if it can be shown."""


def tour(pbx: Pbx, lan: Lan, work: Path, password: dict[str, str], itsp: FakeItsp,
         phones: list[Baresip]) -> None:
    """Steps 3–6; the phones started go to PHONES (the caller stops them)."""
    say("3. john and jane register their phones (baresip) with the seeded passwords")
    for user, host, texts_to in (("john.doe", lan.john, JANE), ("jane.doe", lan.jane, OUTSIDE)):
        phone = Baresip(host, work, user, password[user], lan.pbx.v4, trace=True,
                        contacts=(f"sip:{texts_to}@{lan.pbx.v4}",))
        phones.append(phone)
        phone.wait_registered()
    show(pbx.contacts())

    say(f"4. a stranger ({lan.stranger.v4}) guesses jane's password")
    guesses = sipp_register(lan.stranger, lan.pbx.v4, "jane.doe", "123456", work, expect=401,
                            calls=20, rate=20, timeout=8)
    show("sipp: " + ("every attempt answered" if guesses.returncode == 0
                     else "no answer any more: its packets are dropped"))
    show(pbx.jailed(lan.stranger.v4) or "")
    show(pbx.autoban_show())
    phones[0].send_message("Lunch at 12?")
    [got] = phones[1].wait_messages(1)
    show(f"meanwhile john texts jane: her phone got {got.body.decode()!r} from {got.sender}")

    say(f"5. the ITSP ({lan.itsp.v4}) posts an SMS for jane ({JANE})")
    hook = WebhookClient(lan.itsp, lan.pbx.v4, pbx.webhook_port)
    text = "Your parcel arrives today 📦, between 10:00 and 12:00."
    reply = hook.post_form({"To": JANE, "From": OUTSIDE, "Body": text,
                            "MessageSid": "SM-demo-1"}, path="/sms/in")
    show(f"webhook answered {reply.status} (after the SMS was on disk)")
    got = phones[1].wait_messages(2)[1]
    show(f"jane's phone got a MESSAGE from {got.sender}: {got.body.decode()!r}")
    show(pbx.log("websmsd", "delivered") or "")

    say(f"6. jane texts {OUTSIDE} (outside): websms posts it to the ITSP's API")
    phones[1].send_message("Thanks! I'll be home.")
    [request] = itsp.wait_requests(1)
    show(f"the ITSP got {request.method} {request.path} "
         f"(Authorization: {request.headers.get('Authorization', '-')[:10]}…): "
         f"{request.form()}")
    show(pbx.log("websmsd", "sent via") or "")
