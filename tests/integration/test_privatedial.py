"""The seeded configuration suite (etc/asterisk, "PrivateDial") on a real
Asterisk 22: it starts clean with exactly its modules and sockets, phones call
and text each other, the ITSP trunk carries calls both ways with its
credentials, voicemail is recorded and mailed, TLS phones get SRTP, strangers
get nothing, and the toll-fraud guards hold.

Hosts on the test LAN: the PBX .10, john's phone .30, jane's phone .31, the
ITSP .50 (its SIP server on 5060, the calls it makes from 5070), a stranger .66.
The suite is used as shipped; a test changes only what an admin would:
passwords and secrets (as seeding does), the trunk's address and credentials,
a global or a user's set_var."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pbxhost import conf
from pbxhost.host import seed
from testbed.amiclient import AmiClient, Message
from testbed.media import RtpCounter, read_wav, tone, write_ulaw, write_wav
from testbed.sip import sipp_register
from testbed.sipp import (
    Sipp,
    call_xml,
    itsp_answer_xml,
    itsp_call_xml,
    itsp_registrar_xml,
    message_xml,
    run_sipp,
)
from testbed.smtp import SmtpServer

ROOT = Path(__file__).parents[2]
SUITE = ROOT / "etc/asterisk"
DOCS = ROOT / "docs/privatedial.md"
JOHN, JANE = "+12025550160", "+12025550183"
PASSWORDS = {"john.doe": "John-7-pass-2210", "jane.doe": "Jane-8-pass-0815"}
AMI_SECRETS = {"autoban": "autoban-test-3141", "websms": "websms-test-2718"}
ITSP_USER, ITSP_PASSWORD = "pbx-account-17", "Itsp-Secret-55"
DOMESTIC = "+12125550199"      # NANP, not ours: a domestic call out
INTERNATIONAL = "+442079460123"
PREMIUM = "+19005550100"
# Every level to the file the asserts read (the suite itself logs to syslog).
LOG_ALL = "\n[logfiles](+)\nfull => error,warning,notice,verbose,debug\n"


# ---------------------------------------------------------------- the suite, as an admin sets it up

def shipped() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(SUITE.glob("*.conf"))}


def add_lines(text: str, section_header: str, *lines: str) -> str:
    """LINES right after the header line of a section (e.g. more set_var)."""
    assert section_header in text, section_header
    return text.replace(section_header + "\n", section_header + "\n" + "".join(
        f"{line}\n" for line in lines), 1)


def suite(itsp: str | None = None, register: bool = False, john: tuple[str, ...] = (),
          globals_: dict[str, str] | None = None, minivm: dict[str, str] | None = None,
          itsp_password: str = ITSP_PASSWORD) -> dict[str, str]:
    """The shipped suite with test passwords and secrets; ITSP: enable the trunk
    towards that address; JOHN: more endpoint/... lines for john.doe."""
    texts = shipped()
    users = texts["pjsip_endpoint.conf"]
    for user, password in PASSWORDS.items():
        users = seed.set_option(users, user, "inbound_auth/password", password)
    if john:
        users = add_lines(users, "[john.doe](user_defaults)", *john)
    if itsp:
        users = users.replace("[trunk_example](!,outbound_defaults)",
                              "[trunk_example](outbound_defaults)")
        users = seed.set_option(users, "trunk_example", "remote_hosts", itsp)
        users = seed.set_option(users, "trunk_example", "outbound_auth/username", ITSP_USER)
        users = seed.set_option(users, "trunk_example", "outbound_auth/password", itsp_password)
        if register:
            users = seed.set_option(users, "trunk_example", "sends_registrations", "yes")
    texts["pjsip_endpoint.conf"] = users
    for user, secret in AMI_SECRETS.items():
        texts["manager.conf"] = seed.set_option(texts["manager.conf"], user, "secret", secret)
        texts[f"{user}.conf"] = seed.set_option(texts[f"{user}.conf"], "asmanager", "secret",
                                                secret)
    for key, value in (globals_ or {}).items():
        texts["extensions_local.conf"] = seed.set_option(texts["extensions_local.conf"],
                                                         "globals", key, value)
    for key, value in (minivm or {}).items():
        texts["minivm.conf"] = seed.set_option(texts["minivm.conf"], "general", key, value)
    texts["logger.conf"] += LOG_ALL
    return texts


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> dict[str, bytes]:
    """A self-signed certificate for the PBX (192.0.2.10), where `pbxhost tls` puts it."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=pbx.test", "-addext", "subjectAltName=IP:192.0.2.10",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    return {"ssl/asterisk/cert.pem": (d / "cert.pem").read_bytes(),
            "ssl/asterisk/priv_key.pem": (d / "key.pem").read_bytes()}


class Bed:
    def __init__(self, net, start_asterisk, start_phone, tmp_path: Path, tls_files,
                 tree: Path) -> None:
        self.net, self._start_asterisk, self._start_phone = net, start_asterisk, start_phone
        self.tree = tree
        self.tmp, self.tls_files = tmp_path, tls_files
        self.tone = write_wav(tmp_path / "tone.wav", tone(880, 20))
        self.pbx_host = net.host("pbx", 10)
        self.john_host = net.host("john", 30)
        self.jane_host = net.host("jane", 31)
        self.itsp = net.host("itsp", 50)
        self.pbx = None
        self.sipps: list[Sipp] = []
        self.errors_expected = False

    def start(self, configs: dict[str, str], files: dict[str, str | bytes] | None = None,
              wrapper: tuple[str, ...] = (), syslog: Path | None = None):
        """Asterisk on CONFIGS. A real host resolves its own name (/etc/hosts), which
        Asterisk does for every RTP session; the test bed's chroot has no /etc/hosts,
        so Asterisk runs in a UTS namespace of its own named by its address.
        SYSLOG: a unix datagram socket that becomes the chroot's /dev/log."""
        prefix = ("unshare", "--uts", "sh", "-c",
                  f'hostname {self.pbx_host.v4} && exec "$@"', "own-name")
        if syslog is not None:
            prefix += ("sh", "-c", dev_with_log(self.tree, syslog), "dev-log")
        self.pbx = self._start_asterisk(self.pbx_host, configs,
                                        files=self.tls_files if files is None else files,
                                        wrapper=prefix + wrapper)
        return self.pbx

    def phone(self, host, user: str, password: str | None = None, pbx: str | None = None,
              **kw):
        """USER's baresip phone (to the PBX's IPv4 address unless PBX); it answers
        with a tone (aufile needs a real WAV)."""
        kw.setdefault("audio_source", f"aufile,{self.tone}")
        return self._start_phone(host, user, password or PASSWORDS[user],
                                 pbx or self.pbx_host.v4, **kw)

    def sipp(self, host, xml: str, target: str | None = None, **kw) -> Sipp:
        s = Sipp(host, self.tmp, xml, target, **kw)
        self.sipps.append(s)
        return s

    def call(self, number: str, user: str = "john.doe", expect: int = 200, port: int = 5070,
             **kw):
        """USER's phone (sipp, on PORT) calls NUMBER; the result once the call is over."""
        host = self.john_host if user == "john.doe" else self.jane_host
        return run_sipp(host, self.tmp, call_xml(user, PASSWORDS[user], expect, **kw),
                        self.pbx_host.v4, service=number, local_port=port, media_port=port + 1000)

    def start_call(self, number: str, user: str = "john.doe", port: int = 5070, **kw) -> Sipp:
        """As call(), but in the background: wait() for its result."""
        host = self.john_host if user == "john.doe" else self.jane_host
        return self.sipp(host, call_xml(user, PASSWORDS[user], **kw), self.pbx_host.v4,
                         service=number, local_port=port, media_port=port + 1000)

    def itsp_server(self, **kw) -> Sipp:
        """The fake ITSP's SIP server on 5060, listening before Asterisk starts (and
        qualifies it). It answers only a call whose digest its verifyauth accepts and
        whose From and P-Asserted-Identity match `caller` (else 403, or the call
        aborts): a call answered at the phone's end passed those checks. It is
        stopped, not awaited: sipp counts the trunk's qualify OPTIONS as calls."""
        server = self.sipp(self.itsp, itsp_answer_xml(ITSP_USER, ITSP_PASSWORD, **kw),
                           local_port=5060, calls=1000, media_port=6100)
        server.wait_listening()
        return server

    def itsp_invites(self, server: Sipp) -> list[str]:
        """The INVITEs (with digest) the fake ITSP received, once it is stopped."""
        server.stop()
        trace = server.wait().trace
        return [m for m in trace.split("-----") if "\nINVITE sip:" in m
                and "Authorization: Digest" in m]

    def events(self, name: str, **fields: str) -> list[Message]:
        return [e for e in self.pbx.ami.events if e["Event"] == name
                and all(e.get(k) == v for k, v in fields.items())]

    def dials_to_trunk(self) -> list[Message]:
        return [e for e in self.events("DialBegin")
                if e.get("DestChannel", "").startswith("PJSIP/trunk_example")]


def dev_with_log(tree: Path, socket_path: Path) -> str:
    """A shell step: the chroot's /dev becomes a tmpfs with the few devices Asterisk
    uses and SOCKET_PATH as /dev/log (the test bed's /dev is the host's, where a
    /dev/log must not be created)."""
    dev = f"{tree}/dev"
    nodes = " ".join(("null", "zero", "random", "urandom"))
    return (f"mount -t tmpfs -o mode=0755 tmpfs {dev} && for n in {nodes}; do "
            f"touch {dev}/$n && mount --bind /dev/$n {dev}/$n || exit 1; done && "
            f'touch {dev}/log && mount --bind {socket_path} {dev}/log && exec "$@"')


@pytest.fixture
def bed(net, start_asterisk, start_phone, tmp_path, tls_files, tree):
    b = Bed(net, start_asterisk, start_phone, tmp_path, tls_files, tree)
    yield b
    for s in b.sipps:
        s.stop()
    if b.pbx is not None and not b.errors_expected:
        assert b.pbx.log_lines("ERROR") == []


def ami_login(host, user: str, secret: str) -> AmiClient:
    """One AMI login attempt in HOST's namespace (ConnectionError when refused)."""
    sock = host.socket()
    sock.connect(("127.0.0.1", 5038))
    return AmiClient(sock, user, secret)


def deadline(predicate, timeout: float, what: str, interval: float = 0.1):
    end = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(interval)  # polling kernel counters / files: nothing to await
    return result


# ---------------------------------------------------------------- the suite as a whole

def configured_modules() -> set[str]:
    cfg = conf.load(SUITE / "modules.conf")
    return {v.split(";")[0].strip() for v in cfg.section("modules").getall("load")}


# What every user gets from user_defaults: NAT traversal, SRTP when possible,
# identity by name only, its own caller ID.
NAT_AND_SAFETY = {"direct_media": "false", "rewrite_contact": "true", "rtp_symmetric": "true",
                  "force_rport": "true", "media_encryption": "sdes",
                  "media_encryption_optimistic": "true", "identify_by": "username",
                  "trust_id_inbound": "false", "context": "dp_entry_user_calling",
                  "message_context": "dp_entry_user_texting"}


def test_suite_starts_clean_with_exactly_its_modules(bed):
    pbx = bed.start(suite())  # the trunk as shipped: disabled
    assert pbx.log_lines("ERROR") == [] and pbx.log_lines("WARNING") == []
    listed = pbx.ami.command("module show")
    loaded = set(re.findall(r"^(\S+\.so)\s", listed, re.M))
    assert loaded == configured_modules()
    assert {"chan_pjsip.so", "res_pjsip_messaging.so", "app_minivm.so", "res_srtp.so",
            "res_agi.so", "pbx_spool.so"} <= loaded
    assert "autoload = no" in (SUITE / "modules.conf").read_text()
    endpoints = pbx.ami.command("pjsip show endpoints")
    assert "john.doe/+12025550160" in endpoints and "jane.doe/+12025550183" in endpoints
    hints = pbx.ami.command("dialplan show dp_lookup_user")
    assert f"'{JOHN}' => hint: PJSIP/john.doe" in hints
    john = dict(re.findall(r"^\s*(\w+)\s+: (.*)$", pbx.ami.command("pjsip show endpoint john.doe"),
                           re.M))
    assert {k: john[k] for k in NAT_AND_SAFETY} == NAT_AND_SAFETY
    rtp = pbx.ami.command("rtp show settings")
    assert re.search(r"Port start:\s+10000\s+Port end:\s+10099", rtp) and \
        re.search(r"Strict RTP:\s+Yes", rtp), rtp
    # with no trunk yet, a call out is refused (503) with a warning, not an error
    assert bed.call(DOMESTIC, expect=503).ok
    assert any("no trunk: TRUNK_ENDPOINT 'trunk_example'" in line
               for line in pbx.log_lines("WARNING"))


def test_notices_warnings_and_errors_go_to_syslog(bed):
    path = bed.tmp / "dev-log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as log:
        log.bind(str(path))
        log.settimeout(10)
        bed.start(suite(), syslog=path)
        bed.call(DOMESTIC, expect=503)  # no trunk yet: a warning
        lines: list[str] = []
        while not any("WARNING" in line and "no trunk" in line for line in lines):
            lines.append(log.recv(65536).decode(errors="replace"))  # awaits each datagram
    daemon = {"NOTICE": "<29>", "WARNING": "<28>"}  # facility daemon, syslog priorities
    assert any(ln.startswith(daemon["NOTICE"]) and "NOTICE[" in ln for ln in lines), lines
    assert any(ln.startswith(daemon["WARNING"]) and "no trunk" in ln for ln in lines), lines
    assert not [ln for ln in lines if "VERBOSE[" in ln or "DEBUG[" in ln]  # no call traces


def test_asterisk_opens_nothing_under_etc_asterisk(bed):
    trace = bed.tmp / "strace.txt"
    pbx = bed.start(suite(), wrapper=("strace", "-f", "-qq", "-e", "trace=%file",
                                      "-o", str(trace)))
    pbx.ami.command("core reload")
    pbx.ami.wait_event(lambda e: e["Event"] == "Reload" and e.get("Module") == "All",
                       what="reloaded")
    # the wizard's hints (the number -> user lookup) survive a dialplan reload
    assert f"'{JANE}' => hint: PJSIP/jane.doe" in pbx.ami.command("dialplan show dp_lookup_user")
    bed.phone(bed.jane_host, "jane.doe").wait_registered()
    pbx.stop()
    paths = re.findall(r'"([^"]*)"', trace.read_text())
    assert any(p.startswith("/srv/etc/asterisk/pjsip") for p in paths)  # the trace sees opens
    assert [p for p in paths if "etc/asterisk" in p and not p.startswith("/srv/")] == []


def documented_sockets() -> set[tuple[str, str, str]]:
    """The table between the listening-sockets markers of docs/privatedial.md."""
    text = DOCS.read_text()
    table = text.split("<!-- listening-sockets -->")[1].split("<!-- /listening-sockets -->")[0]
    rows = [[c.strip(" `") for c in line.strip("|").split("|")]
            for line in table.splitlines() if line.startswith("| ")]
    return {(proto, addr, port) for proto, addr, port, *_ in rows[1:]}


def test_listening_sockets_match_the_documented_list(bed):
    bed.start(suite())
    out = bed.pbx_host.run("ss", "-lntupH").stdout
    found = set()
    for line in out.splitlines():
        proto, _, _, _, local, *_ = line.split()
        addr, port = local.rsplit(":", 1)
        assert '"asterisk"' in line, line  # nothing else runs in the PBX's namespace
        # pjproject's resolver binds ports of the kernel's choosing
        found.add((proto, addr, port if int(port) < 32768 else "ephemeral"))
    assert found == documented_sockets()
    assert ("tcp", "127.0.0.1", "5038") in found                     # AMI on loopback only
    assert not [s for s in found if s[2] in ("80", "443", "8088", "8089")]  # no HTTP server


def test_unseeded_suite_has_no_usable_account(bed):
    bed.errors_expected = True  # Asterisk names every account it refuses
    texts = shipped()
    texts["logger.conf"] += LOG_ALL
    pbx = bed.start(texts)
    for password in ("", "password"):
        result = sipp_register(bed.john_host, bed.pbx_host.v4, "john.doe", password, bed.tmp,
                               expect=200, timeout=5)
        assert result.returncode != 0
    assert any("john.doe-iauth: No plain text or digest password" in line
               for line in pbx.log_lines("ERROR"))
    assert "InAuth:  john.doe" not in pbx.ami.command("pjsip show endpoints")
    # nor does a call get through without credentials (the endpoint's auth is missing)
    refused = run_sipp(bed.john_host, bed.tmp, call_xml("john.doe", None, expect=500),
                       bed.pbx_host.v4, service=JANE)
    assert refused.ok, refused.output
    assert not bed.events("Newchannel")
    for user in AMI_SECRETS:
        with pytest.raises(ConnectionError, match="refused"):
            ami_login(bed.pbx_host, user, "")
    for name in ("manager.conf", "autoban.conf", "websms.conf"):
        assert not re.search(r"(?m)^\s*secret\s*=", texts[name]), name


def test_phones_register_over_tcp_and_ipv6_and_call_each_other(bed):
    pbx = bed.start(suite())
    john = bed.phone(bed.john_host, "john.doe", transport="tcp")
    jane = bed.phone(bed.jane_host, "jane.doe", pbx=bed.pbx_host.v6,
                     account_params=";answermode=auto")
    john.wait_registered()
    jane.wait_registered()
    uris = {user: pbx.ami.wait_event(lambda e, u=user: e["Event"] == "ContactStatus"
                                     and e.get("AOR") == u, what=f"{user}'s contact")["URI"]
            for user in ("john.doe", "jane.doe")}
    assert "transport=tcp" in uris["john.doe"].lower()
    assert f"@[{bed.jane_host.v6}]" in uris["jane.doe"]
    john.send(f"/dial {JANE}")
    pbx.ami.wait_event(lambda e: e["Event"] == "DialEnd" and e.get("DialStatus") == "ANSWER",
                       what="jane answers over IPv6")
    john.wait_for("Call established")
    john.send("/hangup")


# ---------------------------------------------------------------- calls and messages between users

def test_local_call_rings_answers_and_carries_rtp_both_ways(bed):
    bed.start(suite())
    john_audio = write_wav(bed.tmp / "john.wav", tone(440, 20))
    jane_audio = write_wav(bed.tmp / "jane.wav", tone(660, 20))
    john = bed.phone(bed.john_host, "john.doe", audio_source=f"aufile,{john_audio}")
    jane = bed.phone(bed.jane_host, "jane.doe", audio_source=f"aufile,{jane_audio}",
                     account_params=";answermode=auto")
    john.wait_registered()
    jane.wait_registered()
    counters = {name: RtpCounter(host, bed.pbx_host.v4)
                for name, host in (("john", bed.john_host), ("jane", bed.jane_host))}
    john.send(f"/dial {JANE}")
    bed.pbx.ami.wait_event(lambda e: e["Event"] == "DialState"
                           and e.get("DialStatus") == "RINGING", what="jane's phone rings")
    bed.pbx.ami.wait_event(lambda e: e["Event"] == "DialEnd" and e.get("DialStatus") == "ANSWER",
                           what="jane answers")
    john.wait_for("Call established")
    counts = deadline(lambda: (c := {n: r.packets() for n, r in counters.items()})
                      and all(v["rx"] >= 50 and v["tx"] >= 50 for v in c.values()) and c,
                      15, "50 RTP packets each way at both phones")
    print("RTP packets:", counts)
    john.send("/hangup")
    bed.pbx.ami.wait_event(lambda e: e["Event"] == "Hangup", what="hang-up")
    # the caller ID jane saw is john's number
    assert f"from sip:{JOHN}@" in jane.wait_for("answering call")


def test_local_sms_arrives_with_the_senders_number(bed):
    bed.start(suite())
    jane = bed.phone(bed.jane_host, "jane.doe")
    jane.wait_registered()
    body = "Lunch at 12, \"the usual\"? ümlaut"
    result = run_sipp(bed.john_host, bed.tmp, message_xml("john.doe", PASSWORDS["john.doe"],
                                                          body), bed.pbx_host.v4, service=JANE)
    assert result.ok, result.output
    line = jane.wait_for(f'"{body}"').strip()
    assert line.startswith(f"sip:{JOHN}@"), line  # the number, not the user name


@pytest.mark.parametrize("display", ["<sip:john.doe@x", "x <sip:john.doe@x> y"])
def test_a_hostile_display_name_cannot_borrow_another_users_number(bed, display):
    """jane authenticates as jane.doe but puts john's URI in her display name:
    From: `"<sip:john.doe@x" <sip:jane.doe@pbx>`. Asterisk identified and
    authenticated her by the URI after the last `<` (the one it composes);
    the text must reach the phone with her number, not john's. (baresip 1.0.0
    sends MESSAGE without its display name, measured: sipp is the phone here.)"""
    bed.start(suite())
    john = bed.phone(bed.john_host, "john.doe")
    john.wait_registered()
    body = "who am I"
    result = run_sipp(bed.jane_host, bed.tmp, message_xml(
        "jane.doe", PASSWORDS["jane.doe"], body, display=display), bed.pbx_host.v4,
        service=JOHN)
    assert result.ok, result.output
    line = john.wait_for(f'"{body}"').strip()
    assert line.startswith(f"sip:{JANE}@"), line


def test_sms_to_a_user_without_a_reachable_phone_is_queued_by_websms(bed):
    configs = suite()
    bed.start(configs)
    # websmsd on the suite's websms.conf, with a spool of its own
    with running_websmsd(bed, configs) as (etc, env):
        body = "are you there?"
        result = run_sipp(bed.john_host, bed.tmp, message_xml(
            "john.doe", PASSWORDS["john.doe"], body), bed.pbx_host.v4, service=JANE)
        assert result.ok, result.output
        deadline(lambda: f"SMS to {JANE}: websms QUEUED" in bed.pbx.log.read_text(
            errors="replace"), 30, "websms's QUEUED")
        queue = bed.pbx_host.run(sys.executable, "-m", "pbxhost.websms.cli", "-c",
                                 str(etc / "websms.conf"), "queue", env=env).stdout
        assert body in queue or JANE in queue, queue
        jane = bed.phone(bed.jane_host, "jane.doe")
        jane.wait_registered()
        assert jane.wait_for(f'"{body}"', timeout=15).strip().startswith(f"sip:{JOHN}@")


def test_sms_to_a_premium_number_is_refused_and_the_phone_told(bed):
    """The calls' toll guards hold for SMS: websms asks the dialplan's
    sub_toll_class over AGI; no TOLL_ALLOW, so nothing goes to the ITSP."""
    configs = suite()
    bed.start(configs)
    with running_websmsd(bed, configs):
        jane = bed.phone(bed.jane_host, "jane.doe",
                         contacts=(f"sip:{PREMIUM}@{bed.pbx_host.v4}",))
        jane.wait_registered()
        jane.send_message("win a prize")
        deadline(lambda: f"SMS to {PREMIUM}: websms TOLL_REFUSED" in bed.pbx.log.read_text(
            errors="replace"), 30, "websms's TOLL_REFUSED")
        line = jane.wait_for("premium numbers are not allowed (TOLL_ALLOW)", 30).strip()
        assert line.startswith(f"sip:{PREMIUM}@"), line


@contextlib.contextmanager
def running_websmsd(bed, configs):
    """websmsd on the suite's websms.conf, with a spool of its own; (etc, env)."""
    etc, spool = bed.tmp / "websms-etc", bed.tmp / "websms-spool"
    etc.mkdir()
    (etc / "websms.conf").write_text(seed.set_option(configs["websms.conf"], "astqueue",
                                                     "spooldir", str(spool)))
    log = bed.tmp / "websmsd.log"
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(ROOT),
           "SYSLOG_LEVEL": "8", "HOME": str(bed.tmp)}
    with open(log, "wb") as out:
        daemon = bed.pbx_host.popen(sys.executable, "-m", "pbxhost.websms.daemon", "-c",
                                    str(etc / "websms.conf"), stdout=out,
                                    stderr=subprocess.STDOUT, env=env)
    try:
        # generous: on a loaded machine a cold Python start plus the AMI login took > 15 s
        deadline(lambda: "AMI connected" in log.read_text(errors="replace"), 45,
                 "websmsd's AMI login")
        yield etc, env
    finally:
        daemon.terminate()
        daemon.wait(10)


# ---------------------------------------------------------------- the trunk

def test_call_from_the_trunk_to_a_did_rings_the_users_phone(bed):
    bed.start(suite(itsp=bed.itsp.v4))
    john = bed.phone(bed.john_host, "john.doe", account_params=";answermode=auto")
    john.wait_registered()
    result = run_sipp(bed.itsp, bed.tmp, itsp_call_xml(), bed.pbx_host.v4, service=JOHN[1:])
    assert result.ok, result.output
    assert "from sip:itsp@" in john.wait_for("answering call")
    assert bed.events("Newchannel", Exten=JOHN[1:])[0]["Channel"].startswith(
        "PJSIP/trunk_example-")  # identified by its address as the trunk


# The first ACK to reach the PBX from an address is lost (then every ACK passes):
# dropped on the PBX's way in, where the sender sees no error (a drop on its way
# out would fail its sendto). A named counter says it happened.
DROP_FIRST_ACK = """
table inet lose_ack {
    counter dropped {}
    set acked { type ipv4_addr; flags dynamic; }
    chain in {
        type filter hook input priority 0; policy accept;
        udp dport 5060 @th,64,32 0x41434b20 ip saddr != @acked add @acked { ip saddr } \\
            counter name "dropped" drop
    }
}
"""


def sip_messages(trace: str, way: str, start: str) -> list[str]:
    """The messages of a sipp trace that were WAY ("sent", "received") and begin with START."""
    return [m for m in trace.split("-----") if f"message {way}" in m
            and m.split("\n\n", 1)[-1].startswith(start)]


def trunk_call_answered(bed) -> tuple[Sipp, str]:
    """The ITSP calls john's DID (auto-answered) and holds for 5 s: its sipp and,
    once Asterisk has answered it, the trunk's channel."""
    bed.start(suite(itsp=bed.itsp.v4))
    john = bed.phone(bed.john_host, "john.doe", account_params=";answermode=auto")
    john.wait_registered()
    call = bed.sipp(bed.itsp, itsp_call_xml(hold_ms=5000), bed.pbx_host.v4, service=JOHN[1:])
    up = bed.pbx.ami.wait_event(lambda e: e["Event"] == "Newstate"
                                and e.get("ChannelStateDesc") == "Up"
                                and e.get("Channel", "").startswith("PJSIP/trunk_example-"),
                                timeout=20, what="the trunk's call answered")
    return call, up["Channel"]


def test_a_call_goes_on_when_its_first_ack_is_lost(bed):
    """Asterisk retransmits its 200 until the ACK comes; sipp ACKs the
    retransmission again and the call ends normally."""
    bed.pbx_host.run("nft", "-f", "-", input=DROP_FIRST_ACK)
    call, _ = trunk_call_answered(bed)
    result = call.wait()
    assert result.ok, result.output
    dropped = bed.pbx_host.run("nft", "list", "counter", "inet", "lose_ack", "dropped").stdout
    assert re.search(r"packets 1 bytes", dropped), dropped
    assert len(sip_messages(result.trace, "received", "SIP/2.0 200 OK")) >= 3  # 2 + the BYE's
    assert len(sip_messages(result.trace, "sent", "ACK sip:")) >= 2


def test_a_call_goes_on_through_the_pbxs_reinvite(bed):
    """Asterisk re-INVITEs a caller when the connected line changes after the
    answer (CI saw one in the hold of an ITSP's call, when the callee's identity
    came late under load): the scenario answers it, the call ends normally."""
    call, channel = trunk_call_answered(bed)
    reply = bed.pbx.ami.action("Setvar", Channel=channel, Variable="CONNECTEDLINE(num)",
                               Value=DOMESTIC)
    assert reply["Response"] == "Success", reply
    result = call.wait()
    assert result.ok, result.output
    reinvites = sip_messages(result.trace, "received", "INVITE sip:")  # (and its retransmissions)
    assert reinvites and re.search(rf"^P-Asserted-Identity: .*<sip:{re.escape(DOMESTIC)}@",
                                   reinvites[0], re.M), reinvites
    assert sip_messages(result.trace, "received", "ACK sip:")


def test_outgoing_call_leaves_through_the_trunk_with_its_credentials_and_the_callers_id(bed):
    itsp = bed.itsp_server(caller=re.escape(JOHN))
    bed.start(suite(itsp=bed.itsp.v4))
    result = bed.call(DOMESTIC)
    assert result.ok, result.output  # answered: the ITSP took the digest and the caller ID
    [invite] = bed.itsp_invites(itsp)
    assert f"INVITE sip:{DOMESTIC}@{bed.itsp.v4}" in invite
    assert f'username="{ITSP_USER}"' in invite
    assert re.search(rf"^From: .*<sip:{re.escape(JOHN)}@", invite, re.M), invite


def test_wrong_trunk_password_is_refused_by_the_itsp(bed):
    itsp = bed.itsp_server()
    bed.start(suite(itsp=bed.itsp.v4, itsp_password="not-the-secret"))
    assert bed.call(DOMESTIC, expect=403).ok  # the fake ITSP's verifyauth rejects the digest
    assert len(bed.itsp_invites(itsp)) == 1


def test_trunk_registers_with_its_credentials(bed):
    # The registrar answers 200 only to a digest its verifyauth accepts (else 403).
    # It is stopped, not awaited: sipp also counts the trunk's qualify OPTIONS as calls.
    registrar = bed.sipp(bed.itsp, itsp_registrar_xml(ITSP_USER, ITSP_PASSWORD),
                         local_port=5060, calls=100)
    registrar.wait_listening()
    pbx = bed.start(suite(itsp=bed.itsp.v4, register=True))
    pbx.ami.wait_event(lambda e: e["Event"] == "Registry" and e.get("Status") == "Registered",
                       what="trunk registered")
    assert "Registered" in pbx.ami.command("pjsip show registrations")
    registrar.stop()
    trace = registrar.wait().trace
    assert f'Authorization: Digest username="{ITSP_USER}"' in trace


# ---------------------------------------------------------------- voicemail

# The test's mailcmd. Asterisk runs in a Debian sid chroot without Python, so
# minivm-send cannot run there: this hands the mail MiniVM pipes to mailcmd, and
# the arguments minivm-send would get, out to the test, which runs the real
# minivm-send with them (outside the chroot) towards a real SMTP server.
RELAY_MAIL = """\
out=/srv/var/mailcmd
mkdir -p $out && printf '%s\\n' "$@" > $out/$$.args
cat > $out/$$.tmp && mv $out/$$.tmp $out/$$.mail
"""


@pytest.fixture
def smtp():
    server = SmtpServer().start()
    yield server
    server.stop()


def minivm_send(args: list[str], mail: bytes, spool: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PBXHOST_MAIL_SPOOL": str(spool)}
    return subprocess.run([sys.executable, "-m", "pbxhost.voicemail", *args], input=mail,
                          capture_output=True, env=env, timeout=60, check=False)


@pytest.mark.parametrize("callee", ["unanswered", "busy"])
def test_unanswered_or_busy_call_goes_to_voicemail_and_is_mailed_with_the_recording(
        bed, smtp, callee):
    """unanswered: jane's phone rings until DIAL_TIMEOUT (2 s here); busy: it
    rejects the call with 486 (baresip's hang-up of a ringing call) long
    before the shipped DIAL_TIMEOUT (30 s) would end it."""
    mailcmd = f"/bin/sh /srv/etc/relay-mail -H {smtp.address} -P smtp -f voicemail@pbx.test"
    globals_ = {"DIAL_TIMEOUT": "2"} if callee == "unanswered" else {}
    pbx = bed.start(suite(globals_=globals_, minivm={"mailcmd": mailcmd}),
                    files={**bed.tls_files, "relay-mail": RELAY_MAIL})
    jane = bed.phone(bed.jane_host, "jane.doe")  # rings; nobody picks up
    jane.wait_registered()
    audio = write_ulaw(bed.tmp / "message.ulaw", tone(440, 30))
    caller = bed.start_call(JANE, hold_ms=12000, audio=audio)
    jane.wait_for("Incoming call from")
    if callee == "busy":
        jane.send("/hangup")
        assert "486" in jane.wait_for("rejecting incoming call")
    dial = pbx.ami.wait_event(lambda e: e["Event"] == "DialEnd", timeout=15, what="dial ends")
    assert dial["DialStatus"] == {"unanswered": "NOANSWER", "busy": "BUSY"}[callee]
    result = caller.wait()
    assert result.ok, result.output
    start = pbx.ami.wait_event(lambda e: e["Event"] == "Newexten"
                               and e.get("Application") == "MinivmRecord", what="recording")
    end = pbx.ami.wait_event(lambda e: e["Event"] == "Hangup"
                             and e.get("Channel", "").startswith("PJSIP/john.doe"), what="hangup")
    recorded = float(end["Timestamp"]) - float(start["Timestamp"])
    handed = deadline(lambda: sorted((pbx.var / "mailcmd").glob("*.mail")), 10, "mailcmd")
    args = handed[0].with_suffix(".args").read_text().splitlines()
    sent = minivm_send(args, handed[0].read_bytes(), bed.tmp / "mail-spool")
    assert sent.returncode == 0, sent.stderr
    recipients, msg = smtp.wait_mail()
    assert recipients == ["jane.doe@example.com"]  # the user's endpoint/mailboxes
    assert JOHN in msg["Subject"]
    wavs = [p for p in msg.walk() if (p.get_filename() or "").endswith(".wav")]
    assert len(wavs) == 1, [p.get_content_type() for p in msg.walk()]
    info = read_wav(wavs[0].get_payload(decode=True))
    print(f"recorded {recorded:.2f}s by the AMI clock, WAV {info}")
    assert recorded > 3
    assert abs(info.seconds - recorded) <= 1
    assert info.rms > 1000                       # not silence
    assert 400 < info.crossings_hz < 480         # the 440 Hz tone john played


# ---------------------------------------------------------------- TLS and SRTP

def test_tls_phone_registers_and_its_calls_sdp_carries_crypto(bed):
    pbx = bed.start(suite())
    cafile = bed.tmp / "ca.pem"
    cafile.write_bytes(bed.tls_files["ssl/asterisk/cert.pem"])
    john = bed.phone(bed.john_host, "john.doe", transport="tls",
                     account_params=";mediaenc=srtp-mand",
                     config_lines=("module srtp.so", f"sip_cafile {cafile}"))
    jane = bed.phone(bed.jane_host, "jane.doe", account_params=";answermode=auto")
    john.wait_registered()
    jane.wait_registered()
    contact = pbx.ami.wait_event(lambda e: e["Event"] == "ContactStatus"
                                 and e.get("AOR") == "john.doe", what="john's contact")
    assert "transport=tls" in contact["URI"].lower()
    # TLS 1.3 and 1.2; not 1.0 or 1.1, even from a client willing to (SECLEVEL=0)
    for flag, outcome in (("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2"), ("-tls1", None),
                          ("-tls1_1", None)):
        hello = bed.john_host.run("openssl", "s_client", flag, "-cipher", "DEFAULT@SECLEVEL=0",
                                  "-CAfile", str(cafile), "-connect", f"{bed.pbx_host.v4}:5061",
                                  input="", check=False, timeout=10)
        assert (f"New, {outcome}," in hello.stdout if outcome
                else "New, (NONE), Cipher is (NONE)" in hello.stdout), (flag, hello.stdout[-600:])
    pbx.ami.command("pjsip set logger on")
    john.send(f"/dial {JANE}")
    pbx.ami.wait_event(lambda e: e["Event"] == "DialEnd" and e.get("DialStatus") == "ANSWER",
                       what="jane answers")
    john.wait_for("Call established")  # srtp-mand: no SRTP, no call
    log = pbx.log.read_text(errors="replace")
    to_john = [m for m in log.split("<--- ") if (m.startswith("Transmitting SIP response")
               and f"TLS:{bed.john_host.v4}" in m and "200 OK" in m and "CSeq: 2 INVITE" in m)
               or (m.startswith("Transmitting SIP response") and f"TLS:{bed.john_host.v4}" in m
               and "application/sdp" in m)]
    assert to_john and all(re.search(r"a=crypto:\d+ AES_CM_128_HMAC_SHA1_80 inline:", m)
                           for m in to_john)
    assert all("RTP/SAVP" in m for m in to_john)
    john.send("/hangup")


# ---------------------------------------------------------------- strangers

def test_wrong_password_and_unknown_users_get_nothing_and_feed_autoban(bed):
    bed.start(suite())
    autoban = ami_login(bed.pbx_host, "autoban", AMI_SECRETS["autoban"])
    stranger = bed.net.host("stranger", 66)
    tries = [("john.doe", "guess-1"), ("mallory", "guess-2")]
    for user, password in tries:
        result = run_sipp(stranger, bed.tmp, call_xml(user, password, expect=401),
                          bed.pbx_host.v4, service=JANE)
        assert result.ok, result.output  # challenged again: the digest was refused
    assert not bed.events("Newchannel")  # no call was ever created
    assert sipp_register(stranger, bed.pbx_host.v4, "jane.doe", "guess-3", bed.tmp,
                         expect=401, local_port=5072).returncode == 0
    for name in ("ChallengeResponseFailed", "InvalidAccountID"):
        autoban.wait_event(lambda e, n=name: e["Event"] == n
                           and f"/{stranger.v4}/" in e.get("RemoteAddress", ""),
                           what=f"{name} on autoban's AMI session")
    autoban.close()


def refused(session: AmiClient, action: str, **fields: str) -> bool:
    reply = session.action(action, **fields)
    return reply["Response"] == "Error" and "ermission denied" in reply.get("Message", "")


def test_ami_users_can_do_only_what_their_service_needs(bed):
    bed.start(suite())
    autoban = ami_login(bed.pbx_host, "autoban", AMI_SECRETS["autoban"])
    websms = ami_login(bed.pbx_host, "websms", AMI_SECRETS["websms"])
    # autoban (write = nothing) can do nothing at all
    for action, fields in (("Command", {"Command": "core show version"}),
                           ("Originate", {"Channel": "PJSIP/jane.doe", "Application": "Wait"}),
                           ("Reload", {}), ("PJSIPShowContacts", {}),
                           ("MessageSend", {"Destination": "pjsip:jane.doe", "Body": "x"})):
        assert refused(autoban, action, **fields), action
    # websms: no CLI, no calls, no reloads, none of the "system" actions
    for action, fields in (("Command", {"Command": "core show version"}),
                           ("Originate", {"Channel": "PJSIP/jane.doe", "Application": "Wait"}),
                           ("Reload", {}), ("PJSIPShowContacts", {})):
        assert refused(websms, action, **fields), action
    jane = bed.phone(bed.jane_host, "jane.doe")
    jane.wait_registered()
    # what websms does to deliver an SMS: follow the phones, find the user and its phones
    websms.wait_event(lambda e: e["Event"] == "ContactStatus" and e.get("AOR") == "jane.doe",
                      what="ContactStatus on websms's session")
    state = websms.action("ExtensionState", Exten=JANE, Context="dp_lookup_user")
    assert state.get("Hint") == "PJSIP/jane.doe", state
    contacts = websms.action("Getvar", Variable="PJSIP_AOR(jane.doe,contact)")
    assert contacts["Response"] == "Success" and contacts.get("Value"), contacts
    uri = websms.action("Getvar", Variable=f"PJSIP_CONTACT({contacts['Value']},uri)")
    assert uri.get("Value", "").startswith("sip:jane.doe"), uri
    # and Getvar is no way to the shell (live_dangerously = no)
    shell = websms.action("Getvar", Variable="SHELL(id)")
    assert not shell.get("Value"), shell
    sent = websms.action("MessageSend", Destination="pjsip:jane.doe",
                         From=f"<sip:{JOHN}@pbx>", Body="from websms")
    assert sent["Response"] == "Success", sent
    jane.wait_for('"from websms"')
    # autoban reads security events only
    assert not [e for e in autoban.events if e["Event"] != "SuccessfulAuth"
                and not e.get("Privilege", "").startswith("security")]
    autoban.close()
    websms.close()


# ---------------------------------------------------------------- toll-fraud guards

def test_a_call_from_the_trunk_never_leaves_through_the_trunk(bed):
    itsp = bed.itsp_server()  # would see any call that leaves
    bed.start(suite(itsp=bed.itsp.v4))
    for number in (DOMESTIC[1:], INTERNATIONAL, "911"):
        result = run_sipp(bed.itsp, bed.tmp, itsp_call_xml(expect=404), bed.pbx_host.v4,
                          service=number, local_port=5070)
        assert result.ok, (number, result.output)
    assert bed.dials_to_trunk() == []
    assert bed.itsp_invites(itsp) == []


def test_international_and_premium_numbers_are_refused_by_default(bed):
    itsp = bed.itsp_server()
    bed.start(suite(itsp=bed.itsp.v4))
    for number in (INTERNATIONAL, "0044" + INTERNATIONAL[3:], "011" + INTERNATIONAL[1:],
                   PREMIUM, "+18095550100"):
        result = bed.call(number, expect=403)
        assert result.ok, (number, result.output)
    assert bed.dials_to_trunk() == []
    assert bed.call("911").ok  # emergency numbers pass the toll guards
    [invite] = bed.itsp_invites(itsp)
    assert f"\nINVITE sip:911@{bed.itsp.v4} SIP/2.0" in invite


def test_toll_allow_lets_one_user_call_international(bed):
    itsp = bed.itsp_server()
    bed.start(suite(itsp=bed.itsp.v4, john=("endpoint/set_var = TOLL_ALLOW=international",)))
    assert bed.call(INTERNATIONAL).ok
    assert bed.call(PREMIUM, expect=403).ok                    # premium is not international
    assert bed.call(INTERNATIONAL, user="jane.doe", expect=403).ok  # only john may
    assert len(bed.itsp_invites(itsp)) == 1


def test_concurrent_outgoing_calls_are_capped_per_user(bed):
    itsp = bed.itsp_server()
    pbx = bed.start(suite(itsp=bed.itsp.v4))  # OUTGOING_CALL_LIMIT = 2
    held = bed.sipp(bed.john_host, call_xml("john.doe", PASSWORDS["john.doe"], hold_ms=8000),
                    bed.pbx_host.v4, service=DOMESTIC, calls=2, concurrent=2)
    deadline(lambda: len(bed.events("DialEnd", DialStatus="ANSWER")) >= 2, 10,
             "two calls of john answered")
    assert bed.call("+12125550100", expect=486, port=5080).ok  # john's third call: busy
    assert bed.call("+12125550101", user="jane.doe").ok        # jane has her own limit
    assert held.wait().ok
    assert len(bed.itsp_invites(itsp)) == 3
    assert any("john.doe: more than 2 outgoing calls" in line for line in pbx.log_lines("NOTICE"))


# ---------------------------------------------------------------- seeding, end to end

def test_seeded_suite_boots_and_a_phone_registers_with_the_generated_password(bed, tmp_path):
    dest = tmp_path / "seeded"
    run = subprocess.run([sys.executable, "-c", "import sys; from pbxhost.host.cli import main;"
                          " sys.exit(main())", "seed", "--dest", str(dest)],
                         capture_output=True, text=True, cwd=ROOT,
                         env={"HOSTNAME": bed.pbx_host.v4, "PATH": "/usr/bin:/bin",
                              "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    users = conf.load(dest / "pjsip_wizard.conf")  # includes pjsip_endpoint.conf
    password = users.section("jane.doe").get("inbound_auth/password")
    assert password and password not in run.stdout  # not in the journal: in the secrets file
    assert f"jane.doe = {password}\n" in (dest.parent / seed.SECRETS).read_text()
    secret = conf.load(dest / "autoban.conf").section("asmanager").get("secret")
    texts = {p.name: p.read_text() for p in dest.glob("*.conf")}
    texts["logger.conf"] += LOG_ALL
    pbx = bed.start(texts)
    assert pbx.log_lines("ERROR") == [] and pbx.log_lines("WARNING") == []
    transport = dict(re.findall(r"^(\w+)\s+: (.*)$",
                                pbx.ami.command("pjsip show transport transport-udp"), re.M))
    for key in ("domain", "external_signaling_address", "external_media_address"):
        assert transport[key] == bed.pbx_host.v4, (key, transport)  # HOSTNAME, not example.com
    phone = bed.phone(bed.jane_host, "jane.doe", password)
    phone.wait_registered()
    ami_login(bed.pbx_host, "autoban", secret).close()
