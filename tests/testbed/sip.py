"""SIP peers for tests: sipp scenarios and a headless baresip phone, each run
in a test host's namespace."""

from __future__ import annotations

import subprocess
import threading
import time
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
                  local_port: int = 5070, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Send CALLS REGISTER attempts (request, 401, request with digest) from HOST
    to TARGET (an address); each expects the final response EXPECT."""
    scenario = workdir / f"register-{user}-{expect}.xml"
    # sipp's [remote_ip] brackets IPv6 itself; a literal [addr] would read as a keyword.
    scenario.write_text(REGISTER_XML.format(user=user, password=password, final=expect))
    local = host.v6 if ":" in target else host.v4
    return host.run(
        "sipp", "-sf", str(scenario), "-m", str(calls), "-r", str(rate), "-i", local,
        "-p", str(local_port), "-timeout", f"{int(timeout)}s", "-timeout_error",
        "-recv_timeout", "5000", "-nostdin", "-trace_err", "-error_file",
        str(workdir / f"sipp-{user}-errors.log"), f"{bracket(target)}:5060",
        check=False, timeout=timeout + 10, cwd=workdir,
    )


class Baresip:
    """A headless baresip phone registered as USER at the PBX."""

    def __init__(self, host: Host, workdir: Path, user: str, password: str, pbx: str,
                 port: int = 5060, transport: str = "udp") -> None:
        self.host, self.user = host, user
        self.dir = workdir / f"baresip-{user}-{host.role}-{port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        local = host.v6 if ":" in pbx else host.v4
        (self.dir / "accounts").write_text(
            f"<sip:{user}@{bracket(pbx)};transport={transport}>;auth_pass={password};"
            "regint=60\n")
        (self.dir / "config").write_text("\n".join([
            "module_path /usr/lib/baresip/modules",
            "module stdio.so", "module g711.so", "module aufile.so",
            "module_app account.so", "module_app menu.so",
            f"sip_listen {bracket(local)}:{port}",
            "audio_player aufile,/dev/null", "audio_source aufile,/dev/null",
            "",
        ]))
        self.lines: list[str] = []
        self._cond = threading.Condition()
        # stdin must be a pipe: baresip's stdio module cannot poll /dev/null.
        self.proc = host.popen("baresip", "-f", str(self.dir), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
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

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
