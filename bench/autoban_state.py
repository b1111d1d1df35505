"""The state file with many elements: save and restore time, peak memory.

In a private network namespace, autoban's table is filled (with `nft -f`, the
fast way) with N elements (default 100 000): 40 % watch (a full maxcount
window in each comment), 30 % jail and 30 % parole, IPv4 and IPv6. Then, each
in a fresh Python process as the daemon would do it:

- save: `state.save` of `Firewall.elements()` (what autoband does at most
  twice a second after a change);
- restore: the table deleted (a reboot), then `Autoban.ensure_table` refills
  it from the file in batches, as at boot, and autoband's copy of the sets
  (`Firewall(follow=True)`) is loaded by a first lookup: the daemon's peak;
- mirror: that copy alone, loaded from the full table: what autoband holds
  in memory for it while it runs.

Each process reports its wall time and its peak RSS (VmHWM). The peer in the
same run is nftables' own dump, `nft -j list table inet autoban > file`, timed
the same way. Run as root: `.venv/bin/python bench/autoban_state.py`."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import tempfile
import time
from pathlib import Path

import benchlib  # first: puts tests/ (testbed) and the repository on sys.path

from testbed.netns import Network, sweep_stale

MEASURE = r"""
import json, logging, resource, sys, time
from pathlib import Path
from pbxhost.autoban import config, state
from pbxhost.autoban.daemon import Autoban
from pbxhost.autoban.firewall import Firewall
what, path = sys.argv[1], Path(sys.argv[2])
logging.disable(logging.CRITICAL)
fw = Firewall(follow=what != "save")
start = time.perf_counter()
if what == "save":
    state.save(path, fw.iter_elements(), config={"whitelist": [], "blacklist": []})
elif what == "mirror":
    fw.lookup_many(["192.0.2.1"])
else:
    cfg = config.AutobanConfig(path=Path("x"), enabled=True, statefile=path)
    Autoban(cfg, fw, exempt=[]).ensure_table()
    fw.lookup_many(["192.0.2.1"])
took = time.perf_counter() - start
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": took, "hwm_mb": hwm / 1024,
                  "elements": len(fw.elements())}))
"""


def fill_script(n: int, maxcount: int) -> str:
    """An nft script: the table as autoband builds it, then N elements."""
    from pbxhost.autoban.firewall import Firewall

    lines = [Firewall()._skeleton()]  # the daemon's own table text
    now = int(time.time())
    window = "events " + " ".join([str(now - 600)] + ["+10"] * (maxcount - 1))
    shares = (("watch", 0.4, window, 1200), ("jail", 0.3, "sentence 7200", 7200),
              ("parole", 0.3, "sentence 7200", 8400))
    base4 = int(ipaddress.IPv4Address("198.18.0.0"))
    base6 = int(ipaddress.IPv6Address("2001:db8::"))
    for name, share, comment, timeout in shares:
        count = int(n * share)
        for fam in ("4", "6"):
            half = count // 2
            addrs = [str(ipaddress.IPv4Address(base4 + i)) if fam == "4"
                     else str(ipaddress.IPv6Address(base6 + (i << 64))) for i in range(half)]
            for i in range(0, half, 1000):
                elems = ", ".join(f'{a} timeout {timeout}s comment "{comment}"'
                                  for a in addrs[i:i + 1000])
                lines.append(f"add element inet autoban {name}{fam} {{ {elems} }}")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--elements", type=int, default=100_000)
    p.add_argument("--maxcount", type=int, default=10)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    benchlib.require(["nft", "ip"], "apt-get install nftables iproute2")
    benchlib.sigterm_raises()
    sweep_stale()
    with Network() as net, tempfile.TemporaryDirectory(prefix="autoban-state-") as tmp:
        host = net.host("pbx", 10)
        script, path = Path(tmp) / "fill.nft", Path(tmp) / "state.json"
        script.write_text(fill_script(args.elements, args.maxcount))
        host.run("nft", "-f", str(script))
        env = {"PYTHONPATH": str(benchlib.ROOT), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

        def measure(what: str) -> dict:
            out = host.run(sys.executable, "-c", MEASURE, what, str(path), env=env).stdout
            return json.loads(out)

        rows = []
        for _ in range(args.runs):
            start = time.perf_counter()
            dump = host.run("nft", "-j", "list", "table", "inet", "autoban").stdout
            peer = time.perf_counter() - start
            saved = measure("save")
            host.run("nft", "delete", "table", "inet", "autoban")
            restored = measure("restore")
            rows.append((saved, restored, peer, len(dump), measure("mirror")))
        size = path.stat().st_size
    print(f"autoban state file, {args.elements} elements ({rows[0][1]['elements']} restored), "
          f"{args.runs} runs, file {size / 1e6:.1f} MB")
    print(f"{'what':<34}{'seconds (median)':>18}{'peak RSS MB (max)':>20}")
    for label, key in (("state.save (autoband)", 0), ("restore + mirror (autoband boot)", 1),
                       ("mirror loaded (autoband)", 4)):
        secs = sorted(r[key]["seconds"] for r in rows)
        hwm = max(r[key]["hwm_mb"] for r in rows)
        print(f"{label:<34}{secs[len(secs) // 2]:>18.3f}{hwm:>20.1f}")
    peers = sorted(r[2] for r in rows)
    print(f"{'nft -j list table (peer)':<34}{peers[len(peers) // 2]:>18.3f}{'-':>20}")
    save = sorted(r[0]["seconds"] for r in rows)[len(rows) // 2]
    print(f"state.save / nft's own listing: {save / peers[len(peers) // 2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(benchlib.run_main(main))
