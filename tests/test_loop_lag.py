"""The event-loop lag probe: a loop held by one long callback shows as a late wake-up."""

from __future__ import annotations

import asyncio
import time

from botpulse.runtime.loop_lag import LoopLagProbe


async def test_a_blocked_loop_is_observed_as_lag_and_stop_ends_the_probe() -> None:
    seen: list[float] = []
    probe = LoopLagProbe(seen.append, interval_s=0.01)
    probe.start()
    await asyncio.sleep(0.05)
    quiet = len(seen)
    assert quiet >= 1
    time.sleep(0.2)  # noqa: ASYNC251 (the point: what a slow synchronous call in a handler does)
    await asyncio.sleep(0.05)
    assert max(seen) >= 0.15
    # One long stall is one late wake-up, not a burst of made-up ones.
    assert sum(1 for lag in seen if lag >= 0.15) == 1
    assert all(lag >= 0 for lag in seen)
    await probe.stop()
    count = len(seen)
    await asyncio.sleep(0.05)
    assert len(seen) == count
