"""Waiting for a condition with a deadline: the test bed's one polling loop,
for what offers no event to await (files, kernel sets, processes)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """PREDICATE's first truthy result; TimeoutError naming WHAT after TIMEOUT seconds."""
    end = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > end:
            raise TimeoutError(f"{what} not seen within {timeout}s")
        time.sleep(interval)
