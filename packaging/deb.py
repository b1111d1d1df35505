"""`make deb` and `make repo`: the Debian packages, built from the working tree
in a cached sid build tree, and a signed apt repository made of them.

    python3 packaging/deb.py deb  [--dist DIR]    .debs (and lintian's verdict) in dist/
    python3 packaging/deb.py repo [--dist DIR]    dist/ -> dist/repo, signed
    python3 packaging/deb.py tree                 only make sure the build tree exists

The build tree is a debootstrap of sid (tests/testbed/rootfs.py builds and caches
it, once, under a lock) with the build dependencies; it is never written: each
build runs in a private mount namespace with the source copy bound at /build and
tmpfs on /tmp and /root. Nothing but the Debian archive (debootstrap's) is used.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from testbed import rootfs  # noqa: E402  (the one builder of cached trees)

# Bump the name when the list changes: an old cache is rebuilt, not trusted.
BUILD_TREE = "sid-build-v1"
# debootstrap's part (no virtual packages), then apt-get's (testbed.md, "Packages")
BASE_PACKAGES = ("python3", "ca-certificates")
BUILD_PACKAGES = (
    # the build
    "build-essential", "debhelper", "dh-python", "pybuild-plugin-pyproject",
    "python3-all", "python3-setuptools", "lintian",
    # what packaging/manpages.py imports (it runs every command's --help)
    "python3-panoramisk", "python3-waitress", "python3-sdnotify", "python3-cryptography",
    "python3-nftables",
    # make repo
    "apt-utils",
)
MOUNT_POINTS = ("build", "proc", "dev", "tmp", "root")
# The repository's signing key: made once per machine, kept outside the work
# tree (a fresh clone must not make a new key that users' signed-by= rejects).
KEY_DIR = "apt-repo-key-v1"
KEY_UID = "pbxhost apt repository (make repo) <pbxhost@localhost>"
REPO_SUITE = "stable"
REPO_ORIGIN = "pbxhost"


class BuildError(RuntimeError):
    """The build, lintian or the repository failed; the message says which."""


def build_tree() -> Path:
    return rootfs.ensure_tree(BUILD_TREE, BASE_PACKAGES, MOUNT_POINTS, after=_install_build_deps)


def _install_build_deps(tree: Path) -> None:
    """apt-get in the fresh tree: what debootstrap cannot resolve (virtual
    packages: perl-openssl-abi-3, python3-cffi-backend-api-*)."""
    # sid's Release file can be older than this machine's clock (testbed.md)
    (tree / "etc/apt/apt.conf.d/99pbxhost-no-valid-until").write_text(
        'Acquire::Check-Valid-Until "false";\n')
    t = shlex.quote(str(tree))
    script = (f"mount -t proc proc {t}/proc && mount --bind /dev {t}/dev && "
              f"chroot {t} apt-get update -qq && chroot {t} apt-get install -y -qq "
              f"--no-install-recommends {shlex.join(BUILD_PACKAGES)}")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
                          capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if proc.returncode != 0:
        raise rootfs.RootfsError(f"apt-get install in {tree} failed ({proc.returncode}): "
                                 f"{(proc.stdout + proc.stderr)[-2000:]}")


def in_tree(tree: Path, workdir: Path, script: str, *, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run SCRIPT (sh) in the build tree as root, WORKDIR bound at /build; the
    tree itself is not written (tmpfs /tmp and /root, the mounts die with it)."""
    t = shlex.quote(str(tree))
    mounts = "; ".join([
        f"mount --bind {shlex.quote(str(workdir))} {t}/build",
        f"mount -t proc proc {t}/proc",
        f"mount --bind /dev {t}/dev",
        f"mount -t tmpfs tmpfs {t}/tmp",
        f"mount -t tmpfs tmpfs {t}/root",
    ])
    inner = f"cd /build && {script}"
    environ = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C.UTF-8",
               "DEBIAN_FRONTEND": "noninteractive", **(env or {})}
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-ec",
           f"{mounts}; exec chroot {t} sh -ec {shlex.quote(inner)}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=environ, timeout=1800)
    if check and proc.returncode != 0:
        raise BuildError(f"in the build tree: {script!r} exited {proc.returncode}:\n"
                         f"{(proc.stdout + proc.stderr)[-4000:]}")
    return proc


def source_files(root: Path = ROOT) -> list[str]:
    """The working tree as git sees it, uncommitted and untracked files included
    (but not ignored ones, nor files deleted from the working tree)."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "-co", "--exclude-standard"],
                         check=True, capture_output=True).stdout
    return sorted(n for n in out.decode().split("\0") if n and (root / n).is_file())


def stage_source(dest: Path, root: Path = ROOT) -> Path:
    """A build copy of the working tree in DEST/pbxhost, with debian/ from
    packaging/debian/."""
    src = dest / "pbxhost"
    for name in source_files(root):
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    shutil.rmtree(src / "debian", ignore_errors=True)
    shutil.copytree(src / "packaging" / "debian", src / "debian")
    return src


def build(dist: Path, edit: Callable[[Path], None] | None = None) -> list[Path]:
    """The .debs of the working tree in DIST (older .debs there are replaced);
    EDIT changes the build copy first (the tests' next version)."""
    tree = build_tree()
    with tempfile.TemporaryDirectory(prefix="pbxhost-deb-") as tmp:
        work = Path(tmp)
        src = stage_source(work)
        if edit is not None:
            edit(src)
        in_tree(tree, work, "cd pbxhost && dpkg-buildpackage -us -uc -b")
        debs = sorted(work.glob("*.deb"))
        if not debs:
            raise BuildError("dpkg-buildpackage made no .deb")
        changes = next(work.glob("*.changes"))
        # Errors and warnings fail the build (an override, in debian/PKG.lintian-
        # overrides, names its tag, path and reason); info tags go to
        # dist/lintian.txt. As nobody: lintian unpacks what it checks.
        work.chmod(0o755)
        lint = in_tree(tree, work, "setpriv --reuid=nobody --regid=nogroup --clear-groups "
                       "env HOME=/tmp lintian --fail-on error,warning --display-info "
                       f"{changes.name}", check=False)
        report = (lint.stdout + lint.stderr).strip()
        if lint.returncode != 0:
            raise BuildError(f"lintian failed ({lint.returncode}):\n{report}")
        dist.mkdir(parents=True, exist_ok=True)
        for old in dist.glob("*.deb"):
            old.unlink()
        out = []
        for deb in debs:
            shutil.copy2(deb, dist / deb.name)
            out.append(dist / deb.name)
        (dist / "lintian.txt").write_text(report + "\n")
    return out


def _gpg(keydir: Path, *args: str, **kw) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["gpg", "--batch", "--homedir", str(keydir), *args],
                          check=True, capture_output=True, **kw)


def signing_key() -> tuple[Path, str]:
    """(gpg home, fingerprint) of the repository's signing key: the first secret
    key of $PBXHOST_REPO_GNUPGHOME (a publisher's own key), else of a gpg home
    in the test bed's cache, where a key is made on first use."""
    custom = os.environ.get("PBXHOST_REPO_GNUPGHOME")
    keydir = Path(custom) if custom else rootfs.cache_dir() / KEY_DIR
    keydir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fprs = _secret_keys(keydir)
    if not fprs and not custom:
        _gpg(keydir, "--passphrase", "", "--quick-generate-key", KEY_UID, "ed25519",
             "sign", "never")
        fprs = _secret_keys(keydir)
    if not fprs:
        raise BuildError(f"no secret key in {keydir} ($PBXHOST_REPO_GNUPGHOME)")
    return keydir, fprs[0]


def _secret_keys(keydir: Path) -> list[str]:
    listing = subprocess.run(["gpg", "--batch", "--homedir", str(keydir), "--with-colons",
                              "--list-secret-keys"], capture_output=True, text=True).stdout
    # the first fpr after each sec line is the primary key's
    fprs, want = [], False
    for line in listing.splitlines():
        kind = line.split(":", 1)[0]
        if kind == "sec":
            want = True
        elif kind == "fpr" and want:
            fprs.append(line.split(":")[9])
            want = False
    return fprs


def make_repo(dist: Path, repo: Path | None = None) -> Path:
    """DIST's .debs as an apt repository (suite stable, component main) in DIST/repo:
    pool/, dists/stable/main/binary-all/Packages, Release, InRelease, Release.gpg
    and pbxhost-archive-keyring.gpg (the public key, for signed-by=)."""
    debs = sorted(dist.glob("*.deb"))
    if not debs:
        raise BuildError(f"no .deb in {dist}: run `make deb` first")
    repo = repo or dist / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    pool = repo / "pool" / "main"
    pool.mkdir(parents=True)
    for deb in debs:
        shutil.copy2(deb, pool / deb.name)
    binary = repo / "dists" / REPO_SUITE / "main" / "binary-all"
    binary.mkdir(parents=True)
    tree = build_tree()
    packages = binary.relative_to(repo) / "Packages"
    in_tree(tree, repo, f"apt-ftparchive packages pool > {packages} && gzip -9nk {packages}")
    release_opts = " ".join(f"-o APT::FTPArchive::Release::{k}={shlex.quote(v)}" for k, v in {
        "Origin": REPO_ORIGIN, "Label": REPO_ORIGIN, "Suite": REPO_SUITE,
        "Codename": REPO_SUITE, "Architectures": "all", "Components": "main",
        "Description": "pbxhost packages (make repo)"}.items())
    in_tree(tree, repo, f"apt-ftparchive {release_opts} release dists/{REPO_SUITE}"
            f" > /tmp/Release && mv /tmp/Release dists/{REPO_SUITE}/Release")
    keydir, fpr = signing_key()
    release = repo / "dists" / REPO_SUITE / "Release"
    _gpg(keydir, "--yes", "--local-user", fpr, "--clearsign", "-o",
         str(release.with_name("InRelease")), str(release))
    _gpg(keydir, "--yes", "--local-user", fpr, "--detach-sign", "-o",
         str(release.with_name("Release.gpg")), str(release))
    _gpg(keydir, "--yes", "--export", "-o", str(repo / "pbxhost-archive-keyring.gpg"), fpr)
    return repo


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="packaging/deb.py", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("deb", "repo", "tree"))
    p.add_argument("--dist", type=Path, default=ROOT / "dist")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("needs root (debootstrap, chroot, mount namespaces)")
    try:
        if args.what == "tree":
            print(build_tree())
        elif args.what == "deb":
            for deb in build(args.dist):
                print(deb)
            print(f"lintian: clean ({args.dist / 'lintian.txt'})")
        else:
            repo = make_repo(args.dist)
            print(f"{repo}: signed apt repository (key {repo / 'pbxhost-archive-keyring.gpg'})")
    except (BuildError, rootfs.RootfsError, subprocess.CalledProcessError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        print(f"{p.prog} {args.what}: {exc} {err.decode(errors='replace')}".rstrip(),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
