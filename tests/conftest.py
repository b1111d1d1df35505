"""Suite-wide rules: under CI=true a skip is a failure, and every collected
integration test must really run (a broken test bed cannot pass as skipped)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the testbed package
from testbed.netns import Host
from testbed.sip import Baresip

IN_CI = os.environ.get("CI") == "true"
_integration = {"declared": 0, "ran": 0}


def pytest_collection_finish(session: pytest.Session) -> None:
    # after -k/-m deselection: what this run means to run
    _integration["declared"] = sum(1 for i in session.items
                                   if i.get_closest_marker("integration"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if item.get_closest_marker("integration") and report.when == "call":
        _integration["ran"] += 1
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which allows no skips: {reason}"


def pytest_terminal_summary(terminalreporter) -> None:
    if _integration["declared"]:
        terminalreporter.write_line(
            f"integration tests: {_integration['declared']} declared, "
            f"{_integration['ran']} ran")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if IN_CI and _integration["ran"] < _integration["declared"] and exitstatus == 0:
        session.exitstatus = 1


@pytest.fixture
def start_phone(tmp_path: Path) -> Iterator[Callable[..., Baresip]]:
    """start_phone(host, user, password, pbx_addr, ...) -> a baresip phone."""
    phones: list[Baresip] = []

    def start(host: Host, user: str, password: str, pbx: str, **kw) -> Baresip:
        phone = Baresip(host, tmp_path, user, password, pbx, **kw)
        phones.append(phone)
        return phone

    yield start
    for phone in phones:
        phone.stop()
