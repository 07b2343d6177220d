"""The stream worker inside the query service's process, for embedded chDB (one engine per
process): `botpulse dev` and `botpulse query --with-worker` compose the two here, so the query
package never imports the worker.

The worker is supervised (botpulse/supervisor.py): if its task ever ends while the app runs (it
should not: every Redis or ClickHouse fault is retried inside it), the failure is logged once and
the worker restarted with backoff; when it cannot be kept running the process stops and exits
non-zero with the reason. Its state is `app[WORKER_HEALTH]` (`botpulse.runtime.health.Health`):
`ready` false, with the reason, while it is starting, backing off on a Redis/ClickHouse error, or
restarting; the query service's `/readyz` fails with that reason meanwhile, and `botpulse status`
shows it (runtime/health_reports.py). The query service never keeps answering "ready" over a
dead or stuck worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from botpulse.query.app import EXPOSITION
from botpulse.query.resources import READINESS, SETTINGS, STORE
from botpulse.runtime.health import WORKER_HEALTH, Health
from botpulse.runtime.health_reports import report_forever
from botpulse.runtime.redis import connect
from botpulse.supervisor import SUPERVISOR, supervisor_of
from botpulse.workers.context import consumer_name
from botpulse.workers.lifecycle import run_worker
from botpulse.workers.metrics import stream_refresher

# A worker that ends this soon after a start did not start.
_STARTED_S = 2.0


async def embedded_worker(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context: the worker starts with the app and, on shutdown, stops reading,
    flushes and acknowledges before the query service's own resources close."""
    supervisor = app[SUPERVISOR]
    health = app[WORKER_HEALTH]
    current: list[asyncio.Task[None]] = []

    def launch() -> asyncio.Task[None]:
        task = asyncio.create_task(run_worker(app[SETTINGS], app[STORE], health), name="worker")
        current[:] = [task]
        return task

    async def died() -> str:
        task = current[0]
        await asyncio.wait({task})  # cancelling this wait leaves the worker alone
        if task.cancelled():
            reason = "cancelled"
        elif (exc := task.exception()) is not None:
            reason = f"crashed: {type(exc).__name__}: {exc}"
        else:
            reason = "stopped by itself"
        health.restarts += 1
        health.set(False, f"the worker {reason}; restarting (restart {health.restarts})"[:500])
        return reason

    async def start() -> None:
        task = launch()
        done, _ = await asyncio.wait({task}, timeout=_STARTED_S)
        if done:
            raise RuntimeError(f"the worker ended at once: {task.exception()!r}")

    launch()
    supervisor.keep("worker", died, start)
    reports_redis = connect(app[SETTINGS])
    reporting = asyncio.create_task(report_forever(reports_redis, consumer_name(), health), name="health")
    # The worker's metrics join the query service's: its counts are in the process's registry,
    # the stream's state is read from Redis at each scrape (as `botpulse status` reads it).
    app[EXPOSITION].refreshers.append(stream_refresher(reports_redis, app[SETTINGS].stream_partitions))
    yield
    await supervisor.stop()
    task = current[0]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    reporting.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await reporting
    await reports_redis.aclose()


def with_embedded_worker(app: web.Application) -> web.Application:
    health = app[WORKER_HEALTH] = Health()
    supervisor = supervisor_of(app)

    def worker_problem() -> str | None:
        # The supervisor says it when the task is gone; the health while it runs but is stuck.
        if health.ready or "worker" in supervisor.down:
            return None
        return (
            health.reason if health.reason.startswith(("worker", "the worker")) else f"worker {health.reason}"
        )

    app[READINESS].append(worker_problem)
    app.cleanup_ctx.append(embedded_worker)
    return app
