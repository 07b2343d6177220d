"""The one lifecycle of a worker: start, run until stopped, drain within the grace period, close.
`botpulse worker` (`serve`) and the embedded stack (`run_worker`) both go through `Lifecycle`.

Stopping never cancels the worker's own task (a cancellation landing inside a Redis read can be
swallowed by the client's timeout handling on Python 3.11): `stop()` lets it finish the step in
hand, write and acknowledge what it holds and retire. Whatever does not finish within
`STOP_GRACE_S` stays pending with its batch record and is recovered by the next worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Awaitable, Callable

from botpulse.runtime.clickhouse import Store
from botpulse.runtime.health import Health
from botpulse.runtime.health_reports import report_forever
from botpulse.runtime.logs import get_logger
from botpulse.runtime.metrics import Exposition, start_listener
from botpulse.runtime.redis import connect
from botpulse.runtime.settings import Settings
from botpulse.workers.context import worker_redis
from botpulse.workers.metrics import stream_refresher
from botpulse.workers.pipeline import Worker

log = get_logger("botpulse.workers")

STOP_GRACE_S = 8.0  # SIGTERM: the batch in hand gets this long, the process exits within 10 s


class Lifecycle:
    def __init__(self, settings: Settings, store: Store, health: Health | None = None) -> None:
        self.settings = settings
        self.health = health or Health()
        self.redis = worker_redis(settings)
        self.worker = Worker(settings, store, self.redis, health=self.health)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self.worker.run(), name="worker-run")
        log.info(
            "worker started",
            consumer=self.worker.consumer,
            partitions=self.settings.stream_partitions,
            # The derived and chosen timeouts, so an operator sees what this worker waits for.
            redis_timeout_ms=self.settings.worker_redis_timeout_ms,
            read_block_ms=min(self.settings.batch_ms, max(1, self.settings.redis_timeout_ms // 2)),
            wait_replicas=self.settings.worker_wait_replicas,
        )
        return self.task

    def stop(self) -> None:
        self.worker.stop()

    async def finish(self) -> None:
        """Stop, give the drain its grace period, close the worker's Redis client. Re-raises
        what ended the worker's task, if it failed."""
        self.stop()
        try:
            if self.task is not None and not self.task.done():
                try:
                    await asyncio.wait_for(asyncio.shield(self.task), STOP_GRACE_S)
                except TimeoutError:
                    log.warning("flush did not finish in time; its entries stay pending for the next worker")
                    self.task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await self.task
        finally:
            self.health.set(False, "worker stopped")
            await self.redis.aclose()
        if self.task is not None and self.task.done() and not self.task.cancelled():
            self.task.result()


async def run_worker(settings: Settings, store: Store, health: Health | None = None) -> None:
    """Run one worker until cancelled (embedded in the query service) or until it ends.
    Cancellation is turned into `stop()` and the bounded drain."""
    life = Lifecycle(settings, store, health)
    task = life.start()
    try:
        await asyncio.shield(task)
    finally:
        await life.finish()


async def _metrics_listener(settings: Settings, life: Lifecycle) -> Callable[[], Awaitable[None]] | None:
    """BOTPULSE_WORKER_METRICS_PORT: this worker's counts and the stream's state (read from
    Redis at each scrape, as `botpulse status` reads it)."""
    if not settings.worker_metrics_port:
        return None
    exposition = Exposition()
    exposition.refreshers.append(stream_refresher(life.redis, settings.stream_partitions))
    return await start_listener(
        exposition, settings.metrics_listen, settings.worker_metrics_port, settings.metrics_path
    )


def serve(settings: Settings) -> int:
    """`botpulse worker`: SIGTERM/SIGINT stop reading, flush, ack and exit within 10 s."""
    from botpulse.runtime.migrations import migrate

    store = Store(settings)
    migrate(store)
    # A batch keeps tens of thousands of objects alive for a moment, and nearly all of them die
    # by reference counting; the default thresholds would run the cyclic collector (scanning
    # everything alive, start-up objects included) many times per batch.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)

    async def main() -> None:
        life = Lifecycle(settings, store)
        task = life.start()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            log.info("stopping: flushing the batch in hand")
            life.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        signalled = asyncio.create_task(life.worker.stopped())
        stop_metrics = await _metrics_listener(settings, life)
        # Its own client with the short timeout: a report must not wait behind a batch's command,
        # and `botpulse status` shows the report's age when Redis cannot take it.
        reports_redis = connect(settings)
        reporting = asyncio.create_task(
            report_forever(reports_redis, life.worker.consumer, life.health), name="health"
        )
        try:
            await asyncio.wait({task, signalled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            signalled.cancel()
            try:
                await life.finish()
            finally:
                # After the drain, so the report says "worker stopped" until it is removed.
                reporting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporting
                await reports_redis.aclose()
                if stop_metrics is not None:
                    await stop_metrics()

    try:
        asyncio.run(main())
    finally:
        store.close()
    return 0
