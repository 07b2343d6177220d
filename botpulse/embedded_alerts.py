"""The alert evaluator inside the query service's process, for embedded chDB (one engine per
process): `botpulse dev` and `botpulse query --with-alerts` compose it here, as
`embedded_worker` does for the stream worker, so the query package never imports alerts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from botpulse.alerts.server import run_alerts
from botpulse.query.resources import SETTINGS, STORE


async def embedded_alerts(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context: the evaluator starts with the app and, on shutdown, finishes its round
    and gives its slots back before the query service's own resources close."""
    task = asyncio.create_task(run_alerts(app[SETTINGS], app[STORE]), name="alerts")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def with_embedded_alerts(app: web.Application) -> web.Application:
    app.cleanup_ctx.append(embedded_alerts)
    return app
