"""SIP peers for tests: sipp scenarios and a headless baresip phone, each run
in a test host's namespace."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .netns import Host

REGISTER_XML = """\
<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="register {user}">
  <send retrans="500"><![CDATA[
REGISTER sip:[remote_ip] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:{user}@[remote_ip]>;tag=[pid]SIPpTag[call_number]
To: <sip:{user}@[remote_ip]>
Call-ID: [call_id]
CSeq: 1 REGISTER
Contact: <sip:{user}@[local_ip]:[local_port]>
Max-Forwards: 70
Expires: 60
User-Agent: sipp-testbed
Content-Length: 0

]]></send>
  <recv response="401" auth="true"/>
  <send retrans="500"><![CDATA[
REGISTER sip:[remote_ip] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:{user}@[remote_ip]>;tag=[pid]SIPpTag[call_number]
To: <sip:{user}@[remote_ip]>
Call-ID: [call_id]
CSeq: 2 REGISTER
Contact: <sip:{user}@[local_ip]:[local_port]>
[authentication username={user} password={password}]
Max-Forwards: 70
Expires: 60
User-Agent: sipp-testbed
Content-Length: 0

]]></send>
  <recv response="{final}"/>
</scenario>
"""


def bracket(addr: str) -> str:
    return f"[{addr}]" if ":" in addr else addr


def sipp_register(host: Host, target: str, user: str, password: str, workdir: Path,
                  expect: int = 200, calls: int = 1, rate: float = 10,
                  local_port: int = 5070, timeout: float = 30,
                  transport: str = "u1") -> subprocess.CompletedProcess[str]:
    """Send CALLS REGISTER attempts (request, 401, request with digest) from HOST
    to TARGET (an address); each expects the final response EXPECT. TRANSPORT:
    sipp's -t (u1: UDP, t1: one TCP connection)."""
    scenario = workdir / f"register-{user}-{expect}.xml"
    # sipp's [remote_ip] brackets IPv6 itself; a literal [addr] would read as a keyword.
    scenario.write_text(REGISTER_XML.format(user=user, password=password, final=expect))
    local = host.v6 if ":" in target else host.v4
    return host.run(
        "sipp", "-sf", str(scenario), "-t", transport, "-m", str(calls), "-r", str(rate),
        "-i", local,
        "-p", str(local_port), "-timeout", f"{int(timeout)}s", "-timeout_error",
        "-recv_timeout", "5000", "-nostdin", "-trace_err", "-error_file",
        str(workdir / f"sipp-{user}-errors.log"), f"{bracket(target)}:5060",
        check=False, timeout=timeout + 10, cwd=workdir,
    )


@dataclass(frozen=True)
class SipMessage:
    transport: str     # UDP, TCP, ...
    source: str        # address:port it came from
    dest: str          # address:port it went to
    sender: str        # the user part of From
    body: bytes        # exactly Content-Length bytes
    size: int          # the whole SIP request, bytes


_TRACE_START = b"\x1b[36;1m#\n"
_TRACE_END = b"\x1b[;m\n"


def received_messages(raw: bytes, me: str = "") -> list[SipMessage]:
    """MESSAGE requests in a baresip SIP trace (sent to ME, address:port, if given);
    a retransmission (same Call-ID and CSeq) counts once."""
    found = []
    seen: set[bytes] = set()
    for chunk in raw.split(_TRACE_START)[1:]:
        if _TRACE_END not in chunk:
            continue  # still arriving (read line by line): never count a partial body
        head, _, packet = chunk.partition(b"\n")
        packet = packet.split(_TRACE_END, 1)[0]
        if not packet.startswith(b"MESSAGE "):
            continue
        transport, src, _, dst = [*head.decode(errors="replace").split(), "", "", "", ""][:4]
        headers, _, rest = packet.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^(?:Content-Length|l)\s*:\s*(\d+)", headers)
        sender = re.search(rb"(?im)^(?:From|f)\s*:.*?<?sips?:([^@;>]+)@", headers)
        if length is None or sender is None:
            continue
        body = rest[:int(length.group(1))]
        ident = re.findall(rb"(?im)^(?:Call-ID|i|CSeq)\s*:\s*(.*?)\s*$", headers)
        if (me and dst != me) or b"|".join(ident) in seen:
            continue
        seen.add(b"|".join(ident))
        found.append(SipMessage(transport, src, dst, sender.group(1).decode(errors="replace"),
                                body, len(headers) + 4 + len(body)))
    return found


class Baresip:
    """A headless baresip phone registered as USER at the PBX."""

    def __init__(self, host: Host, workdir: Path, user: str, password: str, pbx: str,
                 port: int = 5060, transport: str = "udp", account_params: str = "",
                 audio_source: str = "aufile,/dev/null",
                 config_lines: tuple[str, ...] = (), trace: bool = False,
                 contacts: tuple[str, ...] = ()) -> None:
        """account_params: more ;key=value of the account (e.g. ";answermode=auto");
        audio_source: what the phone sends (e.g. "aufile,/path/tone.wav");
        config_lines: more lines of baresip's config (modules, sip_cafile, ...);
        trace: print the SIP trace (-s), kept byte for byte in `raw`, from which
        messages() reads MESSAGE bodies exactly (the phone's own display of a
        message is cut at 512 bytes); contacts: SIP URIs the phone can text with
        send_message() (the first is the current contact)."""
        self.host, self.user = host, user
        self.dir = workdir / f"baresip-{user}-{host.role}-{port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        local = host.v6 if ":" in pbx else host.v4
        self.address = f"{bracket(local)}:{port}"
        if contacts:
            config_lines = ("module_app contact.so", *config_lines)
            (self.dir / "contacts").write_text("".join(f"<{c}>\n" for c in contacts))
        (self.dir / "accounts").write_text(
            f"<sip:{user}@{bracket(pbx)};transport={transport}>;auth_pass={password};"
            f"regint=60{account_params}\n")
        (self.dir / "config").write_text("\n".join([
            "module_path /usr/lib/baresip/modules",
            "module stdio.so", "module g711.so", "module aufile.so",
            "module_app account.so", "module_app menu.so",
            f"sip_listen {bracket(local)}:{port}",
            "audio_player aufile,/dev/null", f"audio_source {audio_source}",
            *config_lines,
            "",
        ]))
        self.lines: list[str] = []
        self.raw = bytearray()
        self._cond = threading.Condition()
        # stdin must be a pipe: baresip's stdio module cannot poll /dev/null.
        # with a trace, stdout unbuffered: stdio-buffered packets and unbuffered stderr
        # lines would otherwise interleave in the pipe and corrupt a traced body
        unbuffered = ["stdbuf", "-o0", "-e0"] if trace else []
        self.proc = host.popen(*unbuffered, "baresip", *(["-s"] if trace else []), "-f",
                               str(self.dir),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.raw += raw
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = 15) -> str:
        """The first output line containing TEXT (so far or to come)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = next((ln for ln in self.lines if text in ln), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = "\n".join(self.lines[-20:])
                    raise TimeoutError(f"baresip {self.user}: no {text!r} in output:\n{tail}")
                self._cond.wait(min(left, 0.5))

    def wait_registered(self, timeout: float = 15) -> str:
        return self.wait_for("200 OK", timeout)

    def send_message(self, text: str) -> None:
        """Text the current contact (one line: baresip reads commands by line)."""
        self.send(f"/message {text}")

    def messages(self) -> list[SipMessage]:
        """MESSAGE requests received so far (needs trace=True)."""
        with self._cond:
            return received_messages(bytes(self.raw), self.address)

    def wait_messages(self, count: int, timeout: float = 15) -> list[SipMessage]:
        """At least COUNT received MESSAGE requests (so far or to come)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = received_messages(bytes(self.raw), self.address)
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"baresip {self.user}: {len(got)} of {count} MESSAGEs")
                self._cond.wait(min(left, 0.5))

    def send(self, command: str) -> None:
        """A command on baresip's stdin, e.g. "/dial +12025550183" or "/hangup"."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
