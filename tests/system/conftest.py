"""Fixtures of the system tier: the product installed into a sid system booted
with systemd as PID 1, one host of the test LAN (tests/testbed/system.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import system
from testbed.netns import Network, sweep_stale

ROOT = Path(__file__).resolve().parents[2]
JANE = "+12025550183"  # jane.doe's number in the seeded suite


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)  # root only; counted like integration


@pytest.fixture(scope="session")
def base() -> Path:
    if os.geteuid() != 0:
        pytest.skip("the system tier needs root (nspawn, overlayfs, namespaces)")
    sweep_stale()
    try:
        return system.ensure_base()
    except (system.rootfs.RootfsError, OSError) as exc:
        pytest.exit(f"sid system tree unusable: {exc}", returncode=3)


@pytest.fixture(scope="session")
def images(base) -> dict[str, str]:
    """The four OCI images (oci/build.py), built once per run; podman caches
    the base image and the layers they share."""
    import shutil
    import sys
    sys.path.insert(0, str(ROOT / "oci"))
    import build as oci

    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (packaging/apt-test-deps.txt)")
    try:
        return oci.build()
    except oci.OciError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def source_install(base: Path, tmp_path_factory) -> Path:
    """The install layer of a source install (pip + make install-data), made once."""
    upper = tmp_path_factory.mktemp("source-install") / "layer"
    with system.Overlay([base], upper) as merged:
        system.install_from_source(merged)
    return upper


class Machines:
    """Boots machines and powers every one of them off at the end."""

    def __init__(self) -> None:
        self.booted: list[system.BootedSystem] = []

    def __call__(self, machine: system.BootedSystem) -> system.BootedSystem:
        self.booted.append(machine)
        return machine.boot()

    def close(self) -> None:
        for machine in self.booted:
            machine.poweroff()


@pytest.fixture
def net(base: Path) -> Iterator[Network]:
    with Network() as network:
        yield network


@pytest.fixture
def boot() -> Iterator[Machines]:
    machines = Machines()
    yield machines
    machines.close()


@pytest.fixture(scope="module")
def module_net(base: Path) -> Iterator[Network]:
    """A LAN for a module's tests sharing one booted machine."""
    with Network() as network:
        yield network


@pytest.fixture(scope="module")
def module_boot() -> Iterator[Machines]:
    machines = Machines()
    yield machines
    machines.close()



@pytest.fixture
def phone(site, start_phone):
    """phone(user, texting=NUMBER): a baresip phone of USER on the module's
    `site` (its john_host, jane_host and pbx_host, the seeded passwords()),
    registered, tracing the MESSAGEs it gets, able to text NUMBER."""
    hosts = {"john.doe": site.john_host, "jane.doe": site.jane_host}

    def start(user: str, texting: str = JANE):
        p = start_phone(hosts[user], user, site.passwords()[user], site.pbx_host.v4,
                        trace=True, contacts=(f"sip:{texting}@{site.pbx_host.v4}",))
        p.wait_registered()
        return p
    return start
