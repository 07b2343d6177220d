"""How late the event loop runs what is due: a probe that sleeps a fixed interval and records
how much later than asked it woke. A loop busy with one long callback (a large body, a
collection, a slow `sync` call) or a process that waited for a core delays every request it
holds by that much, and the request's own timer, which starts once the loop reads it, cannot
see it: this figure can (the bench reads it to split a tail, docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from botpulse.runtime.logs import get_logger

log = get_logger(__name__)

INTERVAL_S = 0.05
# From a loop that keeps up (libuv's timers tick in milliseconds) to a stall a user notices.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LoopLagProbe:
    """`start()` in the loop to probe; `observe(seconds)` gets one lag a wake-up."""

    def __init__(self, observe: Callable[[float], None], interval_s: float = INTERVAL_S) -> None:
        self.observe = observe
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # An instrument's failure must not skip the rest of a shutdown (the appender's
            # writes in flight come after it).
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        # perf_counter, not loop.time(): uvloop's clock is cached per loop iteration.
        clock, interval, observe = time.perf_counter, self.interval_s, self.observe
        failing = False
        while True:
            asked = clock()
            await asyncio.sleep(interval)
            try:
                observe(max(0.0, clock() - asked - interval))
                failing = False
            except Exception as exc:  # a metrics file on a full disk, say: keep probing
                if not failing:
                    log.warning("loop lag not recorded", error=str(exc))
                failing = True
