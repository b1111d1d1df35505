"""`autoban`: show and edit autoban's nftables sets.

    autoban [show]                         overview of every set
    autoban list SET...                    the elements of some sets
    autoban add DSET... = SSET|ADDR...     e.g. add blacklist = 77.247.110.24 jail
    autoban del DSET... = SSET|ADDR...     e.g. del all = 45.143.220.72
    autoban help
`all` means every set. Changes are one atomic kernel transaction: a bad
address or set name changes nothing (exit status 2)."""

from __future__ import annotations

import json
import sys
import time
from typing import NoReturn

from pbxhost import cli, conf
from pbxhost.autoban import config, policy, state
from pbxhost.autoban.daemon import human
from pbxhost.autoban.firewall import SETS, Delete, Element, Firewall, FirewallError, Put, family

PROG = "autoban"
VERBS = ("show", "list", "add", "del", "help")


class UsageError(ValueError):
    pass


def parse(words: list[str]) -> tuple[str, list[str], list[str]]:
    """words → (verb, destination sets, sources); sources keep their order."""
    verb, rest = (words[0], words[1:]) if words else ("show", [])
    if verb not in VERBS:
        raise UsageError(f"unknown command {verb!r} (one of {', '.join(VERBS)})")
    if verb in ("show", "help"):
        if rest:
            raise UsageError(f"{verb} takes no arguments")
        return verb, [], []
    if verb == "list":
        return verb, expand_sets(rest or ["all"]), []
    if rest.count("=") != 1:
        raise UsageError(f"usage: autoban {verb} DSET... = SSET|ADDR...")
    split = rest.index("=")
    dsets, sources = rest[:split], rest[split + 1:]
    if not dsets or not sources:
        raise UsageError(f"usage: autoban {verb} DSET... = SSET|ADDR...")
    for source in sources:
        if source not in SETS and source != "all":
            try:
                family(source)
            except ValueError:
                raise UsageError(f"{source!r} is neither a set nor an address") from None
    return verb, expand_sets(dsets), sources


def expand_sets(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        if name not in (*SETS, "all"):
            raise UsageError(f"unknown set {name!r} (sets: {', '.join(SETS)}, all)")
        out += [s for s in (SETS if name == "all" else (name,)) if s not in out]
    return out


def resolve(fw: Firewall, sources: list[str]) -> list[str]:
    """Set names become their addresses; addresses stay as written."""
    addrs: list[str] = []
    for source in sources:
        if source in SETS or source == "all":
            # a proven element's address ("192.0.2.9 udp 5060" → 192.0.2.9)
            addrs += [e.addr.split()[0] for e in fw.elements(expand_sets([source]))]
        else:
            addrs.append(source)
    return list(dict.fromkeys(addrs))


def puts_for(dset: str, addr: str, cfg: config.AutobanConfig, now: int) -> list[Put]:
    """What adding ADDR to DSET by hand means, consistent with the daemon."""
    p = cfg.policy
    if dset == "watch":
        return [Put("watch", addr, p.watchtime, policy.encode_times((now,)))]
    if dset in ("jail", "sipjail"):
        note = policy.encode_sentence(p.jailtime)
        return [Put(dset, addr, p.jailtime, note),
                Put("parole", addr, p.jailtime + p.watchtime, note)]
    if dset == "proven":
        return []  # only a successful login proves an address and port
    if dset == "parole":
        return [Put("parole", addr, p.watchtime, policy.encode_sentence(p.jailtime))]
    if dset == "trust":
        return [Put("trust", addr, cfg.trusttime or p.watchtime)]
    return [Put(dset, addr)]


def describe(e: Element) -> str:
    parts = [e.addr]
    if e.expires is not None:
        parts.append(f"expires in {human(e.expires)}")
    if (sentence := policy.decode_sentence(e.comment)) is not None:
        parts.append(f"sentence {human(sentence)}")
    if times := policy.decode_times(e.comment):
        parts.append(f"{len(times)} events")
    return ", ".join(parts)


def show(elements: list[Element], sets: list[str], counters: dict[str, int] | None) -> str:
    lines = []
    for name in sets:
        members = [e for e in elements if e.set == name]
        head = f"{name} ({len(members)})"
        if counters is not None and name in ("jail", "sipjail", "blacklist"):
            head += f", {counters.get(name + '4', 0) + counters.get(name + '6', 0)} packets dropped"
        lines.append(head + ":")
        lines += [f"  {describe(e)}" for e in members]
    return "\n".join(lines)


def usage_error(message: str) -> NoReturn:
    cli.fail(PROG, f"error: {message} (see autoban help)", cli.USAGE_EXIT)


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(PROG, "Show and edit autoban's nftables sets "
                   f"({', '.join(SETS)}; 'all' means every set).", "autoban.conf")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("words", nargs="*", metavar="COMMAND",
                   help="show | list SET... | add DSET... = SSET|ADDR... | "
                        "del DSET... = SSET|ADDR... | help")
    args = p.parse_args(argv)
    try:
        verb, dsets, sources = parse(args.words)
    except UsageError as exc:
        usage_error(str(exc))
    if verb == "help":
        print(__doc__)
        return 0
    try:
        cfg = config.load(cli.find_config("autoban.conf", args.config))
    except conf.ConfigError as exc:
        cli.fail(PROG, str(exc))
    fw = Firewall(cfg.table, prefix6=cfg.prefix6)
    try:
        if not fw.exists():
            cli.fail(PROG, f"table inet {cfg.table} does not exist (is autoband running?)")
        if verb in ("show", "list"):
            sets = list(SETS) if verb == "show" else dsets
            elements = fw.elements(sets)
            if args.json:
                print(json.dumps([e._asdict() for e in elements], indent=1))
            else:
                print(show(elements, sets, fw.counters()))
            return 0
        addrs = resolve(fw, sources)
        now = int(time.time())
        ops: list[Put | Delete] = []
        for dset in dsets:
            for addr in addrs:
                ops += puts_for(dset, addr, cfg, now) if verb == "add" else [Delete(dset, addr)]
        fw.apply(ops)
    except ValueError as exc:
        usage_error(str(exc))
    except FirewallError as exc:
        cli.fail(PROG, str(exc))
    try:
        # the daemon's records (autoban.conf's entries, trunk addresses) are kept as they are
        before = state.records(cfg.statefile)
        state.save(cfg.statefile, fw.iter_elements(), config=before.config,
                   trunks=before.trunks)
    except OSError as exc:
        print(f"{PROG}: warning: state file not written: {exc}", file=sys.stderr)
    print(f"{verb}: {len(ops)} change(s) in {', '.join(dsets)}")
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
