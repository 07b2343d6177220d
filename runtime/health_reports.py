"""Workers' health in Redis, for `botpulse status`: each worker process reports its `Health`
(runtime/health.py: ready, or backing off and the last Redis/ClickHouse error) every few
seconds under its consumer name in `schemas.stream.worker_health_key()`, and removes it when it
stops cleanly. A report that stopped coming is shown with its age: the worker died, or cannot
reach Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from botpulse.runtime.cancelling import reraise_if_cancelled
from botpulse.runtime.health import Health
from botpulse.schemas.stream import worker_health_key

REPORT_EVERY_S = 2.0
# A report this old comes from a worker that stopped without saying so (or cannot write).
SILENT_S = 15.0
# Reports of workers silent this long are dropped by the next reporter.
FORGET_S = 3600.0


class HealthReport(msgspec.Struct):
    consumer: str
    ready: bool
    reason: str
    since_ms: int
    restarts: int
    reported_ms: int


def report_of(consumer: str, health: Health) -> HealthReport:
    return HealthReport(
        consumer=consumer,
        ready=health.ready,
        reason=health.reason,
        since_ms=int(health.since * 1000),
        restarts=health.restarts,
        reported_ms=int(time.time() * 1000),
    )


async def publish(redis: aioredis.Redis, consumer: str, health: Health) -> None:
    await redis.hset(worker_health_key(), consumer, msgspec.json.encode(report_of(consumer, health)))


async def report_forever(redis: aioredis.Redis, consumer: str, health: Health) -> None:
    """Until cancelled; then the report is removed (a worker that stops cleanly leaves none)."""
    try:
        while True:
            # Redis away, full or read-only: the report just ages, which the status shows.
            try:
                await publish(redis, consumer, health)
                await _forget_silent(redis)
            except (RedisError, OSError):
                pass
            reraise_if_cancelled()  # a cancel swallowed anywhere in the round (redis-py included)
            await asyncio.sleep(REPORT_EVERY_S)
    finally:
        with contextlib.suppress(RedisError, OSError, RuntimeError):
            await asyncio.shield(redis.hdel(worker_health_key(), consumer))


async def _forget_silent(redis: aioredis.Redis) -> None:
    now_ms = time.time() * 1000
    stale = [r.consumer for r in await read_reports(redis) if now_ms - r.reported_ms > FORGET_S * 1000]
    if stale:
        await redis.hdel(worker_health_key(), *stale)


async def read_reports(redis: aioredis.Redis) -> list[HealthReport]:
    reports = []
    for raw in (await redis.hgetall(worker_health_key())).values():
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            reports.append(msgspec.json.decode(raw, type=HealthReport))
    return sorted(reports, key=lambda r: r.consumer)


def describe(report: HealthReport, now_ms: int) -> str:
    age_s = (now_ms - report.reported_ms) / 1000
    reason = report.reason.removeprefix("worker ")  # the line starts with "worker <name>:"
    if age_s > SILENT_S:
        state = f"silent for {age_s:.0f}s (stopped, or cannot reach Redis); last said: "
        state += "ok" if report.ready else reason
    elif report.ready:
        state = "ok"
    else:
        state = f"{reason} (for {(now_ms - report.since_ms) / 1000:.0f}s)"
    restarts = f", restarted {report.restarts} time(s)" if report.restarts else ""
    return f"worker {report.consumer}: {state}{restarts}"
