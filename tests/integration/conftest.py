"""Fixtures of the real-Asterisk test bed: a cached sid tree, network
namespaces as hosts, Asterisk and SIP peers that are torn down after each test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testbed import rootfs
from testbed.asterisk import Asterisk
from testbed.netns import Host, Network, sweep_stale


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)


def pytest_report_header() -> list[str]:
    if os.geteuid() != 0:
        return []
    tree = rootfs.cache_dir() / rootfs.TREE_NAME
    if not tree.exists():
        return [f"test bed: {tree} not built yet"]
    got = rootfs.versions(tree)
    return [f"test bed: {tree}: " + ", ".join(f"{k} {v}" for k, v in got.items()),
            f"host python3: {os.sys.version.split()[0]}"]


@pytest.fixture(scope="session")
def tree() -> Path:
    if os.geteuid() != 0:
        pytest.skip("the test bed needs root (namespaces, mounts, nftables)")
    sweep_stale()
    try:
        path = rootfs.ensure_rootfs()
    except (rootfs.RootfsError, OSError) as exc:
        pytest.exit(f"sid tree unusable: {exc}", returncode=3)
    print("test bed versions:", rootfs.versions(path))
    return path


@pytest.fixture
def net(tree: Path) -> Iterator[Network]:
    with Network() as network:
        yield network


@pytest.fixture
def start_asterisk(tree: Path, tmp_path: Path) -> Iterator[Callable[..., Asterisk]]:
    """start_asterisk(host, {name: text}) -> a running Asterisk, stopped at teardown."""
    started: list[Asterisk] = []

    def start(host: Host, configs: dict[str, str] | None = None, **kw) -> Asterisk:
        pbx = Asterisk(tree, host, tmp_path / f"asterisk-{len(started)}", configs, **kw)
        started.append(pbx)
        pbx.start()
        return pbx

    yield start
    for pbx in started:
        pbx.stop()

