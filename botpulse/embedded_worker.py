"""The stream worker inside the query service's process, for embedded chDB (one engine per
process): `botpulse dev` and `botpulse query --with-worker` compose the two here, so the query
package never imports the worker.

The worker is supervised: if its task ends while the service runs (an error it did not survive),
it is started again with backoff, `/readyz` fails meanwhile naming it, and when it cannot be kept
running the process stops and exits non-zero (botpulse/supervisor.py). The query service never
keeps answering over a dead worker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from botpulse.query.resources import SETTINGS, STORE
from botpulse.supervisor import SUPERVISOR, supervisor_of
from botpulse.workers.runner import run_worker

# A worker that ends this soon after a start did not start.
_STARTED_S = 2.0


async def embedded_worker(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context: the worker starts with the app and, on shutdown, stops reading,
    flushes and acknowledges before the query service's own resources close."""
    supervisor = app[SUPERVISOR]
    current: list[asyncio.Task[None]] = []

    def launch() -> asyncio.Task[None]:
        task = asyncio.create_task(run_worker(app[SETTINGS], app[STORE]), name="worker")
        current[:] = [task]
        return task

    async def died() -> str:
        task = current[0]
        await asyncio.wait({task})  # cancelling this wait leaves the worker alone
        if task.cancelled():
            return "cancelled"
        exc = task.exception()
        return f"crashed: {exc!r}" if exc is not None else "stopped by itself"

    async def start() -> None:
        task = launch()
        done, _ = await asyncio.wait({task}, timeout=_STARTED_S)
        if done:
            raise RuntimeError(f"the worker ended at once: {task.exception()!r}")

    launch()
    supervisor.keep("worker", died, start)
    yield
    await supervisor.stop()
    task = current[0]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def with_embedded_worker(app: web.Application) -> web.Application:
    supervisor_of(app)
    app.cleanup_ctx.append(embedded_worker)
    return app
