"""The alert evaluator inside the query service's process, for embedded chDB (one engine per
process): `botpulse dev` and `botpulse query --with-alerts` compose it here, as
`embedded_worker` does for the stream worker, so the query package never imports alerts.

Supervised like the embedded worker (botpulse/supervisor.py): the evaluator retries every Redis
or ClickHouse fault inside its rounds, so its task should never end while the app runs; if it
does, the supervisor logs it once, `/readyz` names it while it is down, and it is restarted with
backoff (or the process stops, non-zero, when it cannot be kept running)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from botpulse.alerts.server import run_alerts
from botpulse.query.resources import SETTINGS, STORE
from botpulse.supervisor import SUPERVISOR, supervisor_of

# An evaluator that ends this soon after a start did not start.
_STARTED_S = 2.0


async def embedded_alerts(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context: the evaluator starts with the app and, on shutdown, finishes its round
    and gives its slots back before the query service's own resources close."""
    supervisor = app[SUPERVISOR]
    current: list[asyncio.Task[None]] = []

    def launch() -> asyncio.Task[None]:
        task = asyncio.create_task(run_alerts(app[SETTINGS], app[STORE]), name="alerts")
        current[:] = [task]
        return task

    async def died() -> str:
        task = current[0]
        await asyncio.wait({task})  # cancelling this wait leaves the evaluator alone
        if task.cancelled():
            return "cancelled"
        if (exc := task.exception()) is not None:
            return f"crashed: {type(exc).__name__}: {exc}"[:300]
        return "stopped by itself"

    async def start() -> None:
        task = launch()
        done, _ = await asyncio.wait({task}, timeout=_STARTED_S)
        if done:
            raise RuntimeError(f"the alert evaluator ended at once: {task.exception()!r}")

    launch()
    supervisor.keep("alerts", died, start)
    yield
    await supervisor.stop()  # a stop on purpose is not a death
    task = current[0]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def with_embedded_alerts(app: web.Application) -> web.Application:
    supervisor_of(app)  # before the app starts: its problems join `/readyz`
    app.cleanup_ctx.append(embedded_alerts)
    return app
