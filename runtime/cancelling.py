"""Background loops that retry on errors must still stop when cancelled.

On Python 3.11, a cancel that lands just as an `asyncio.timeout` (redis-py's socket timeout) fires
can come out of the `await` as `TimeoutError` instead of `CancelledError`: an `except Exception`
(or a suppressed `OSError`) around the call then swallows the cancel, the loop runs on, and
whatever awaits the task after cancelling it waits forever (seen as a test that hung in
`RegistryCache.close`: its poller was "cancelling" and still sleeping). The request stays
counted on the task (`Task.cancelling()`), so a loop can tell and stop: each retrying loop checks
once a round, before it sleeps, wherever in the round the cancel was swallowed (a second hang,
in the worker's health reports, had its cancel lost with no exception reaching the loop).
"""

from __future__ import annotations

import asyncio


def reraise_if_cancelled() -> None:
    """Raise `CancelledError` when the current task was asked to stop; call it in an except
    block that would otherwise retry."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
