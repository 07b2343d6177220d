"""`botpulse status` (issue #13): Redis memory against its limit, and each worker's health as
the workers report it in Redis (runtime/health_reports.py): ok, backing off with the last
Redis/ClickHouse error, or silent (stopped without saying so). A real valkey of its own, since
the test sets its maxmemory."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time

import msgspec
import redis.asyncio as aioredis

from botpulse.runtime.embedded import EmbeddedRedis
from botpulse.runtime.health import Health
from botpulse.runtime.health_reports import HealthReport, publish, report_forever
from botpulse.schemas.stream import worker_health_key


def status(url: str, *extra: str) -> str:
    env = {"REDIS_URL": url, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "botpulse", "status", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_status_shows_memory_against_the_limit_and_workers_backing_off(tmp_path) -> None:
    server = EmbeddedRedis(tmp_path / "redis").start()
    redis = aioredis.Redis.from_url(server.url)
    try:
        text = await asyncio.to_thread(status, server.url)
        assert "no maxmemory set" in text
        assert "no worker reports its health" in text

        healthy, stuck = Health(), Health()
        healthy.set(True)
        stuck.set(False, "worker backing off: clickhouse: Code: 210. Connection refused")
        stuck.restarts = 2
        await publish(redis, "host-1", healthy)
        await publish(redis, "host-2", stuck)
        # A worker that stopped reporting a minute ago.
        old = HealthReport("host-3", True, "", 0, 0, int(time.time() * 1000) - 60_000)
        await redis.hset(worker_health_key(), "host-3", msgspec.json.encode(old))
        used = int((await redis.info("memory"))["used_memory"])
        await redis.config_set("maxmemory", str(int(used / 0.95)))

        text = await asyncio.to_thread(status, server.url)
        assert "worker host-1: ok" in text
        assert "worker host-2: backing off: clickhouse: Code: 210. Connection refused" in text
        assert "restarted 2 time(s)" in text
        assert re.search(r"worker host-3: silent for 6\ds", text), text
        assert re.search(r"\((9\d|1\d\d)%\)", text), text
        assert "the gateway refuses posts (503)" in text

        data = json.loads(await asyncio.to_thread(status, server.url, "--json"))
        assert data["redis"]["max_bytes"] == int(used / 0.95)
        assert [w["consumer"] for w in data["workers"]] == ["host-1", "host-2", "host-3"]
        assert data["workers"][1]["ready"] is False
        assert data["partitions"][0]["partition"] == 0

        # A worker that stops cleanly takes its report with it.
        task = asyncio.create_task(report_forever(redis, "host-4", healthy))
        await asyncio.sleep(0.3)
        assert await redis.hexists(worker_health_key(), "host-4")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert not await redis.hexists(worker_health_key(), "host-4")
    finally:
        await redis.aclose()
        server.stop()
