"""`make demo`: the product as users get it: the `pbxhost:base` image (oci/,
the Debian packages on sid with systemd as PID 1) booted on its own network,
with two phones, a password guesser and an ITSP around it.

    .venv/bin/python demo/product.py [--workdir DIR] [--stay | --no-stay] [--no-build]
    .venv/bin/python demo/product.py cli     the Asterisk CLI inside (make demo-cli)
    .venv/bin/python demo/product.py down    stop it and remove DIR (make demo-down)

It builds the image (`make oci`'s build; cached after the first run), boots
its root with systemd-nspawn (`podman run` cannot boot systemd on a cgroup-v1
host; on a cgroup-v2 host `podman run` does the same) in a network namespace
of the test bed's LAN, 192.0.2.0/24, with /srv on DIR/srv (the volume), and:
  1. reads the passwords its first boot seeded (/srv/etc/pbxhost-secrets);
  2. shows its units running (systemctl status) and what listens where;
  3. john and jane register their phones (baresip) with those passwords;
  4. a stranger guesses jane's password: autoban jails it (`autoban show`
     inside); john texts jane;
  5. the ITSP posts an SMS for jane: her phone shows it;
  6. jane texts an outside number: the ITSP gets the POST;
then `journalctl -u autoban` from inside and how to reach the PBX. With
--stay (the default on a terminal) it keeps running until Ctrl-C or `make
demo-down`; this host then has 192.0.2.1 on the demo LAN (a veth) so a
softphone here can register, unless the host uses 192.0.2.0/24 itself (then
it names a namespace on the LAN for a softphone). Needs root and `make deps`."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "oci"))
import benchlib  # noqa: E402  (puts tests/ (the test bed) and the repository on sys.path)
import build as oci  # noqa: E402  (oci/build.py: make oci)
from tour import JANE, JOHN, Lan, say, show, tour  # noqa: E402  (demo/tour.py: steps 3-6)

from pbxhost.host import seed  # noqa: E402
from testbed import image  # noqa: E402
from testbed.itsp import FakeItsp  # noqa: E402
from testbed.netns import Network, sh  # noqa: E402
from testbed.sip import Baresip  # noqa: E402
from testbed.system import BootedSystem  # noqa: E402
from testbed.wait import poll  # noqa: E402

WEBHOOK_PORT = 80  # the port the image exposes for it
DEFAULT_WORK = Path("/var/tmp/pbxhost-demo")
HOST_LINK, HOST_ADDR = "pbxdemo0", "192.0.2.1"
UNITS = ("pbxhost.target", "asterisk.service", "autoban.service", "websmsd.service")


def admin_changes(srv: Path, itsp: FakeItsp, itsp_addr: str) -> None:
    """What the admin sets after the first boot: the ITSP's API (websms.conf)."""
    path = srv / "etc/asterisk/websms.conf"
    text = path.read_text()
    for section, key, value in (("websms", "url_host", itsp.url),
                                ("websms", "url_path", "/api/sms"),
                                ("websms", "auth_user", "demo-account"),
                                ("websms", "auth_secret", "demo-api-key"),
                                ("websmsd", "url_path", "/sms/in"),
                                ("websmsd", "remt_addr", itsp_addr)):
        text = seed.set_option(text, section, key, value)
    path.write_text(text)  # keeps its owner and mode


class Machine:
    """The tour's PBX here: the booted image, asked from inside (its daemons'
    lines are in its journal, shown at the end)."""

    webhook_port = WEBHOOK_PORT

    def __init__(self, pbx: BootedSystem) -> None:
        self.pbx = pbx

    def contacts(self) -> str:
        return self.pbx.run("asterisk", "-C", "/srv/etc/asterisk/asterisk.conf", "-rx",
                            "pjsip show contacts").stdout

    def autoban_show(self) -> str:
        return self.pbx.run("autoban", "show").stdout

    def jailed(self, addr: str) -> None:
        poll(lambda: addr in self.pbx.run("autoban", "list", "jail", "sipjail").stdout
             or None, 15, "the stranger jailed")

    def log(self, daemon: str, text: str) -> None:
        return None


def host_uses_the_demo_net() -> bool:
    """This host already has addresses or routes in 192.0.2.0/24 (some test
    machines do: their gateway is 192.0.2.1); then it must not join the LAN."""
    return "192.0.2." in sh("ip", "-4", "addr").stdout + sh("ip", "-4", "route").stdout


def link_host(net: Network) -> bool:
    """This host on the demo LAN (192.0.2.1), for a softphone here, unless the
    host uses that network itself."""
    if host_uses_the_demo_net():
        return False
    sh("ip", "link", "add", HOST_LINK, "type", "veth", "peer", "name", "vhost", "netns", net.lan)
    sh("ip", "-n", net.lan, "link", "set", "vhost", "master", "br0", "up")
    sh("ip", "addr", "add", f"{HOST_ADDR}/24", "dev", HOST_LINK)
    sh("ip", "link", "set", HOST_LINK, "up")
    return True


def demo(args: argparse.Namespace) -> int:
    work: Path = args.workdir
    if (work / "demo.pid").exists() and Path(f"/proc/{(work / 'demo.pid').read_text()}").exists():
        sys.exit(f"demo: already running (pid {(work / 'demo.pid').read_text()}); "
                 "`make demo-down` stops it")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "demo.pid").write_text(str(os.getpid()))
    if args.build:
        say("the image pbxhost:base (the .debs, then podman build; cached after the first run)")
        started = time.monotonic()
        tag = oci.build(("base",))["base"]
        show(f"{tag}: {oci.size(tag) / 1e6:.0f} MB, {time.monotonic() - started:.0f} s")
    else:
        tag = f"{oci.REPO}:base"
    phones: list[Baresip] = []
    with Network() as net:
        lan = Lan.on(net)
        pbx_host, itsp_host = lan.pbx, lan.itsp
        itsp = FakeItsp(itsp_host, work)
        srv = work / "srv"
        pbx = image.machine(tag, pbx_host, work / "container",
                            env={"HOSTNAME": pbx_host.v4, "SYSLOG_LEVEL": "7",
                                 "WEBSMSD_PORT": str(WEBHOOK_PORT)}, srv=srv)
        try:
            say(f"booting {tag} as {pbx_host.v4} (systemd as PID 1, /srv = {srv})")
            started = time.monotonic()
            pbx.boot()
            pbx.wait_active(*UNITS[1:3], timeout=90)
            (work / "pid1").write_text(str(pbx.pid1))
            show(f"{pbx.run('systemctl', 'is-system-running', check=False).stdout.strip()} "
                 f"after {time.monotonic() - started:.1f} s")

            say("1. the passwords the first boot seeded, from /srv/etc/pbxhost-secrets inside")
            password = seed.parse_secrets(pbx.run("cat", "/srv/etc/pbxhost-secrets").stdout)
            show("\n".join(f"SIP user {u}: password {p}" for u, p in sorted(password.items())))
            # websmsd refuses a webhook open to anybody: it waits for the admin
            refused = [line for line in pbx.run("journalctl", "--no-pager", "-o", "cat", "-u",
                                                "websmsd").stdout.splitlines()
                       if "not started" in line]
            show(f"websmsd: {refused[-1]}" if refused else "")
            say("the admin sets the ITSP's API and address in /srv/etc/asterisk/websms.conf")
            admin_changes(srv, itsp, itsp_host.v4)
            pbx.run("systemctl", "restart", "websmsd")
            pbx.wait_active("websmsd.service")

            say("2. the units, and what listens where")
            show(pbx.run("systemctl", "status", "--no-pager", "--lines=0", *UNITS,
                         check=False).stdout)
            show(pbx.run("ss", "-Htlnup").stdout)
            poll(lambda: pbx.run("pbxhost", "status", check=False).returncode == 0 or None, 60,
                 "pbxhost status healthy")
            show(pbx.run("pbxhost", "status").stdout)

            tour(Machine(pbx), lan, work, password, itsp, phones)

            say("journalctl -u autoban, inside")
            show(pbx.run("journalctl", "--no-pager", "-o", "short", "-u", "autoban").stdout)
            for phone in phones:
                phone.stop()
            phones.clear()
            linked = args.stay and link_host(net)
            softphone = net.host("softphone", 40) if args.stay and not linked else None
            reach(pbx_host.v4, srv, work, args.stay, linked, softphone)
            if args.stay:
                wait_for_down(pbx)
            return 0
        finally:
            for phone in phones:
                phone.stop()
            itsp.close()
            pbx.poweroff()
            sh("ip", "link", "del", HOST_LINK, check=False)
            (work / "pid1").unlink(missing_ok=True)
            (work / "demo.pid").unlink(missing_ok=True)


def reach(addr: str, srv: Path, work: Path, stay: bool, linked: bool, softphone) -> None:
    say("how to reach it")
    show(f"SIP (udp/tcp 5060, tls 5061): {addr}; users john.doe and jane.doe, "
         f"passwords in {srv}/etc/pbxhost-secrets (root only)")
    show(f"webhook for the ITSP: http://{addr}:{WEBHOOK_PORT}/sms/in")
    show(f"configuration (the /srv volume): {srv}/etc/asterisk; logs: {work}")
    if linked:
        show(f"a softphone on this host ({HOST_ADDR}) can register as john.doe or jane.doe "
             f"and call the other ({JOHN}, {JANE})")
    elif softphone is not None:
        show("this host uses 192.0.2.0/24 itself, so it stays off the demo LAN; run a "
             f"softphone in the demo's host {softphone.v4}: ip netns exec {softphone.ns} "
             f"baresip (register as john.doe or jane.doe, call {JOHN} or {JANE})")
    if stay:
        show("make demo-cli: the Asterisk CLI inside; make demo-down: stop and remove it")


def wait_for_down(pbx) -> None:
    print("\nThe PBX keeps running until Ctrl-C or `make demo-down`.", flush=True)
    try:
        while pbx.proc is not None and pbx.proc.poll() is None:
            time.sleep(1)  # an idle wait for the user, not synchronisation
    except KeyboardInterrupt:
        print("\nstopping", flush=True)


def cli(work: Path) -> int:
    pid1 = work / "pid1"
    if not pid1.exists():
        sys.exit("demo: not running (`make demo` starts it)")
    return subprocess.call(["nsenter", "-t", pid1.read_text(), "-a", "asterisk", "-C",
                            "/srv/etc/asterisk/asterisk.conf", "-r"])


def down(work: Path) -> int:
    pidfile = work / "demo.pid"
    if pidfile.exists():
        pid = int(pidfile.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
            poll(lambda: not Path(f"/proc/{pid}").exists() or None, 90, "the demo stopped")
        except ProcessLookupError:
            pass
    shutil.rmtree(work, ignore_errors=True)
    print(f"demo: stopped; {work} removed")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", nargs="?", choices=("run", "cli", "down"), default="run")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORK,
                    help=f"the volume, logs and state (default {DEFAULT_WORK})")
    ap.add_argument("--stay", action=argparse.BooleanOptionalAction, default=sys.stdin.isatty(),
                    help="keep it running until Ctrl-C or make demo-down (default: on a terminal)")
    ap.add_argument("--build", action=argparse.BooleanOptionalAction, default=True,
                    help="build the image first (default; cached by podman)")
    args = ap.parse_args()
    benchlib.NAME = "demo"
    benchlib.require(["podman", "systemd-nspawn", "sipp", "baresip", "debootstrap"],
                     "`make deps` installs them")
    if args.action == "cli":
        return cli(args.workdir)
    if args.action == "down":
        return down(args.workdir)
    benchlib.sigterm_raises()
    return demo(args)


if __name__ == "__main__":
    sys.exit(benchlib.run_main(main))
