"""`botpulse alerts` as its own process: it takes every slot when alone, and on SIGTERM finishes
its round, gives the slots back and exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

from botpulse.runtime.processes import spawn_child
from botpulse.schemas.alerts import ALERT_SLOTS, MEMBERS_KEY, slot_key


async def _held(redis) -> set[bytes]:  # type: ignore[no-untyped-def]
    values = await redis.mget([slot_key(s) for s in range(ALERT_SLOTS)])
    return {v for v in values if v is not None}


async def test_alerts_process_holds_the_slots_and_hands_them_over_on_sigterm(settings, redis, tmp_path):
    env = dict(
        os.environ,
        REDIS_URL=settings.redis_url,
        CLICKHOUSE_URL=f"chdb://{tmp_path / 'clickhouse'}",  # its own engine: one per process
        BOTPULSE_DATA_DIR=str(tmp_path),
        BOTPULSE_ALERTS_INTERVAL_S="0.2",
        BOTPULSE_LOG_LEVEL="warning",
    )
    proc = spawn_child(
        [sys.executable, "-m", "botpulse", "alerts"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            members = await redis.zrange(MEMBERS_KEY, 0, -1)
            if len(members) == 1 and await _held(redis) == set(members):
                break
            await asyncio.sleep(0.1)
        members = await redis.zrange(MEMBERS_KEY, 0, -1)
        assert len(members) == 1, proc.stderr.read() if proc.poll() is not None else "no member"
        assert all(v == members[0] for v in await redis.mget([slot_key(s) for s in range(ALERT_SLOTS)]))
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert await _held(redis) == set()
        assert await redis.zcard(MEMBERS_KEY) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
