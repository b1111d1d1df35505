"""minivm-send against real SMTP servers on loopback (aiosmtpd, threaded Controller):
plain SMTP, SMTPS, STARTTLS, AUTH, certificates made here, and the spool that keeps a
mail nobody would take. Each case runs the real command (`python -m pbxhost.voicemail`)
with the message on stdin, as Asterisk's mailcmd does."""

from __future__ import annotations

import base64
import contextlib
import datetime
import email
import email.policy
import hashlib
import io
import ipaddress
import json
import math
import os
import socket
import ssl
import stat
import struct
import subprocess
import sys
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pbxhost import voicemail

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
USER, PASSWORD = "voicemail@example.com", "correct horse battery"
JANE = "jane.doe@example.com"
SENDER = "voicemail-noreply@example.com"


# ---------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pki:
    ca: Path  # what minivm-send is told to trust
    other_ca: Path  # a CA nobody signed our server's certificate with
    cert: Path  # for localhost and 127.0.0.1, signed by `ca`
    key: Path
    wrong_name_cert: Path  # signed by `ca`, but for mx.elsewhere.test only

    def server_context(self, cert: Path | None = None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert or self.cert, self.key)
        return ctx


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject: str, issuer: x509.Name, public_key: Any) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False))


def _make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(digital_signature=False, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=True, crl_sign=True, encipher_only=False,
                          decipher_only=False)
    cert = (_builder(cn, _name(cn), key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
            .add_extension(usage, True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _make_leaf(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate,
               key: ec.EllipticCurvePrivateKey, names: list[x509.GeneralName]) -> x509.Certificate:
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=False, crl_sign=False, encipher_only=False,
                          decipher_only=False)
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return (_builder("mx.test", ca.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(usage, True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(x509.SubjectAlternativeName(names), False)
            .add_extension(aki, False)
            .sign(ca_key, hashes.SHA256()))


def _pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA and server certificates, made once per test session."""
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca = _make_ca("pbxhost test CA")
    _, other = _make_ca("somebody else's CA")
    key = ec.generate_private_key(ec.SECP256R1())
    local = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
    (d / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return Pki(ca=_pem(d / "ca.pem", ca), other_ca=_pem(d / "other-ca.pem", other),
               cert=_pem(d / "server.pem", _make_leaf(ca_key, ca, key, local)),
               key=d / "server.key",
               wrong_name_cert=_pem(d / "elsewhere.pem", _make_leaf(
                   ca_key, ca, key, [x509.DNSName("mx.elsewhere.test")])))


# ---------------------------------------------------------------- SMTP servers


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool
    login: str | None


@dataclass
class Mailbox:
    """aiosmtpd handler: keeps what it accepts, notes every AUTH attempt and whether each
    command came over TLS; replies to RCPT and DATA can be scripted. (No attribute may be
    called auth_*: aiosmtpd would offer it as an AUTH mechanism.)"""

    users: dict[str, str] = field(default_factory=dict)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None
    received: list[Received] = field(default_factory=list)
    commands: list[tuple[str, bool]] = field(default_factory=list)
    logins_tried: list[tuple[str, str, bool]] = field(default_factory=list)

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                     mechanism: str, auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        ok = self.users.get(login) == password
        self.logins_tried.append((mechanism, login, ok))
        # handled=False: let aiosmtpd answer 535 itself (its default is to say nothing)
        return AuthResult(success=ok, handled=False, auth_data=login)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply:
            return self.data_reply
        self.received.append(Received(
            envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
            _over_tls(server), session.auth_data if session.authenticated else None))
        return "250 2.0.0 OK: queued"

    def saw(self, verb: str) -> bool:
        return any(v == verb for v, _ in self.commands)


def _over_tls(server: SMTP) -> bool:
    return server.transport is not None and (
        server.transport.get_extra_info("ssl_object") is not None)


class RecordingSMTP(SMTP):
    """aiosmtpd's SMTP, noting the commands a secret or the mail travels in."""

    def _note(self, verb: str) -> None:
        self.event_handler.commands.append((verb, _over_tls(self)))

    async def smtp_AUTH(self, arg: str) -> None:
        self._note("AUTH")
        await super().smtp_AUTH(arg)

    async def smtp_MAIL(self, arg: str) -> None:
        self._note("MAIL")
        await super().smtp_MAIL(arg)

    async def smtp_DATA(self, arg: str) -> None:
        self._note("DATA")
        await super().smtp_DATA(arg)


class LoopbackController(Controller):
    def factory(self) -> SMTP:
        return RecordingSMTP(self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # Port 0 lets the kernel pick a free port: learn it before the first connection.
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@dataclass
class Server:
    controller: LoopbackController
    mailbox: Mailbox

    @property
    def address(self) -> str:
        return f"{HOST}:{self.controller.port}"


StartServer = Callable[..., Server]


@pytest.fixture
def smtp_server(pki: Pki) -> Iterator[StartServer]:
    """Factory: start(mode, users=..., ...) runs a real SMTP server on 127.0.0.1;
    every server started is stopped at teardown. mode: smtp, smtps (implicit TLS) or
    starttls (offers STARTTLS and requires it before MAIL)."""
    running: list[LoopbackController] = []

    def start(mode: str = "smtp", *, users: dict[str, str] | None = None,
              mechanisms: tuple[str, ...] = ("LOGIN", "PLAIN"), port: int = 0,
              auth_in_clear: bool = False, cert: Path | None = None) -> Server:
        mailbox = Mailbox(users=dict(users or {}))
        kwargs: dict[str, Any] = {"hostname": HOST, "port": port,
                                  "server_hostname": "mx.test", "ready_timeout": 10}
        if mode == "smtps":
            kwargs["ssl_context"] = pki.server_context(cert)
        elif mode == "starttls":
            kwargs |= {"tls_context": pki.server_context(cert), "require_starttls": True}
        if users is not None:
            # implicit TLS is TLS too, but aiosmtpd only counts STARTTLS as such
            kwargs |= {"authenticator": mailbox.authenticate,
                       "auth_require_tls": not (auth_in_clear or mode == "smtps"),
                       "auth_exclude_mechanism": [m for m in ("LOGIN", "PLAIN")
                                                  if m not in mechanisms]}
        controller = LoopbackController(mailbox, **kwargs)
        controller.start()
        running.append(controller)
        return Server(controller, mailbox)

    yield start
    for controller in running:
        controller.stop()


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port where nothing listens (bound, not listening: connections are
    refused), free again when the block ends so a server can start there."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        yield s.getsockname()[1]


# ---------------------------------------------------------------- the mail and the command


def recording(seconds: float = 1.0, rate: int = 8000) -> bytes:
    """A WAV as MiniVM records it: 8 kHz mono 16-bit, here a 440 Hz tone (not silence)."""
    frames = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                      for i in range(int(seconds * rate)))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return buf.getvalue()


WAV = recording()


def minivm_mail(wav: bytes = WAV, *, to: str = f"Jane Doe <{JANE}>",
                extra: tuple[str, ...] = ()) -> bytes:
    """A mail as app_minivm.c writes it for mailcmd: LF-ended headers and text, base64
    lines ended by its EOL (CRLF), and a lone "." line (sendmail's end of input) last."""
    bound = "voicemail_jane.doe40421287654321"
    head = [
        "Date: Tue, 04 Mar 2025 10:15:02 +0100",
        f'From: "Voicemail" <{SENDER}>',
        f"Message-ID: <Asterisk-1287654321-jane.doe-4042-{SENDER}>",
        f"To: {to}", *extra,
        "Subject: New voicemail from John Doe <+12025550123>",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{bound}"', "", "",
        f"--{bound}",
        "Content-Type: text/plain; charset=UTF-8",
        "Content-Transfer-Encoding: 8bit", "",
        "Dear Jane Doe:\n\n\tJust wanted to let you know you were just left a 0:01 long "
        "message\nfrom Jöhn Døe <+12025550123>, so you might want to check it.\n\n"
        "\t\t\t\t--Asterisk\n",
        f"--{bound}",
        'Content-Type: audio/x-wav; name="voicemailmsg.wav"',
        "Content-Transfer-Encoding: base64",
        "Content-Description: Voicemail sound attachment.",
        'Content-Disposition: attachment; filename="voicemail0001.wav"', "", ""]
    b64 = base64.b64encode(wav)
    body = b"\r\n".join(b64[i:i + 72] for i in range(0, len(b64), 72))
    return "\n".join(head).encode() + body + f"\n\n--{bound}--\n.\n".encode()


def on_the_wire(mail: bytes) -> bytes:
    """What SMTP must carry of MAIL: without the end-of-input line, CRLF line ends."""
    text = mail.replace(b"\r\n", b"\n")
    assert text.endswith(b"\n.\n")
    return text[:-2].replace(b"\n", b"\r\n")


def attachment_sha256(content: bytes) -> str:
    msg = email.message_from_bytes(content, policy=email.policy.default)
    wavs = [p for p in msg.iter_attachments() if p.get_content_type() == "audio/x-wav"]
    assert len(wavs) == 1
    return hashlib.sha256(wavs[0].get_payload(decode=True)).hexdigest()


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str


@dataclass
class SpoolDir:
    root: Path

    def queued(self) -> list[Path]:
        return sorted(self.root.glob("*.mail")) if self.root.is_dir() else []

    def failed(self) -> list[Path]:
        return sorted((self.root / "failed").glob("*.mail"))

    @staticmethod
    def meta(path: Path) -> dict[str, Any]:
        return json.loads(path.read_bytes().partition(b"\n")[0])


@pytest.fixture
def spool(tmp_path: Path) -> SpoolDir:
    return SpoolDir(tmp_path / "spool")


MinivmSend = Callable[..., Run]


@pytest.fixture
def minivm_send(spool: SpoolDir, tmp_path: Path) -> MinivmSend:
    """Run the real command with MESSAGE on stdin and the spool in tmp_path."""
    def run(args: list[str], message: bytes = b"", **env: str) -> Run:
        clean = {k: v for k, v in os.environ.items()
                 if k not in ("JOURNAL_STREAM", voicemail.CAFILE_ENV, "PBXHOST_CONFDIR")}
        clean |= {"PYTHONPATH": str(REPO), voicemail.SPOOL_ENV: str(spool.root),
                  "SYSLOG_LEVEL": "7", **env}
        p = subprocess.run([sys.executable, "-m", "pbxhost.voicemail", *args], input=message,
                           capture_output=True, env=clean, cwd=tmp_path, timeout=60)
        return Run(p.returncode, p.stdout.decode(), p.stderr.decode())
    return run


def write_minivm_conf(path: Path, mailcmd: str) -> Path:
    path.write_text(f"[general]\nformat = wav\nmailcmd = {mailcmd}\n")
    return path


# ---------------------------------------------------------------- delivery


def test_smtp_delivers_the_mail_byte_for_byte(smtp_server: StartServer,
                                              minivm_send: MinivmSend, spool: SpoolDir):
    server = smtp_server("smtp")
    mail = minivm_mail()
    run = minivm_send(["-H", server.address, "-P", "smtp"], mail)
    assert run.status == 0, run.stderr
    [got] = server.mailbox.received
    assert got.content == on_the_wire(mail)
    assert attachment_sha256(got.content) == hashlib.sha256(WAV).hexdigest()
    assert (got.mail_from, got.rcpt_tos, got.tls) == (SENDER, [JANE], False)
    assert spool.queued() == [] and spool.failed() == []
    assert "sent mail" in run.stderr


def test_dash_f_sets_the_envelope_sender_only(smtp_server: StartServer,
                                             minivm_send: MinivmSend):
    server = smtp_server("smtp")
    run = minivm_send(["-H", server.address, "-f", "bounces@example.com"], minivm_mail())
    assert run.status == 0, run.stderr
    [got] = server.mailbox.received
    assert got.mail_from == "bounces@example.com"
    assert f'From: "Voicemail" <{SENDER}>'.encode() in got.content


@pytest.mark.parametrize("protocol", ["smtps", "tls"])
def test_implicit_tls_with_auth(protocol: str, smtp_server: StartServer,
                                minivm_send: MinivmSend, pki: Pki):
    server = smtp_server("smtps", users={USER: PASSWORD})
    # the CA comes from the environment here, as a test harness would set it
    run = minivm_send(["-H", server.address, "-P", protocol, "-u", USER, "-p", PASSWORD],
                      minivm_mail(), MINIVM_CAFILE=str(pki.ca))
    assert run.status == 0, run.stderr
    [got] = server.mailbox.received
    assert got.tls and got.login == USER
    assert attachment_sha256(got.content) == hashlib.sha256(WAV).hexdigest()
    assert all(tls for _, tls in server.mailbox.commands)


def test_starttls_upgrades_before_any_secret(smtp_server: StartServer,
                                            minivm_send: MinivmSend, pki: Pki):
    server = smtp_server("starttls", users={USER: PASSWORD})
    run = minivm_send(["-H", server.address, "-P", "starttls", "-u", USER, "-p", PASSWORD,
                       "--cafile", str(pki.ca)], minivm_mail())
    assert run.status == 0, run.stderr
    assert server.mailbox.commands == [("AUTH", True), ("MAIL", True), ("DATA", True)]
    [got] = server.mailbox.received
    assert got.tls and got.login == USER and got.content == on_the_wire(minivm_mail())


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_mechanisms_with_the_right_password(mechanism: str, smtp_server: StartServer,
                                                 minivm_send: MinivmSend, pki: Pki):
    server = smtp_server("starttls", users={USER: PASSWORD}, mechanisms=(mechanism,))
    run = minivm_send(["-H", server.address, "-P", "starttls", "-u", USER, "-p", PASSWORD,
                       "--cafile", str(pki.ca)], minivm_mail())
    assert run.status == 0, run.stderr
    assert server.mailbox.logins_tried == [(mechanism, USER, True)]
    assert len(server.mailbox.received) == 1


def test_bcc_is_stripped_but_still_delivered(smtp_server: StartServer,
                                            minivm_send: MinivmSend):
    server = smtp_server("smtp")
    mail = minivm_mail(extra=("Cc: boss@example.com",
                              "Bcc: archive@example.com,\n  audit@example.com"))
    run = minivm_send(["-H", server.address], mail)
    assert run.status == 0, run.stderr
    [got] = server.mailbox.received
    assert got.rcpt_tos == [JANE, "boss@example.com", "archive@example.com",
                            "audit@example.com"]
    assert b"bcc:" not in got.content.lower() and b"audit@" not in got.content
    without_bcc = mail.replace(b"Bcc: archive@example.com,\n  audit@example.com\n", b"")
    assert got.content == on_the_wire(without_bcc)


def test_echo_logs_to_stdout_too(smtp_server: StartServer, minivm_send: MinivmSend):
    server = smtp_server("smtp")
    run = minivm_send(["-e", "-H", server.address], minivm_mail())
    assert run.status == 0, run.stderr
    assert "sent mail" in run.stdout and "sent mail" in run.stderr


# ---------------------------------------------------------------- refusals


def test_wrong_password_is_final_and_kept_in_failed(smtp_server: StartServer,
                                                    minivm_send: MinivmSend,
                                                    spool: SpoolDir, pki: Pki):
    server = smtp_server("starttls", users={USER: PASSWORD})
    run = minivm_send(["-H", server.address, "-P", "starttls", "-u", USER, "-p", "guess",
                       "--cafile", str(pki.ca)], minivm_mail())
    assert run.status == 1
    assert "535" in run.stderr and "not retried" in run.stderr
    assert server.mailbox.received == [] and not server.mailbox.saw("MAIL")
    assert all(not ok for _, _, ok in server.mailbox.logins_tried)
    assert spool.queued() == []
    [kept] = spool.failed()
    assert b"guess" not in kept.read_bytes()
    assert kept.read_bytes().endswith(on_the_wire(minivm_mail()))


def test_starttls_not_offered_sends_nothing(smtp_server: StartServer,
                                           minivm_send: MinivmSend, spool: SpoolDir,
                                           pki: Pki):
    # A plaintext server that would gladly take AUTH in the clear (or a downgrade attack).
    server = smtp_server("smtp", users={USER: PASSWORD}, auth_in_clear=True)
    run = minivm_send(["-H", server.address, "-P", "starttls", "-u", USER, "-p", PASSWORD,
                       "--cafile", str(pki.ca)], minivm_mail())
    assert run.status == 0  # queued: see docs/minivm-send.md
    assert "STARTTLS" in run.stderr
    assert server.mailbox.commands == [] and server.mailbox.logins_tried == []
    assert server.mailbox.received == []
    assert len(spool.queued()) == 1


@pytest.mark.parametrize("mode", ["starttls", "smtps"])
@pytest.mark.parametrize("problem", ["untrusted CA", "wrong name"])
def test_bad_certificate_sends_nothing_and_queues(mode: str, problem: str,
                                                  smtp_server: StartServer,
                                                  minivm_send: MinivmSend, spool: SpoolDir,
                                                  pki: Pki):
    cert, cafile = ((None, pki.other_ca) if problem == "untrusted CA"
                    else (pki.wrong_name_cert, pki.ca))
    server = smtp_server(mode, users={USER: PASSWORD}, cert=cert)
    run = minivm_send(["-H", server.address, "-P", mode, "-u", USER, "-p", PASSWORD,
                       "--cafile", str(cafile)], minivm_mail())
    assert run.status == 0
    assert "certificate not trusted" in run.stderr
    assert server.mailbox.commands == [] and server.mailbox.received == []
    [queued] = spool.queued()
    assert "certificate" in SpoolDir.meta(queued)["last_error"]


@pytest.mark.parametrize("phase", ["RCPT", "DATA"])
def test_451_is_queued_then_flushed(phase: str, smtp_server: StartServer,
                                    minivm_send: MinivmSend, spool: SpoolDir):
    server = smtp_server("smtp")
    busy = "451 4.3.0 Mailbox busy, try again later"
    if phase == "RCPT":
        server.mailbox.rcpt_replies[JANE] = busy
    else:
        server.mailbox.data_reply = busy
    run = minivm_send(["-H", server.address], minivm_mail())
    assert run.status == 0 and "451" in run.stderr
    assert server.mailbox.received == []
    [queued] = spool.queued()
    assert SpoolDir.meta(queued)["attempts"] == 1

    server.mailbox.rcpt_replies.clear()
    server.mailbox.data_reply = None
    run = minivm_send(["--flush"])
    assert run.status == 0, run.stderr
    [got] = server.mailbox.received
    assert got.content == on_the_wire(minivm_mail())
    assert spool.queued() == []


def test_permanent_refusal_of_data_is_kept_in_failed(smtp_server: StartServer,
                                                     minivm_send: MinivmSend,
                                                     spool: SpoolDir):
    server = smtp_server("smtp")
    server.mailbox.data_reply = "554 5.6.0 Message content rejected"
    run = minivm_send(["-H", server.address], minivm_mail())
    assert run.status == 1 and "554" in run.stderr
    assert spool.queued() == [] and len(spool.failed()) == 1


def test_some_recipients_refused(smtp_server: StartServer, minivm_send: MinivmSend,
                                 spool: SpoolDir):
    server = smtp_server("smtp")
    server.mailbox.rcpt_replies |= {"nobody@example.com": "550 5.1.1 No such user",
                                    "full@example.com": "452 4.2.2 Mailbox full"}
    mail = minivm_mail(extra=("Cc: nobody@example.com, full@example.com",))
    run = minivm_send(["-H", server.address], mail)
    assert run.status == 1
    [got] = server.mailbox.received
    assert got.rcpt_tos == [JANE]
    [failed] = spool.failed()
    [queued] = spool.queued()
    assert SpoolDir.meta(failed)["rcpt_to"] == ["nobody@example.com"]
    assert SpoolDir.meta(queued)["rcpt_to"] == ["full@example.com"]


# ---------------------------------------------------------------- spool and retry


def test_server_down_then_flush_delivers_exactly_once(smtp_server: StartServer,
                                                      minivm_send: MinivmSend,
                                                      spool: SpoolDir, pki: Pki,
                                                      tmp_path: Path):
    mail = minivm_mail()
    with refusing_port() as port:
        args = ["-H", f"{HOST}:{port}", "-P", "starttls", "-u", USER, "-p", PASSWORD,
                "-f", SENDER, "--cafile", str(pki.ca)]
        run = minivm_send(args, mail)
    assert run.status == 0, run.stderr
    assert "Connection refused" in run.stderr and "queued" in run.stderr
    [queued] = spool.queued()
    raw = queued.read_bytes()
    assert PASSWORD.encode() not in raw  # the password stays in minivm.conf
    assert stat.S_IMODE(queued.stat().st_mode) == 0o600
    assert stat.S_IMODE(spool.root.stat().st_mode) == 0o700
    assert raw.endswith(on_the_wire(mail))

    # The retry finds the password in the mailcmd Asterisk runs us with.
    conf = write_minivm_conf(tmp_path / "minivm.conf", (
        f"/usr/bin/minivm-send -H {HOST}:{port} -P starttls -u {USER} "
        f"-p '{PASSWORD}' -f {SENDER}"))
    server = smtp_server("starttls", users={USER: PASSWORD}, port=port)
    run = minivm_send(["--flush", "-c", str(conf)])
    assert run.status == 0, run.stderr
    assert spool.queued() == [] and spool.failed() == []
    run = minivm_send(["--flush", "-c", str(conf)])
    assert run.status == 0, run.stderr
    [got] = server.mailbox.received
    assert got.tls and got.login == USER and got.content == on_the_wire(mail)
    assert attachment_sha256(got.content) == hashlib.sha256(WAV).hexdigest()


def test_flush_without_a_password_keeps_the_mail(smtp_server: StartServer,
                                                 minivm_send: MinivmSend,
                                                 spool: SpoolDir, pki: Pki,
                                                 tmp_path: Path):
    with refusing_port() as port:
        run = minivm_send(["-H", f"{HOST}:{port}", "-P", "starttls", "-u", USER, "-p",
                           PASSWORD, "--cafile", str(pki.ca)], minivm_mail())
    assert run.status == 0
    server = smtp_server("starttls", users={USER: PASSWORD}, port=port)
    conf = write_minivm_conf(tmp_path / "minivm.conf",
                             f"minivm-send -H mx.example.com:587 -P starttls -u {USER} -p x")
    run = minivm_send(["--flush", "-c", str(conf)])
    assert run.status == 0
    assert "no password" in run.stderr
    assert server.mailbox.commands == [] and len(spool.queued()) == 1


def test_flush_skips_a_mail_being_sent(smtp_server: StartServer, minivm_send: MinivmSend,
                                       spool: SpoolDir):
    with refusing_port() as port:
        assert minivm_send(["-H", f"{HOST}:{port}"], minivm_mail()).status == 0
    server = smtp_server("smtp", port=port)
    [queued] = spool.queued()
    fd = voicemail.claim(queued)  # as the first attempt holds it
    assert fd is not None
    try:
        assert minivm_send(["--flush"]).status == 0
        assert server.mailbox.received == []
    finally:
        os.close(fd)
    assert minivm_send(["--flush"]).status == 0
    assert len(server.mailbox.received) == 1


def test_flush_gives_up_after_the_queue_lifetime(minivm_send: MinivmSend, spool: SpoolDir):
    with refusing_port() as port:
        assert minivm_send(["-H", f"{HOST}:{port}"], minivm_mail()).status == 0
        later = time.time() + voicemail.MAX_QUEUE_AGE + 3600
        no_config = voicemail.ConfiguredPasswords(spool.root / "no-minivm.conf")
        status = voicemail.flush(voicemail.Spool(spool.root), no_config, later)
    assert status == 1
    assert spool.queued() == []
    [failed] = spool.failed()
    assert SpoolDir.meta(failed)["last_error"].startswith("gave up after 5.0 days")


def test_flush_of_an_empty_or_missing_spool(minivm_send: MinivmSend, spool: SpoolDir):
    assert not spool.root.exists()
    assert minivm_send(["--flush"]).status == 0


def test_unreadable_spool_file_is_quarantined(minivm_send: MinivmSend, spool: SpoolDir):
    spool.root.mkdir()
    (spool.root / "junk.mail").write_bytes(b"not json\nwhatever")
    run = minivm_send(["--flush"])
    assert run.status == 1 and "not a minivm-send spool file" in run.stderr
    assert spool.queued() == [] and [p.name for p in spool.failed()] == ["junk.mail"]


# ---------------------------------------------------------------- input and usage


def test_empty_stdin_is_an_error(minivm_send: MinivmSend, spool: SpoolDir):
    run = minivm_send(["-H", f"{HOST}:25"], b"")
    assert run.status == 1 and "nothing on stdin" in run.stderr
    assert spool.queued() == [] and spool.failed() == []


def test_mail_without_recipient_is_kept_in_failed(minivm_send: MinivmSend,
                                                  spool: SpoolDir):
    run = minivm_send(["-H", f"{HOST}:25"], b"From: a@example.com\nSubject: x\n\nhi\n")
    assert run.status == 1 and "no recipient" in run.stderr
    assert len(spool.failed()) == 1


@pytest.mark.parametrize("argv, message", [
    ([], "required: -H"),
    (["-H", "mx.example.com:99999"], "bad port"),
    (["-H", "mx.example.com:smtp"], "bad port"),
    (["-H", "mx.example.com:587", "-P", "pop3"], "invalid choice"),
    (["-H", "mx.example.com", "-u", USER], "-u and -p go together"),
    (["-H", "mx.example.com", "--cafile", "/nonexistent/ca.pem"], "No such file"),
    (["-H", "mx.example.com", "--cafile", "/etc/hostname"], "CA file /etc/hostname"),
    (["--flush", "-H", "mx.example.com"], "--flush takes no -H"),
])
def test_bad_usage_is_one_line_and_exit_2(argv: list[str], message: str,
                                          minivm_send: MinivmSend):
    run = minivm_send(argv, minivm_mail())
    assert run.status == 2
    assert run.stderr.count("\n") == 1 and message in run.stderr
    assert run.stderr.startswith("minivm-send: error:")


def test_end_of_input_line_and_line_ends():
    assert voicemail.strip_end_mark(b"a\n\n--b--\n.\n") == b"a\n\n--b--\n"
    assert voicemail.strip_end_mark(b"a\n.") == b"a\n"
    assert voicemail.strip_end_mark(b"a.\n") == b"a.\n"  # not a line of its own
    assert voicemail.strip_end_mark(b"a\n..\n") == b"a\n..\n"
    assert voicemail.canonical(b"a\nb\r\nc") == b"a\r\nb\r\nc\r\n"


def test_hostport_parsing():
    assert voicemail.parse_hostport("mx.example.com:587") == ("mx.example.com", 587)
    assert voicemail.parse_hostport("[2001:db8::25]:465") == ("2001:db8::25", 465)
    assert voicemail.parse_hostport("mx.example.com") == ("mx.example.com", None)
    args = voicemail.parse_args(["-H", "mx.example.com", "-P", "starttls"], env={})
    assert voicemail.route_of(args).port == 587
