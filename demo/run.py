"""`make demo-dev`: the daemons of this source tree, for developers, in network
namespaces: Asterisk 22 on the seeded configuration suite, autoban and
websms from this source tree, two phones, a password guesser and an ITSP.

    .venv/bin/python demo/run.py [--workdir DIR] [--stay]

What it shows, step by step, with the daemons' own log lines:
  1. `pbxhost seed` writes the suite with fresh passwords and AMI secrets;
  2. Asterisk, autoband and websmsd start on it (what listens where);
  3. john and jane register their phones with the seeded passwords;
  4. a stranger guesses jane's password: autoban jails it; john texts jane;
  5. the ITSP posts an SMS for jane: her phone shows it;
  6. jane texts an outside number: the ITSP gets the POST.
With --stay (the default when run from a terminal) everything keeps running
until Ctrl-C, with the daemons' logs followed. Nothing outside the work
directory and the namespaces is changed; the namespaces and processes go
away at the end, the work directory (configs, logs) stays.
Needs root (namespaces, nftables) and the test bed's packages (`make deps`)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import benchlib  # noqa: E402  (puts tests/ (the test bed) and the repository on sys.path)
from tour import Lan, say, show, tour  # noqa: E402  (demo/tour.py: steps 3-6)

from pbxhost.host import seed  # noqa: E402
from testbed import rootfs  # noqa: E402
from testbed.asterisk import Asterisk  # noqa: E402
from testbed.daemon import Daemon  # noqa: E402
from testbed.itsp import FakeItsp  # noqa: E402
from testbed.netns import Host, Network  # noqa: E402
from testbed.sip import Baresip  # noqa: E402

WEBHOOK_PORT = 8088
# SYSLOG_LEVEL 7 (info): the demo shows AMI logins and each SMS taken, too
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(ROOT), "SYSLOG_LEVEL": "7"}


def command(module: str, *args: str) -> list[str]:
    """A pbxhost console script, run from this tree."""
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())",
            *args]


def seeded(dest: Path, hostname: str) -> tuple[dict[str, str], str]:
    run = subprocess.run(command("pbxhost.host.cli", "seed", "--dest", str(dest)),
                         capture_output=True, text=True, check=True,
                         env={**ENV, "HOSTNAME": hostname})
    return {p.name: p.read_text() for p in sorted(dest.glob("*.conf"))}, run.stdout


def admin_changes(texts: dict[str, str], work: Path, itsp: FakeItsp, itsp_addr: str) -> None:
    """What the admin sets after seeding: the ITSP's API and where state goes."""
    websms = texts["websms.conf"]
    for key, value in (("url_host", itsp.url), ("url_path", "/api/sms"),
                       ("auth_user", "demo-account"), ("auth_secret", "demo-api-key")):
        websms = seed.set_option(websms, "websms", key, value)
    websms = seed.set_option(websms, "websmsd", "url_path", "/sms/in")
    websms = seed.set_option(websms, "websmsd", "remt_addr", itsp_addr)
    texts["websms.conf"] = seed.set_option(websms, "astqueue", "spooldir", str(work / "spool"))
    texts["autoban.conf"] = seed.set_option(texts["autoban.conf"], "autoban", "statefile",
                                            str(work / "autoban-state.json"))
    # the suite logs to syslog; the demo shows Asterisk's notices from a file too
    texts["logger.conf"] += "\n[logfiles](+)\nmessages.log => notice,warning,error\n"


def listening(host) -> str:
    """Sockets listening in the PBX's namespace, and whose they are."""
    out = set()
    for line in host.run("ss", "-Htlnup").stdout.splitlines():
        fields = line.split()
        owner = re.search(r'users:\(\("([^"]+)"', line)
        out.add(f"{fields[0]:<4} {fields[4]:<22} {owner.group(1) if owner else ''}")
    return "\n".join(sorted(out))


class SourceTree:
    """The tour's PBX here: Asterisk in the PBX's namespace, autoband and websmsd
    of this tree beside it, their logs in the work directory."""

    webhook_port = WEBHOOK_PORT

    def __init__(self, asterisk: Asterisk, host: Host, autoban_conf: Path,
                 daemons: dict[str, Daemon]) -> None:
        self.asterisk, self.host, self.autoban_conf = asterisk, host, autoban_conf
        self.daemons = daemons

    def contacts(self) -> str:
        return self.asterisk.ami.command("pjsip show contacts")

    def autoban_show(self) -> str:
        return self.host.run(*command("pbxhost.autoban.cli", "-c", str(self.autoban_conf),
                                      "show"), env=ENV).stdout

    def jailed(self, addr: str) -> str:
        return self.log("autoban", f"jailed {addr}", timeout=10)

    def log(self, daemon: str, text: str, timeout: float = 15) -> str:
        return self.daemons[daemon].wait_log(text, timeout=timeout).split(" ", 2)[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, help="keep configs and logs here")
    ap.add_argument("--stay", action=argparse.BooleanOptionalAction, default=sys.stdin.isatty(),
                    help="keep the PBX running until Ctrl-C (default: when on a terminal)")
    args = ap.parse_args()
    benchlib.NAME = "demo"
    benchlib.require(["sipp", "baresip", "nft", "debootstrap"], "`make deps` installs them")
    benchlib.sigterm_raises()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="pbxhost-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    say("the Asterisk 22 tree (built once, about a minute; cached after)")
    tree = rootfs.ensure_rootfs()
    show(", ".join(f"{k} {v}" for k, v in rootfs.versions(tree).items()))
    daemons: list[Daemon] = []
    phones: list[Baresip] = []
    with Network() as net:
        lan = Lan.on(net)
        pbx_host, itsp_host = lan.pbx, lan.itsp
        itsp = FakeItsp(itsp_host, work)
        pbx = None
        try:
            say(f"1. pbxhost seed: the configuration suite for {pbx_host.v4}")
            texts, report = seeded(work / "seeded", pbx_host.v4)
            show(report)
            # the passwords are in the root-only file beside the config dir, not in the report
            password = seed.parse_secrets((work / seed.SECRETS).read_text())
            show("\n".join(f"SIP user {u}: password {p} (from {work / seed.SECRETS})"
                           for u, p in sorted(password.items())))
            admin_changes(texts, work, itsp, itsp_host.v4)

            say("2. Asterisk 22, autoband and websmsd start")
            pbx = Asterisk(tree, pbx_host, work / "asterisk", texts)
            pbx.start()
            etc = pbx.etc  # the suite as Asterisk reads it (/srv/etc/asterisk in its chroot)
            show(pbx.ami.command("core show version").splitlines()[0])
            autoband = Daemon(pbx_host, "pbxhost.autoban.daemon", etc / "autoban.conf", work,
                              "autoband")
            websmsd = Daemon(pbx_host, "pbxhost.websms.daemon", etc / "websms.conf", work,
                             "websmsd")
            autoband.start(ENV)
            websmsd.start({**ENV, "WEBSMSD_PORT": str(WEBHOOK_PORT)})
            daemons += [autoband, websmsd]
            for daemon in daemons:
                show(daemon.wait_log("started", timeout=45).split(" ", 2)[-1])
                daemon.wait_log("AMI connected", timeout=45)
            show(listening(pbx_host))

            tour(SourceTree(pbx, pbx_host, etc / "autoban.conf",
                            {"autoban": autoband, "websmsd": websmsd}),
                 lan, work, password, itsp, phones)

            print(f"\nconfigs and logs: {work}", flush=True)
            if args.stay:
                follow(daemons)
            return 0
        finally:
            for phone in phones:
                phone.stop()
            for daemon in daemons:
                daemon.kill()
            itsp.close()
            if pbx is not None:
                pbx.stop()


def follow(daemons: list[Daemon]) -> None:
    """The daemons' new log lines until Ctrl-C."""
    print("The PBX keeps running. New log lines follow; Ctrl-C stops everything.", flush=True)
    seen = {d.name: len(d.text()) for d in daemons}
    try:
        while True:
            for daemon in daemons:
                text = daemon.text()
                show(text[seen[daemon.name]:], indent=f"   {daemon.name}: ")
                seen[daemon.name] = len(text)
            time.sleep(0.5)  # a display refresh, not synchronisation
    except KeyboardInterrupt:
        print("\nstopping", flush=True)


if __name__ == "__main__":
    sys.exit(benchlib.run_main(main))
