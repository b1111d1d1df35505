"""asyncio helpers websms's loops share."""

from __future__ import annotations

import asyncio


async def nap(event: asyncio.Event, seconds: float) -> None:
    """Return when EVENT is set or SECONDS have passed. Unlike asyncio.wait_for
    on Python 3.11, a cancellation arriving as the event is set is never
    swallowed (that left a loop running after SIGTERM)."""
    timer = asyncio.get_running_loop().call_later(seconds, event.set)
    try:
        await event.wait()
    finally:
        timer.cancel()


def stop_if_cancelled() -> None:
    """Raise CancelledError when this task was asked to stop, even if a library
    (asyncio.wait_for in the AMI client, on 3.11) swallowed the cancellation."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
