"""The stream worker inside the query service's process, for embedded chDB (one engine per
process): `botpulse dev` and `botpulse query --with-worker` compose the two here, so the query
package never imports the worker.

The worker is supervised: if its task ever ends while the app runs (it should not: every Redis
or ClickHouse fault is retried inside it), the failure is logged and the worker restarted with
backoff. Its state is `app[WORKER_HEALTH]` (`botpulse.runtime.health.Health`): `ready` false,
with the reason, while it is starting, backing off on a Redis/ClickHouse error, or restarting,
for the query service's `/readyz` to report.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from aiohttp import web

from botpulse.query.app import EXPOSITION
from botpulse.query.resources import SETTINGS, STORE
from botpulse.runtime.clickhouse import Store
from botpulse.runtime.health import WORKER_HEALTH, Health
from botpulse.runtime.logs import get_logger
from botpulse.runtime.redis import connect
from botpulse.runtime.settings import Settings
from botpulse.workers.context import backoff
from botpulse.workers.lifecycle import run_worker
from botpulse.workers.metrics import stream_refresher

log = get_logger("botpulse.embedded_worker")

_HEALTHY_RUN_S = 60.0  # a worker that ran this long before it ended restarts from the first backoff


async def supervise(settings: Settings, store: Store, health: Health) -> None:
    """Run the worker until cancelled, restarting it whenever it ends."""
    attempt = 0
    while True:
        started = time.monotonic()
        try:
            await run_worker(settings, store, health)
            reason = "the worker stopped by itself"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = f"the worker failed: {type(exc).__name__}: {exc}"
            log.exception("embedded worker failed; restarting it")
        else:
            log.error("embedded worker stopped by itself; restarting it")
        attempt = 1 if time.monotonic() - started > _HEALTHY_RUN_S else attempt + 1
        health.restarts += 1
        health.set(False, f"{reason}; restarting (restart {health.restarts})"[:500])
        await asyncio.sleep(backoff(attempt))


async def embedded_worker(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context: the worker starts with the app and, on shutdown, stops reading,
    flushes and acknowledges before the query service's own resources close."""
    task = asyncio.create_task(supervise(app[SETTINGS], app[STORE], app[WORKER_HEALTH]), name="worker")
    # The worker's metrics join the query service's: its counts are in the process's registry,
    # the stream's state is read from Redis at each scrape (as `botpulse status` reads it).
    redis = connect(app[SETTINGS])
    app[EXPOSITION].refreshers.append(stream_refresher(redis, app[SETTINGS].stream_partitions))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await redis.aclose()


def with_embedded_worker(app: web.Application) -> web.Application:
    app[WORKER_HEALTH] = Health()
    app.cleanup_ctx.append(embedded_worker)
    return app
