"""A built OCI image's root booted with systemd as PID 1: the image's layers
(podman's overlay storage) are the lower layers of a BootedSystem
(tests/testbed/system.py), so nothing is mounted or copied out of podman.
`podman run` cannot boot systemd on this cgroup-v1 host (testbed.md); nspawn
gives PID 1 what podman would: the image's Env and Cmd, container variables
(--setenv, as `podman run -e`), and a /srv bound from outside (the volume)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .netns import Host
from .system import BootedSystem


class ImageError(RuntimeError):
    """The image is missing or not stored the way this module reads it."""


def inspect(tag: str) -> dict:
    proc = subprocess.run(["podman", "image", "inspect", tag], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(f"podman image inspect {tag}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)[0]


def layers(tag: str) -> list[Path]:
    """The image's layer directories, top first (overlay's lowerdir order)."""
    info = inspect(tag)
    driver = info["GraphDriver"]
    if driver["Name"] != "overlay":
        raise ImageError(f"{tag} is stored by {driver['Name']}, not overlay")
    data = driver["Data"]
    dirs = [data["UpperDir"], *filter(None, data.get("LowerDir", "").split(":"))]
    return [Path(d) for d in dirs]


def config(tag: str) -> dict:
    """The image's config (Env, Cmd, ExposedPorts, Healthcheck, Volumes, StopSignal)."""
    return inspect(tag)["Config"]


def machine(tag: str, host: Host, workdir: Path, env: dict[str, str] | None = None,
            srv: Path | None = None) -> BootedSystem:
    """TAG's root as HOST, with the image's Env and ENV as PID 1's environment and,
    when given, SRV bound at /srv (a volume kept across containers)."""
    image_env = dict(e.split("=", 1) for e in config(tag).get("Env") or [] if "=" in e)
    args = [f"--setenv={k}={v}" for k, v in {**image_env, **(env or {})}.items()
            if k != "PATH"]
    if srv is not None:
        srv.mkdir(parents=True, exist_ok=True)
        args.append(f"--bind={srv}:/srv")
    return BootedSystem(layers(tag), host, workdir, nspawn_args=tuple(args))
