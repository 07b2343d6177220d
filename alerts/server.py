"""Run the evaluator: `botpulse alerts` on its own, or inside another process (`run_alerts`,
which the embedded stack composes into the query service)."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from botpulse.alerts.evaluator import Evaluator
from botpulse.runtime.clickhouse import Store
from botpulse.runtime.logs import get_logger
from botpulse.runtime.redis import connect
from botpulse.runtime.settings import Settings

log = get_logger(__name__)
_STOP_GRACE_S = 15.0


async def run_alerts(settings: Settings, store: Store) -> None:
    """Until cancelled: cancellation becomes a graceful stop (finish the round, give the slots
    back), bounded by a grace time."""
    redis = connect(settings)
    evaluator = Evaluator(settings, store, redis)
    inner = asyncio.create_task(evaluator.run(), name="alerts-run")
    try:
        await asyncio.shield(inner)
    except asyncio.CancelledError:
        evaluator.stop()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(inner, _STOP_GRACE_S)
        raise
    finally:
        evaluator.stop()
        if not inner.done():
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(inner, _STOP_GRACE_S)
        await redis.aclose()


def serve(settings: Settings) -> int:
    """`botpulse alerts`: SIGTERM/SIGINT finish the round, give the slots back and exit."""
    from botpulse.runtime.migrations import migrate

    store = Store(settings)
    try:
        migrate(store)

        async def main() -> None:
            task = asyncio.create_task(run_alerts(settings, store))
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, task.cancel)
            with contextlib.suppress(asyncio.CancelledError):
                await task

        asyncio.run(main())
    finally:
        store.close()
    return 0
