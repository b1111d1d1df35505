"""`pbxhost tls` with the real Asterisk 22 and the shipped TLS transports: its
self-signed certificate is served on 5061 over IPv4 and IPv6; a certificate
from an acme.json (the test's own CA) replaces it while a TLS phone's call is
up, `pbxhost tls` has Asterisk reload, and the new serial is served within
10 s while the call goes on (RTP both ways, then a clean hang-up over the
phone's TLS connection), and ACME_POSTHOOK ran.

Hosts: the PBX .10, john's TLS phone .30, jane's UDP phone .31."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from pbxhost.host import tls
from testbed.configs import pjsip_user
from testbed.media import RtpCounter, tone, write_wav
from testbed.tlsca import TestCA, acme_v2, served
from testbed.wait import poll

ROOT = Path(__file__).parents[2]
TRANSPORTS = (ROOT / "etc/asterisk/pjsip_transport.conf").read_text()
RTP = (ROOT / "etc/asterisk/rtp.conf").read_text()  # the ports RtpCounter counts
PASSWORDS = {"john": "John-7-pass-2210", "jane": "Jane-8-pass-0815"}
USER = "allow = !all,ulaw\ndirect_media = no\nrtp_symmetric = yes\nrewrite_contact = yes\n"
DIALPLAN = "[default]\nexten => jane,1,Dial(PJSIP/jane,30)\n same => n,Hangup()\n"


def pbxhost_tls(dest: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real command, as its unit runs it (settings in the environment)."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from pbxhost.host.cli import main; sys.exit(main())",
         "tls", "--dest", str(dest), "--key-group", "", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **env})


def test_a_new_certificate_is_served_without_dropping_a_call(net, start_asterisk, start_phone,
                                                              tree, tmp_path):
    pbx_host, john_host, jane_host = net.host("pbx", 10), net.host("john", 30), net.host("jane", 31)
    env = {"HOSTNAME": pbx_host.v4, "TLS_KEYBITS": "2048"}

    # boot: `pbxhost tls` makes the self-signed pair Asterisk starts with
    first = tmp_path / "first"
    made = pbxhost_tls(first, "--no-reload", **env)
    assert made.returncode == 0, made.stderr
    assert "new certificate from self-signed" in made.stderr
    pjsip = TRANSPORTS + "".join(pjsip_user(u, p).replace("type = endpoint\n",
                                                          "type = endpoint\n" + USER, 1)
                                 for u, p in PASSWORDS.items())
    pbx = start_asterisk(pbx_host, {"pjsip.conf": pjsip, "extensions.conf": DIALPLAN,
                                    "rtp.conf": RTP},
                         # its own host name resolves (RTP sessions look it up)
                         wrapper=("unshare", "--uts", "sh", "-c",
                                  f'hostname {pbx_host.v4} && exec "$@"', "own-name"),
                         files={f"ssl/asterisk/{n}": (first / n).read_bytes()
                                for n in (tls.CERT, tls.KEY)})
    dest = pbx.workdir / "etc/ssl/asterisk"  # the PBX's /srv/etc/ssl/asterisk
    self_signed = tls.certificate_info(dest / tls.CERT)
    assert self_signed.self_signed and self_signed.names == (pbx_host.v4,)
    assert served(john_host, pbx_host.v4, dest / tls.CERT) == self_signed.serial
    assert served(john_host, pbx_host.v6) == self_signed.serial
    transports = pbx.ami.command("pjsip show transports")
    assert "transport-tls6" in transports and "[::]:5061" in transports

    # a call from john's TLS phone to jane, media flowing
    cafile = tmp_path / "self-signed.pem"
    cafile.write_bytes((dest / tls.CERT).read_bytes())
    john = start_phone(john_host, "john", PASSWORDS["john"], pbx_host.v4, transport="tls",
                       audio_source=f"aufile,{write_wav(tmp_path / 'john.wav', tone(440, 60))}",
                       config_lines=(f"sip_cafile {cafile}",))
    jane = start_phone(jane_host, "jane", PASSWORDS["jane"], pbx_host.v4,
                       audio_source=f"aufile,{write_wav(tmp_path / 'jane.wav', tone(660, 60))}",
                       account_params=";answermode=auto")
    john.wait_registered()
    jane.wait_registered()
    rtp = RtpCounter(john_host, pbx_host.v4)
    john.send("/dial jane")
    pbx.ami.wait_event(lambda e: e["Event"] == "DialEnd" and e.get("DialStatus") == "ANSWER",
                       what="jane answers")
    john.wait_for("Call established")
    poll(lambda: min(rtp.packets().values()) >= 25, 15, "RTP both ways at john's phone")

    # Traefik writes an acme.json; `pbxhost tls` takes its certificate and reloads Asterisk
    ca = TestCA()
    issued = ca.issue(pbx_host.v4, days=90)
    acme_file, hook_out = tmp_path / "acme.json", tmp_path / "posthook-ran"
    acme_file.write_bytes(acme_v2(le=[((pbx_host.v4,), issued)],
                                  other=[(("*.example.org",), ca.issue("*.example.org"))]))
    asterisk_cli = shlex.join(["nsenter", "-t", str(pbx.proc.pid), "-m", "chroot", str(tree),
                               "/usr/sbin/asterisk", "-C", "/srv/etc/asterisk/asterisk.conf"])
    before, started = rtp.packets(), time.monotonic()
    changed = pbxhost_tls(dest, "--asterisk", asterisk_cli, ACME_FILE=str(acme_file),
                          ACME_POSTHOOK=f"echo $HOSTNAME > {hook_out}", **env)
    assert changed.returncode == 0, changed.stderr
    assert "new certificate from acme.json resolver le" in changed.stderr
    assert tls.certificate_info(dest / tls.CERT).serial == issued.serial
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    poll(lambda: served(john_host, pbx_host.v4, tmp_path / "ca.pem") == issued.serial, 10,
         "the new certificate on 5061 (IPv4)")
    poll(lambda: served(john_host, pbx_host.v6) == issued.serial, 10,
         "the new certificate on [::]:5061 (IPv6)")
    print(f"acme.json to the new serial on 5061 (v4 and v6): {time.monotonic() - started:.2f} s")
    assert hook_out.read_text() == f"{pbx_host.v4}\n"
    # the call is still up: media goes on both ways, nobody hung up, and john's
    # BYE still travels over the TLS connection opened before the change
    poll(lambda: all(n >= before[k] + 50 for k, n in rtp.packets().items()), 15,
         "RTP both ways after the change")
    assert not [e for e in pbx.ami.events if e["Event"] == "Hangup"]
    assert "2 active channels" in pbx.ami.command("core show channels count")
    john.send("/hangup")
    pbx.ami.wait_event(lambda e: e["Event"] == "Hangup", what="john hangs up")
    assert pbx.log_lines("ERROR") == []

    # the same acme.json again: nothing to do, no reload
    again = pbxhost_tls(dest, "--asterisk", asterisk_cli, ACME_FILE=str(acme_file), **env)
    assert again.returncode == 0 and "new certificate" not in again.stderr
