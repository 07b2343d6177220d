"""The stream worker inside the query service's process, for embedded chDB (one engine per
process): `botpulse dev` and `botpulse query --with-worker` compose the two here, so the query
package never imports the worker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from botpulse.query.resources import SETTINGS, STORE
from botpulse.workers.runner import run_worker


async def embedded_worker(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context: the worker starts with the app and, on shutdown, stops reading,
    flushes and acknowledges before the query service's own resources close."""
    task = asyncio.create_task(run_worker(app[SETTINGS], app[STORE]), name="worker")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def with_embedded_worker(app: web.Application) -> web.Application:
    app.cleanup_ctx.append(embedded_worker)
    return app
