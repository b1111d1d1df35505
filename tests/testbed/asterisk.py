"""A real Asterisk 22 from the cached sid tree, running in a test host's
namespace with a config directory the test writes.

Asterisk runs as `chroot TREE asterisk -f` inside `ip netns exec`, which gives
it a private mount namespace: the test's etc/ and var/ are bind-mounted over
/srv/etc and /srv/var of the shared tree there, so nothing is written into the
tree and every mount disappears with the process."""

from __future__ import annotations

import secrets
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

from .amiclient import AmiClient
from .netns import Host
from .wait import poll

AMI_PORT = 5038
# The repository, read-only inside the chroot: AGI scripts run pbxhost from it
# (the tree has python3 and the Debian packages they import).
REPO = Path(__file__).resolve().parents[2]
REPO_MOUNT = "/opt/pbxhost"
ADMIN_USER = "testbed"

ASTERISK_CONF = """\
[directories]
astetcdir => /srv/etc/asterisk
astmoddir => /usr/lib/x86_64-linux-gnu/asterisk/modules
astvarlibdir => /srv/var/lib/asterisk
astdbdir => /srv/var/lib/asterisk
astkeydir => /srv/var/lib/asterisk
astdatadir => /usr/share/asterisk
astagidir => /usr/share/asterisk/agi-bin
astspooldir => /srv/var/spool/asterisk
astrundir => /srv/var/run/asterisk
astlogdir => /srv/var/log/asterisk
astsbindir => /usr/sbin
astcachedir => /srv/var/cache/asterisk

[options]
verbose = 3
"""

# Every level to a file the test reads: an ERROR line is then visible to asserts.
LOGGER_CONF = """\
[general]
dateformat = %F %T.%3q
[logfiles]
full => error,warning,notice,verbose(3)
"""

# Only what SIP registration, messaging and AMI need: fast start, quiet log.
MODULES = (
    "res_pjproject", "res_sorcery_config", "res_sorcery_memory", "res_sorcery_astdb",
    "res_pjsip", "res_pjsip_session", "chan_pjsip", "res_pjsip_authenticator_digest",
    "res_pjsip_registrar", "res_pjsip_endpoint_identifier_user",
    "res_pjsip_endpoint_identifier_ip", "res_pjsip_outbound_authenticator_digest",
    "res_pjsip_messaging", "res_pjsip_config_wizard", "res_pjsip_pubsub", "res_pjsip_nat",
    "res_pjsip_sdp_rtp", "res_rtp_asterisk", "res_pjsip_acl", "res_pjsip_logger",
    "codec_ulaw", "pbx_config", "app_dial", "app_playback", "app_echo", "func_callerid",
    "format_wav", "format_pcm", "res_security_log", "res_timing_timerfd", "bridge_simple",
    "res_musiconhold", "res_pjsip_caller_id", "res_pjsip_dtmf_info", "chan_bridge_media",
    "bridge_native_rtp", "app_sendtext", "func_strings", "func_base64", "app_verbose",
    "app_stack", "res_pjsip_header_funcs", "func_pjsip_endpoint",
)
MODULES_CONF = "[modules]\nautoload = no\n" + "".join(f"load = {m}.so\n" for m in MODULES)
# Present but empty, so the modules above start without "Unable to load" noise.
EMPTY_CONFS = ("cdr.conf", "cel.conf", "features.conf", "acl.conf", "udptl.conf",
               "pjproject.conf", "pjsip.conf", "pjsip_wizard.conf", "extensions.conf",
               "ccss.conf", "stasis.conf", "musiconhold.conf")


class Asterisk:
    """Start with start(); `ami` is an admin AMI session once ready."""

    def __init__(self, tree: Path, host: Host, workdir: Path,
                 configs: dict[str, str] | None = None,
                 files: dict[str, str | bytes] | None = None,
                 wrapper: tuple[str, ...] = ()) -> None:
        """files: more files under etc/ (seen as /srv/etc/...), e.g. "ssl/asterisk/cert.pem";
        wrapper: a command the chroot runs under (e.g. strace), outside the chroot."""
        self.tree, self.host, self.workdir = tree, host, workdir
        self.files = dict(files or {})
        self.wrapper = wrapper
        self.etc = workdir / "etc/asterisk"
        self.var = workdir / "var"
        self.log = self.var / "log/asterisk/full"
        self.admin_secret = secrets.token_hex(12)
        self.configs = dict.fromkeys(EMPTY_CONFS, "")
        self.configs |= {"asterisk.conf": ASTERISK_CONF, "logger.conf": LOGGER_CONF,
                        "modules.conf": MODULES_CONF,
                        "manager.conf": "[general]\nenabled = yes\nbindaddr = 127.0.0.1\n"}
        self.configs.update(configs or {})
        self.proc: subprocess.Popen | None = None
        self.ami: AmiClient | None = None

    def write_configs(self) -> None:
        self.etc.mkdir(parents=True, exist_ok=True)
        for sub in ("lib/asterisk", "spool/asterisk", "run/asterisk", "log/asterisk",
                    "cache/asterisk"):
            (self.var / sub).mkdir(parents=True, exist_ok=True)
        for name, text in self.configs.items():
            if name == "manager.conf":
                # The test bed's own observer; appended so a test's manager.conf stays as written.
                text += (f"\n[{ADMIN_USER}]\nsecret = {self.admin_secret}\n"
                         "read = all\nwrite = all\n")
            (self.etc / name).write_text(text)
        for name, data in self.files.items():
            path = self.workdir / "etc" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data.encode() if isinstance(data, str) else data)

    def start(self, timeout: float = 30) -> AmiClient:
        self.write_configs()
        t = shlex.quote(str(self.tree))
        script = " && ".join([
            f"mount --bind {shlex.quote(str(self.workdir / 'etc'))} {t}/srv/etc",
            f"mount --bind {shlex.quote(str(self.var))} {t}/srv/var",
            f"mount -t proc proc {t}/proc",
            f"mount --bind /dev {t}/dev",
            f"mount -t tmpfs tmpfs {t}/tmp",
            f"mount -t tmpfs tmpfs {t}/run",
            f"mount --bind {shlex.quote(str(REPO))} {t}{REPO_MOUNT}",
            f"mount -o remount,bind,ro {t}{REPO_MOUNT}",
            # inherited by AGI scripts; no .pyc written into the read-only repository
            f"export PYTHONPATH={REPO_MOUNT} PYTHONDONTWRITEBYTECODE=1",
            f"exec {shlex.join(self.wrapper)} chroot {t} "
            "/usr/sbin/asterisk -f -C /srv/etc/asterisk/asterisk.conf",
        ])
        console = open(self.workdir / "console.log", "wb")  # noqa: SIM115 (lives with the process)
        self.proc = self.host.popen("sh", "-c", script, stdin=subprocess.DEVNULL,
                                    stdout=console, stderr=subprocess.STDOUT)
        self.ami = self.connect_ami(ADMIN_USER, self.admin_secret, timeout)
        self.ami.wait_event(lambda e: e["Event"] == "FullyBooted", timeout, "FullyBooted")
        # Asterisk announces FullyBooted a moment before it registers its core CLI
        # commands ("No such command 'core show version'" seen right after it).
        poll(lambda: self.ami.command("core show version").startswith("Asterisk"), timeout,
             "Asterisk's core CLI commands", interval=0.02)
        return self.ami

    def connect_ami(self, username: str, secret: str, timeout: float = 30) -> AmiClient:
        """Log in on 127.0.0.1:5038 inside the PBX namespace, retrying until the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"asterisk exited ({self.proc.returncode}):\n{self.console()}")
            sock = self.host.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.settimeout(2)
                sock.connect(("127.0.0.1", AMI_PORT))
                sock.settimeout(None)
                return AmiClient(sock, username, secret)
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"AMI not answering after {timeout}s:\n{self.console()}") from None
                time.sleep(0.1)  # polling a port that is not open yet: nothing to await

    def console(self) -> str:
        path = self.workdir / "console.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def log_lines(self, level: str) -> list[str]:
        if not self.log.exists():
            return []
        return [ln for ln in self.log.read_text(errors="replace").splitlines()
                if f"] {level}[" in ln]

    def stop(self) -> None:
        if self.ami is not None:
            self.ami.close()
            self.ami = None
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
