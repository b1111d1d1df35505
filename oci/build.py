"""`make oci`: the pbxhost images (mini, base, full, xtra; latest = full) built
by podman from oci/Containerfile on a base image made by debootstrap.

    python3 oci/build.py [--variants mini,base] [--debs DIR]

The base image: a debootstrap of sid with systemd (tests/testbed/rootfs.py
builds and caches the tree once), imported into podman once (`podman import`;
no registry is reachable). The .debs: `make deb`'s build (packaging/deb.py)
unless --debs gives a directory that holds them. Prints each image's size and
the time taken.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "packaging"))

import deb  # noqa: E402  (packaging/deb.py: the .debs)

from testbed import rootfs  # noqa: E402  (the one builder of cached trees)

# Bump both when the package list changes: an old cache is rebuilt, not trusted.
BASE_TREE = "oci-base-sid-v1"
BASE_IMAGE = "localhost/pbxhost-base:sid-v1"
BASE_PACKAGES = ("systemd", "systemd-sysv", "ca-certificates")
VARIANTS = ("mini", "base", "full", "xtra")
LATEST = "full"
REPO = "localhost/pbxhost"
# podman 4.3 on this kind of host (testbed.md): crun fails on hybrid cgroups
# and on raising limits
PODMAN_BUILD = ("podman", "build", "--runtime", "runc", "--format", "docker",
                "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")


class OciError(RuntimeError):
    """A step of the image build failed; the message says which."""


def podman(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise OciError(f"podman {' '.join(args[:3])}: exit {proc.returncode}: "
                       f"{(proc.stdout + proc.stderr)[-3000:]}")
    return proc


def _prepare_base(tree: Path) -> None:
    # the container manager writes these; an image carries none of the build host's
    for name in ("etc/hostname", "etc/machine-id"):
        (tree / name).unlink(missing_ok=True)
    (tree / "etc/machine-id").touch()  # empty: systemd makes one at each boot


def base_image() -> str:
    """The base image, imported from the cached debootstrap tree when missing."""
    with _lock("oci-base-image"):
        if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
            return BASE_IMAGE
        tree = rootfs.ensure_tree(BASE_TREE, BASE_PACKAGES, after=_prepare_base)
        tar = subprocess.Popen(["tar", "-C", str(tree), "--exclude=./.pbxhost-complete",
                                "-c", "."], stdout=subprocess.PIPE)
        podman("import", "--change", "CMD /sbin/init", "-", BASE_IMAGE, stdin=tar.stdout)
        if tar.wait() != 0:
            raise OciError(f"tar of {tree} failed")
    return BASE_IMAGE


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """One builder at a time (make oci and a test run may race)."""
    cache = rootfs.cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def context(work: Path, debs: Path | None) -> Path:
    """The build context: Containerfile, the generator and the .debs."""
    ctx = work / "context"
    (ctx / "debs").mkdir(parents=True)
    for name in ("Containerfile", "pbxhost-container-env"):
        shutil.copy2(HERE / name, ctx / name)
    if debs is None:
        debs = work / "dist"
        deb.build(debs)
    found = sorted(debs.glob("*.deb"))
    if not {p.name.split("_")[0] for p in found} >= {"pbxhost", "python3-pbxhost",
                                                    "pbxhost-autoban", "pbxhost-websms"}:
        raise OciError(f"{debs} lacks some of the four .debs: {[p.name for p in found]}")
    for path in found:
        shutil.copy2(path, ctx / "debs" / path.name)
    return ctx


def build(variants: tuple[str, ...] = VARIANTS, debs: Path | None = None) -> dict[str, str]:
    """Build VARIANTS (tagged REPO:variant; REPO:latest = full), return their tags."""
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise OciError(f"no such variant: {', '.join(sorted(unknown))} (have {VARIANTS})")
    base = base_image()
    tags = {}
    with tempfile.TemporaryDirectory(prefix="pbxhost-oci-") as tmp, _lock("oci-build"):
        ctx = context(Path(tmp), debs)
        for variant in VARIANTS[:max(VARIANTS.index(v) for v in variants) + 1]:
            if variant not in variants:
                continue  # its layers are built anyway as the next one's stages
            tag = f"{REPO}:{variant}"
            proc = subprocess.run([*PODMAN_BUILD, "--build-arg", f"BASE={base}", "--target",
                                   variant, "-t", tag, "-f", str(ctx / "Containerfile"), str(ctx)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise OciError(f"podman build --target {variant}: exit {proc.returncode}: "
                               f"{(proc.stdout + proc.stderr)[-4000:]}")
            tags[variant] = tag
        if LATEST in tags:
            podman("tag", tags[LATEST], f"{REPO}:latest")
        # the previous build's layers, now untagged and nobody's parent (the
        # shared ones, the archive's layer among them, are parents and stay)
        podman("image", "prune", "--force", check=False)
    return tags


def size(tag: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated, of " + ", ".join(VARIANTS))
    p.add_argument("--debs", type=Path, help="a directory with the .debs (default: build them)")
    args = p.parse_args(argv)
    started = time.monotonic()
    try:
        tags = build(tuple(v for v in args.variants.split(",") if v), args.debs)
    except (OciError, deb.BuildError, rootfs.RootfsError) as exc:
        print(f"make oci: {exc}", file=sys.stderr)
        return 1
    for tag in tags.values():
        print(f"{tag:24} {size(tag) / 1e6:7.0f} MB")
    print(f"built in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
