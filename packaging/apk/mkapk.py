"""`make apk`: pbxhost's .apk packages for Alpine, written without Alpine's tools.

Usage: python3 packaging/apk/mkapk.py [--out dist] [--key PRIVKEY]
                                      [--pyc-python PY3.14 | --pyc-root TREE]

The files are `make install-data` with Alpine's paths (no systemd units,
sysusers.d or tmpfiles.d; the OpenRC scripts instead; the plain AGI script in
Alpine's agi-bin), plus the Python package installed from its wheel for
Alpine's python3. They are split into the packages below, the same split as
packaging/apk/APKBUILD (a unit test holds the two together), and each package
is written by apkv2.py and signed with an RSA key: --key, or one made once
and kept in ~/.cache/pbxhost/apk-key (outside the tree). The public key is
copied to the output directory under the name /etc/apk/keys needs.

Bytecode (py3-pbxhost-pyc) must come from Alpine's Python version: from
--pyc-python (a python3.14), or, as root, from the python3.14 of a Debian sid
tree (--pyc-root; the test bed's OpenRC tree). Without either, that package
is left out and the run says so."""

from __future__ import annotations

import argparse
import base64
import configparser
import csv
import fnmatch
import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import apkv2

ROOT = Path(__file__).resolve().parents[2]
OPENRC = Path(__file__).resolve().parent / "openrc"

# Alpine 3.24 (docs/alpine.md)
PYTHON_VERSION = "3.14"
SITE = f"usr/lib/python{PYTHON_VERSION}/site-packages"
AGI_DIR = "var/lib/asterisk/agi-bin"  # Alpine's astdatadir is /var/lib/asterisk
PKGREL = 0
URL = "file:///usr/share/doc/pbxhost/README.md"  # no public home yet
LICENSE = "MIT"
PACKAGER = "pbxhost make apk"

# What install-data writes that Alpine does not want, and what moves.
DROPPED = ("usr/lib/systemd", "usr/lib/sysusers.d", "usr/lib/tmpfiles.d")
MOVED = {"usr/share/asterisk/agi-bin": AGI_DIR}

# Directories other packages own, as those packages have them: the asterisk
# package makes var/*/asterisk asterisk:asterisk; ours must not change that.
DIR_OWNERS = {"var/lib/asterisk": ("asterisk", "asterisk"),
              AGI_DIR: ("asterisk", "asterisk")}

# The OpenRC files: (source in packaging/apk/openrc, installed path, mode);
# a None source is a symlink to the asterisk package's script.
OPENRC_FILES = (
    ("autoban.initd", "etc/init.d/autoban", 0o755),
    ("autoban.confd", "etc/conf.d/autoban", 0o644),
    ("websmsd.initd", "etc/init.d/websmsd", 0o755),
    ("websmsd.confd", "etc/conf.d/websmsd", 0o644),
    ("pbxhost-seed.initd", "etc/init.d/pbxhost-seed", 0o755),
    ("pbxhost-seed.confd", "etc/conf.d/pbxhost-seed", 0o644),
    ("minivm-send-retry.initd", "etc/init.d/minivm-send-retry", 0o755),
    ("minivm-send-retry.confd", "etc/conf.d/minivm-send-retry", 0o644),
    ("minivm-send-retry", "usr/libexec/pbxhost/minivm-send-retry", 0o755),
    ("asterisk.pbxhost.confd", "etc/conf.d/asterisk.pbxhost", 0o644),
    (None, "etc/init.d/asterisk.pbxhost", 0o777),
)

# The install script, shared with APKBUILD (its install=)
WEBSMS_PRE_INSTALL = (Path(__file__).resolve().parent / "pbxhost-websms.pre-install").read_text()


@dataclass(frozen=True)
class Package:
    """One .apk: its files are the staged files matching PATTERNS (fnmatch on
    the path) that no package listed before it took."""

    name: str
    desc: str
    patterns: tuple[str, ...]
    depends: tuple[str, ...] = ()
    install_if: tuple[str, ...] = ()
    pre_install: str = ""


def _ver() -> str:
    return f"{version()}-r{PKGREL}"


def packages() -> list[Package]:
    """The split (docs/alpine.md), most specific first; APKBUILD has the same."""
    v = _ver()
    return [
        Package("py3-pbxhost-pyc", "Precompiled Python bytecode for py3-pbxhost",
                (f"{SITE}/*/__pycache__/*",), install_if=(f"py3-pbxhost={v}", "pyc")),
        Package("pbxhost-autoban-openrc", "autoban (OpenRC init scripts)",
                ("etc/init.d/autoban", "etc/conf.d/autoban"),
                install_if=("openrc", f"pbxhost-autoban={v}")),
        Package("pbxhost-websms-openrc", "websms (OpenRC init scripts)",
                ("etc/init.d/websmsd", "etc/conf.d/websmsd"),
                install_if=("openrc", f"pbxhost-websms={v}")),
        Package("pbxhost-openrc", "pbxhost (OpenRC init scripts)",
                ("etc/init.d/*", "etc/conf.d/*", "usr/libexec/pbxhost/*"),
                install_if=("openrc", f"pbxhost={v}")),
        Package("pbxhost-doc", "pbxhost (documentation)",
                ("usr/share/doc/*", "usr/share/man/*"),
                install_if=("docs", f"pbxhost={v}")),
        Package("pbxhost-autoban",
                "autoban: jail addresses that attack Asterisk (AMI security events to nftables)",
                ("usr/bin/autoban", "usr/bin/autoband"),
                depends=(f"py3-pbxhost={v}", "nftables", "py3-nftables", "iproute2")),
        Package("pbxhost-websms",
                "websms: SMS between SIP phones and an ITSP's HTTP API",
                ("usr/bin/websms", "usr/bin/websmsd", f"{AGI_DIR}/websms"),
                depends=(f"py3-pbxhost={v}", "py3-waitress", "py3-cryptography"),
                pre_install=WEBSMS_PRE_INSTALL),
        Package("py3-pbxhost", "pbxhost's Python package (AMI client, autoban, websms)",
                (f"{SITE}/*",), depends=("py3-panoramisk",)),
        Package("pbxhost",
                "A small secure PBX: Asterisk 22, its configuration suite and seeding",
                ("usr/bin/pbxhost", "usr/bin/minivm-send", "usr/share/pbxhost/*"),
                depends=(f"py3-pbxhost={v}", "asterisk", "asterisk-srtp",
                         "asterisk-sounds-en")),
    ]


def version() -> str:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg["metadata"]["version"]


# ---------------------------------------------------------------- staging

def stage_install_data(root: Path) -> None:
    """`make install-data` into ROOT, then Alpine's paths."""
    subprocess.run(["make", "-s", "-C", str(ROOT), "install-data", f"DESTDIR={root}",
                    "PREFIX=/usr"], check=True, stdout=subprocess.DEVNULL)
    for rel in DROPPED:
        shutil.rmtree(root / rel)
    for src, dst in MOVED.items():
        (root / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(root / src, root / dst)
        _prune_empty(root, (root / src).parent)
    # man pages gzipped, as abuild's default_doc does for the -doc package
    for page in sorted((root / "usr/share/man").rglob("*.[0-9]")):
        page.with_name(page.name + ".gz").write_bytes(apkv2.gz(page.read_bytes()))
        page.with_name(page.name + ".gz").chmod(0o644)
        page.unlink()


def _prune_empty(root: Path, path: Path) -> None:
    while path != root and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        path = path.parent


def stage_openrc(root: Path) -> None:
    for src, dst, mode in OPENRC_FILES:
        target = root / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        if src is None:
            target.symlink_to("asterisk")
        else:
            shutil.copyfile(OPENRC / src, target)
            target.chmod(mode)


def build_wheel(workdir: Path) -> Path:
    """The project's wheel, built from a copy (the tree keeps no build/)."""
    src = workdir / "src"
    for rel in ("pbxhost", "etc/asterisk"):
        shutil.copytree(ROOT / rel, src / rel, ignore=shutil.ignore_patterns("__pycache__"))
    for rel in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / rel, src / rel)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "--disable-pip-version-check",
                    "-w", str(workdir / "wheel"), str(src)], check=True)
    return next((workdir / "wheel").glob("*.whl"))


def install_wheel(wheel: Path, root: Path) -> None:
    """What `python3 -m installer -d ROOT` does on Alpine, for a pure wheel:
    the package into Alpine's site-packages, .data/data under /usr, a script
    per console entry point for /usr/bin/python3, and a RECORD of it all."""
    site = root / SITE
    written: list[Path] = []
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        distinfo = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        data_dir = distinfo.removesuffix(".dist-info") + ".data"
        for name in names:
            if name.endswith("/") or name == f"{distinfo}/RECORD":
                continue
            parts = name.split("/")
            if parts[0] == data_dir:
                if parts[1] != "data":
                    raise RuntimeError(f"{wheel.name}: {name}: only .data/data is handled")
                target = root / "usr" / "/".join(parts[2:])
            else:
                target = site / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(whl.read(name))
            target.chmod(0o644)
            written.append(target)
        entry_points = whl.read(f"{distinfo}/entry_points.txt").decode()
    cfg = configparser.ConfigParser()
    cfg.read_string(entry_points)
    for command, spec in cfg["console_scripts"].items():
        module, func = (part.strip() for part in spec.split(":"))
        script = root / "usr/bin" / command
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text("#!/usr/bin/python3\nimport sys\n"
                          f"from {module} import {func}\n"
                          f"if __name__ == '__main__':\n    sys.exit({func}())\n")
        script.chmod(0o755)
        written.append(script)
    (site / distinfo / "INSTALLER").write_text("pbxhost-mkapk\n")
    written.append(site / distinfo / "INSTALLER")
    rows = [[os.path.relpath(path, site), _record_hash(path.read_bytes()),
             str(path.stat().st_size)] for path in written]
    rows.append([f"{distinfo}/RECORD", "", ""])
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    (site / distinfo / "RECORD").write_text(out.getvalue())


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def compile_pyc(root: Path, python: str | None, tree: Path | None) -> bool:
    """Bytecode for Alpine's Python into __pycache__ beside the sources
    (checked-hash pycs: valid whatever mtimes the files get)."""
    site = root / SITE
    args = ["-m", "compileall", "-q", "--invalidation-mode", "checked-hash", "-o", "0", "-o", "1"]
    if python:
        got = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
        if got != PYTHON_VERSION:
            raise SystemExit(f"mkapk: --pyc-python {python} is Python {got}, "
                             f"Alpine's is {PYTHON_VERSION}")
        subprocess.run([python, *args, "-s", str(site), "-p", f"/{SITE}", str(site)], check=True)
        return True
    if tree:
        # python3.14 of a Debian sid tree, on the staged files bound at its /mnt
        inner = f"python{PYTHON_VERSION} " + " ".join(args) + f" -s /mnt -p /{SITE} /mnt"
        subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec",
                        f'mount --bind "$1" "$2/mnt"; exec chroot "$2" {inner}', "sh",
                        str(site), str(tree)], check=True)
        return True
    return False


# ---------------------------------------------------------------- split

def staged_paths(root: Path) -> list[str]:
    """Every file and symlink under ROOT, relative, sorted (no directories)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in filenames + [d for d in dirnames if (base / d).is_symlink()]:
            found.append((base / name).relative_to(root).as_posix())
    return sorted(found)


def split(paths: list[str], pkgs: list[Package]) -> dict[str, list[str]]:
    """PATHS by package: the first package with a matching pattern takes a
    path; a path no package takes is an error, not a file left out."""
    owned: dict[str, list[str]] = {pkg.name: [] for pkg in pkgs}
    for path in paths:
        owner = next((pkg.name for pkg in pkgs
                      if any(fnmatch.fnmatchcase(path, pat) for pat in pkg.patterns)), None)
        if owner is None:
            raise SystemExit(f"mkapk: {path}: no package takes it (mkapk.packages())")
        owned[owner].append(path)
    return owned


def entries(root: Path, paths: list[str]) -> list[apkv2.Entry]:
    """PATHS and their parent directories, sorted (abuild sorts the same way)."""
    dirs = {str(Path(p).parents[i]) for p in paths for i in range(len(Path(p).parents) - 1)}
    out = []
    for name in sorted(dirs | set(paths)):
        path = root / name
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            out.append(apkv2.Entry(name, "symlink", 0o777, target=os.readlink(path)))
        elif stat.S_ISDIR(st.st_mode):
            owner, group = DIR_OWNERS.get(name, ("root", "root"))
            out.append(apkv2.Entry(name, "dir", 0o755, owner=owner, group=group))
        else:
            out.append(apkv2.Entry(name, "file", stat.S_IMODE(st.st_mode), path.read_bytes()))
    return out


def added_depends(pkg: Package) -> list[str]:
    """What abuild adds to the declared depends: /bin/sh for a #!/bin/sh
    install script (prepare_metafiles)."""
    return ["/bin/sh"] if pkg.pre_install.startswith("#!/bin/sh") else []


def traced_depends(paths: list[str]) -> list[str]:
    """What abuild detects from the files: python3~X.Y for modules in
    site-packages (scan_python3_dependency)."""
    return [f"python3~{PYTHON_VERSION}"] if any(p.startswith(f"{SITE}/") for p in paths) else []


# ---------------------------------------------------------------- keys

def default_key() -> Path:
    """The build's own key, made once and kept outside the tree."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    keydir = cache / "pbxhost" / "apk-key"
    found = sorted(keydir.glob("*.rsa"))
    if found:
        return found[0]
    keydir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # abuild-keygen's naming: NAME-<hex seconds>.rsa, the public key NAME.rsa.pub
    key = keydir / f"pbxhost-{int(time.time()):x}.rsa"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "4096"], check=True,
                   capture_output=True)
    return key


def public_key(privkey: Path) -> Path:
    """PRIVKEY.pub, derived when missing; its file name is the key's name."""
    pub = privkey.with_name(privkey.name + ".pub")
    if not pub.exists():
        subprocess.run(["openssl", "rsa", "-in", str(privkey), "-pubout", "-out", str(pub)],
                       check=True, capture_output=True)
    return pub


# ---------------------------------------------------------------- main

def source_date() -> int:
    """The last commit's time (abuild's SOURCE_DATE_EPOCH); now outside git."""
    if os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        return int(os.environ["SOURCE_DATE_EPOCH"])
    proc = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%ct"],
                          capture_output=True, text=True, check=False)
    return int(proc.stdout.strip()) if proc.stdout.strip().isdigit() else int(time.time())


def commit() -> str:
    proc = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() or "unknown"


def stage(root: Path, workdir: Path) -> None:
    """Everything the packages hold, under ROOT, with Alpine's paths."""
    stage_install_data(root)
    stage_openrc(root)
    install_wheel(build_wheel(workdir), root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mkapk.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    parser.add_argument("--key", type=Path, help="RSA private key (PEM); public: KEY.pub")
    parser.add_argument("--pyc-python", help=f"a python{PYTHON_VERSION} for the bytecode")
    parser.add_argument("--pyc-root", type=Path, help="a sid tree with python"
                        f"{PYTHON_VERSION} for the bytecode (root)")
    parser.add_argument("--stage", type=Path, help="keep the staged tree here")
    args = parser.parse_args(argv)

    if args.key and not args.key.is_file():
        parser.error(f"--key {args.key}: no such file")
    privkey = args.key or default_key()
    try:
        pubkey = public_key(privkey)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"mkapk: {privkey}: not an RSA private key (openssl: "
                         f"{exc.stderr.decode(errors='replace').strip()})") from None
    mtime, ver = source_date(), _ver()
    with tempfile.TemporaryDirectory(prefix="mkapk-") as tmp:
        root = args.stage or Path(tmp) / "root"
        if root.exists() and any(root.iterdir()):
            parser.error(f"--stage {root}: not empty")
        stage(root, Path(tmp))
        pkgs = packages()
        if not compile_pyc(root, args.pyc_python, args.pyc_root):
            print("mkapk: py3-pbxhost-pyc left out: no Python "
                  f"{PYTHON_VERSION} (--pyc-python or --pyc-root)", file=sys.stderr)
            pkgs = [pkg for pkg in pkgs if pkg.name != "py3-pbxhost-pyc"]
        owned = split(staged_paths(root), pkgs)
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pubkey, args.out / pubkey.name)
        for pkg in pkgs:
            paths = owned[pkg.name]
            if not paths:
                raise SystemExit(f"mkapk: {pkg.name} would be empty")
            members = entries(root, paths)
            size = sum(len(e.data) for e in members if e.kind == "file") or 1
            info = apkv2.PkgInfo(
                pkgname=pkg.name, pkgver=ver, pkgdesc=pkg.desc, url=URL, builddate=mtime,
                packager=PACKAGER, size=size, arch="noarch", origin="pbxhost",
                commit=commit(), license=LICENSE, depends=[*pkg.depends, *added_depends(pkg)],
                traced=traced_depends(paths),
                install_if=list(pkg.install_if))
            scripts = {".pre-install": pkg.pre_install.encode()} if pkg.pre_install else {}
            try:
                apk = apkv2.build(info, members, scripts, privkey, pubkey.name, mtime)
            except RuntimeError as exc:
                raise SystemExit(f"mkapk: {exc}") from None
            target = args.out / f"{pkg.name}-{ver}.apk"
            target.write_bytes(apk)
            print(f"{target}: {len(paths)} files, {len(apk)} bytes")
        print(f"signed with {privkey}; public key: {args.out / pubkey.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
