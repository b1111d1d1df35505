"""sipp scenarios for calls and messages: a phone that calls (with digest
auth, playing a tone as RTP), a fake ITSP that answers calls and checks our
credentials with sipp's verifyauth, a fake ITSP registrar, an ITSP that calls
us, and a phone that sends SIP MESSAGE. Each runs in a test host's namespace;
every message sipp sends and receives is kept in a trace file for asserts."""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .netns import Host
from .sip import bracket


def sdp(version: int = 1) -> str:
    """Our offer or answer: one PCMU stream. VERSION is the o= line's session
    version, which a re-INVITE's new offer raises."""
    return f"""v=0
o=- 1 {version} IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000
a=sendrecv
"""


_SDP = sdp()

_INVITE = """
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "{user}" <sip:{user}@[remote_ip]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]>
Call-ID: [call_id]
CSeq: {cseq} INVITE
Contact: <sip:{user}@[local_ip]:[local_port]>
{auth}Max-Forwards: 70
User-Agent: sipp-testbed
Content-Type: application/sdp
Content-Length: [len]

""" + _SDP

_ACK_FAILURE = """
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
CSeq: {cseq} ACK
Max-Forwards: 70
Content-Length: 0

"""

# The peer's To from the dialog's own state (its tag, from its responses), not
# from the last message received: after the peer's re-INVITE that is its ACK.
_IN_DIALOG = """
{method} [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "{user}" <sip:{user}@[remote_ip]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]>[peer_tag_param]
Call-ID: [call_id]
CSeq: {cseq} {method}
Contact: <sip:{user}@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

"""


def _send(text: str, retrans: bool = True) -> str:
    attr = ' retrans="500"' if retrans else ""
    return f"  <send{attr}><![CDATA[{text}]]></send>\n"


def _play(audio: Path | None) -> str:
    # rtp_stream: raw u-law, looped (-1) as payload type 0, to the peer's SDP address
    if audio is None:
        return ""
    return f'  <nop><action><exec rtp_stream="{audio},-1,0"/></action></nop>\n'


def call_xml(user: str, password: str | None, expect: int = 200, hold_ms: int = 3000,
             audio: Path | None = None) -> str:
    """A phone calls [service]: INVITE, digest auth when challenged (password
    None: no credentials at all), EXPECT as the final answer; on 200 it plays
    AUDIO for HOLD_MS and hangs up."""
    steps = [_send(_INVITE.format(user=user, cseq=1, auth="")),
             '  <recv response="100" optional="true"/>\n']
    cseq = 1
    if password is not None:
        cseq = 2
        steps += ['  <recv response="401" auth="true"/>\n',
                  _send(_ACK_FAILURE.format(cseq=1), retrans=False),
                  _send(_INVITE.format(
                      user=user, cseq=2,
                      auth=f"[authentication username={user} password={password}]\n")),
                  '  <recv response="100" optional="true"/>\n']
    steps += ['  <recv response="180" optional="true"/>\n',
              '  <recv response="183" optional="true"/>\n']
    if expect != 200:
        steps += [f'  <recv response="{expect}"/>\n',
                  _send(_ACK_FAILURE.format(cseq=cseq), retrans=False)]
    else:
        steps += ['  <recv response="200" rrs="true"/>\n',
                  _send(_IN_DIALOG.format(method="ACK", user=user, cseq=cseq), retrans=False),
                  _play(audio),
                  *_hold(hold_ms),
                  _send(_IN_DIALOG.format(method="BYE", user=user, cseq=cseq + 1)),
                  '  <recv response="200"/>\n']
    return _scenario("call", steps)


def _hold(hold_ms: int) -> list[str]:
    """The call held HOLD_MS, answering the peer's re-INVITEs meanwhile: Asterisk
    sends one to update the connected line (e.g. when the callee's identity
    comes after the answer, as under load). Answered with our unchanged SDP,
    then the hold starts again. A wait for an INVITE that times out rather than
    a pause: sipp takes a message its scenario does not expect where it is as
    unexpected and fails the call. What else comes needs nothing here: sipp's
    -aa answers INFO, NOTIFY, OPTIONS and UPDATE, and a retransmitted 200 of
    our INVITE (our ACK late or lost) is ACKed again by sipp itself (the ACK is
    what it sent after that 200)."""
    return ['  <label id="hold"/>\n',
            f'  <recv request="INVITE" timeout="{hold_ms}" ontimeout="bye"/>\n',
            # a 2xx to an INVITE: sent again until the ACK comes
            _reply("200 OK", "Content-Type: application/sdp\n", sdp=True, in_dialog=True,
                   retrans=True),
            '  <recv request="ACK" next="hold"/>\n',
            '  <label id="bye"/>\n']


_REPLY = """
SIP/2.0 {status}
[last_Via:]
[last_From:]
[last_To:]{tag}
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:[local_ip]:[local_port];transport=[transport]>
{extra}Content-Length: {length}

"""


def _reply(status: str, extra: str = "", sdp: bool = False, in_dialog: bool = False,
           retrans: bool = False) -> str:
    """A response to the last request; IN_DIALOG: its To has our tag already."""
    tag = "" if in_dialog else ";tag=[pid]SIPpTag01[call_number]"
    text = _REPLY.format(status=status, tag=tag, extra=extra, length="[len]" if sdp else "0")
    return _send(text + (_SDP if sdp else ""), retrans=retrans)


def _challenge_and_verify(request: str, user: str, password: str,
                          checks: tuple[tuple[str, str], ...] = ()) -> list[str]:
    """Challenge REQUEST (401: sipp's verifyauth reads Authorization, not
    Proxy-Authorization), then check the retry's digest and the regexps CHECKS
    (header, regexp); a failed check fails the call."""
    ack = ['  <recv request="ACK"/>\n'] if request == "INVITE" else []
    ereg = "".join(
        f'      <ereg regexp="{regexp}" search_in="hdr" header="{hdr}:" check_it="true"'
        f' assign_to="chk{i}"/>\n' for i, (hdr, regexp) in enumerate(checks))
    return [
        f'  <recv request="{request}"/>\n',
        _reply("401 Unauthorized", 'WWW-Authenticate: Digest realm="itsp.test", '
               'nonce="4a7f03b2c1d0e9f8"\n'),
        *ack,
        f'  <recv request="{request}">\n    <action>\n{ereg}'
        f'      <verifyauth assign_to="authvalid" username="{user}" password="{password}"/>\n'
        '    </action>\n  </recv>\n',
        # a wrong digest: 403 and a call that never completes (sipp counts it failed)
        '  <nop hide="true" test="authvalid" next="authok"/>\n',
        _reply("403 Forbidden"),
        *(['  <recv request="ACK"/>\n'] if request == "INVITE" else []),
        '  <recv request="BYE" timeout="1000"/>\n',
        '  <label id="authok"/>\n',
        # sipp refuses variables it sees assigned but never read
        *([f'  <Reference variables="{",".join(f"chk{i}" for i in range(len(checks)))}"/>\n']
          if checks else []),
    ]


def itsp_answer_xml(user: str, password: str, caller: str | None = None,
                    audio: Path | None = None) -> str:
    """A fake ITSP's SIP server taking a call: challenges the INVITE,
    checks the digest against USER/PASSWORD and that From and
    P-Asserted-Identity carry CALLER (a regexp), answers, plays AUDIO and
    waits for the BYE."""
    checks = (("From", caller), ("P-Asserted-Identity", caller)) if caller else ()
    steps = _challenge_and_verify("INVITE", user, password, checks)
    steps += [_reply("180 Ringing"), _reply("200 OK", "Content-Type: application/sdp\n", sdp=True),
              '  <recv request="ACK"/>\n', _play(audio),
              '  <recv request="BYE"/>\n', _reply("200 OK")]
    return _scenario("itsp answers", steps)


def itsp_registrar_xml(user: str, password: str) -> str:
    """A fake ITSP registrar: challenges the REGISTER, checks the digest, 200
    (403 for a wrong one)."""
    steps = _challenge_and_verify("REGISTER", user, password)
    steps += [_reply("200 OK", "Expires: 3600\n[last_Contact:];expires=3600\n")]
    return _scenario("itsp registrar", steps)


def itsp_call_xml(expect: int = 200, hold_ms: int = 1000) -> str:
    """The ITSP calls us (identified by its address, no auth): a DID rings
    and is answered, or the call is refused with EXPECT."""
    return call_xml("itsp", None, expect, hold_ms)


_MESSAGE = """
MESSAGE sip:[service]@[remote_ip] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: {display}<sip:{user}@[remote_ip]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]>
Call-ID: [call_id]
CSeq: {cseq} MESSAGE
{auth}Max-Forwards: 70
Content-Type: text/plain;charset=UTF-8
Content-Length: [len]

{body}"""


def message_xml(user: str, password: str, body: str, display: str = "") -> str:
    """A phone sends SIP MESSAGE BODY to [service], with digest auth; DISPLAY:
    the From's display name, sent quoted as it is (a hostile one, too)."""
    auth = f"[authentication username={user} password={password}]\n"
    name = f'"{display}" ' if display else ""
    return _scenario("message", [
        _send(_MESSAGE.format(user=user, cseq=1, auth="", body=body, display=name)),
        '  <recv response="401" auth="true"/>\n',
        _send(_MESSAGE.format(user=user, cseq=2, auth=auth, body=body, display=name)),
        '  <recv response="202"/>\n'])


def _scenario(name: str, steps: list[str]) -> str:
    return (f'<?xml version="1.0" encoding="UTF-8" ?>\n<scenario name="{name}">\n'
            + "".join(steps) + "</scenario>\n")


@dataclass
class SippResult:
    returncode: int
    output: str
    trace: str   # every SIP message sent and received

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Sipp:
    """One sipp process in HOST's namespace. Client (target given) or server
    (target None: answers on local_port). Start it, then wait() for it."""

    _count = 0

    def __init__(self, host: Host, workdir: Path, xml: str, target: str | None = None,
                 service: str = "s", local_port: int = 5070, calls: int = 1,
                 transport: str = "u1", media_port: int = 6000, timeout: float = 30,
                 concurrent: int | None = None) -> None:
        Sipp._count += 1
        name = f"sipp-{host.role}-{local_port}-{Sipp._count}"
        self.workdir, self.host, self.local_port = workdir, host, local_port
        self.scenario = workdir / f"{name}.xml"
        self.scenario.write_text(xml)
        self.trace_file = workdir / f"{name}.trace"
        local = host.v6 if target and ":" in target else host.v4
        argv = ["sipp", "-sf", str(self.scenario), "-i", local, "-p", str(local_port),
                "-mi", local, "-mp", str(media_port), "-t", transport,
                "-m", str(calls), "-s", service, "-nostdin", "-aa",
                "-timeout", f"{int(timeout)}s", "-timeout_error",
                "-trace_msg", "-message_file", str(self.trace_file),
                "-trace_err", "-error_file", str(workdir / f"{name}.errors")]
        if concurrent:
            argv += ["-l", str(concurrent), "-r", str(concurrent)]
        if target:
            argv.append(f"{bracket(target)}:5060")
        self.timeout = timeout
        self.proc = host.popen(*argv, cwd=workdir, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def wait_listening(self, timeout: float = 5) -> None:
        """A server: until its UDP port is bound (a peer started later must not
        send into the void)."""
        deadline = time.monotonic() + timeout
        while not self.host.run("ss", "-Hlun", f"sport = :{self.local_port}").stdout.strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sipp not listening on {self.local_port}: {self.wait().output}")
            time.sleep(0.02)  # polling the kernel's socket table: nothing to await

    def _read(self) -> None:
        assert self.proc.stdout is not None
        self._output.append(self.proc.stdout.read())

    def wait(self) -> SippResult:
        try:
            code = self.proc.wait(self.timeout + 10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(5)
        trace = self.trace_file.read_text(errors="replace") if self.trace_file.exists() else ""
        return SippResult(code, "".join(self._output)[-3000:], trace)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_sipp(host: Host, workdir: Path, xml: str, target: str, **kw) -> SippResult:
    """A client scenario, run to its end."""
    return Sipp(host, workdir, xml, target, **kw).wait()
