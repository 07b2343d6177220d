"""Admission: whether the gateway takes posts in, judged on what Redis can still hold.

A client controls the size of its entries, so a bound on stream length is not a bound on memory.
One sampler per gateway process reads, every `SAMPLE_S`, in one round trip: `INFO memory`
(`used_memory` against `maxmemory`) and each partition's consumer group (`lag` + `pending`: the
entries the workers have not stored yet). Every post of the process then checks the last sample
in memory: no Redis command per post. The append script still checks `XLEN` against
`BOTPULSE_STREAM_HIGH_WATER` atomically, as the hard bound.

Refusals are 503s with `Retry-After` that name the reason. A Redis error reply to an append
(OOM, READONLY, MISCONF, BUSY) is classified here too, into the same kind of answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from botpulse.runtime.logs import get_logger
from botpulse.runtime.settings import Settings
from botpulse.schemas.stream import GROUP, stream_key

log = get_logger(__name__)

SAMPLE_S = 0.25
# A sample older than this is not trusted either way: the appends themselves tell (a failing
# Redis fails them), so admission never refuses on stale news.
STALE_S = 3.0


class Verdict(msgspec.Struct, frozen=True):
    """Why posts are refused: `reason` is a stable code (also in the JSON body), `message` for people."""

    reason: str
    message: str
    retry_after_s: int


def memory_verdict(used: int, limit: int, high_water_pct: int) -> Verdict | None:
    if limit <= 0 or used * 100 < limit * high_water_pct:
        return None
    pct = used * 100 // limit
    return Verdict(
        "redis_memory",
        f"The ingest buffer is full (Redis memory at {pct}% of its limit); "
        "the workers are draining it, try again shortly",
        5,
    )


def error_verdict(exc: BaseException) -> Verdict:
    """What a failed append tells the poster: Redis's error replies by their code, anything else
    (connection refused or lost, timeout) as storage unavailable."""
    text = str(exc)
    if isinstance(exc, ResponseError):
        code = text.split(" ", 1)[0].upper()
        if code == "OOM" or "OOM command not allowed" in text:
            return Verdict(
                "redis_oom",
                "The ingest buffer is full (Redis is out of memory); the workers are draining it, "
                "try again shortly",
                5,
            )
        if code == "READONLY" or "READONLY" in text:
            return Verdict(
                "redis_readonly",
                "The ingest buffer is read-only (a Redis failover is in progress), try again shortly",
                2,
            )
        if code == "MISCONF" or "MISCONF" in text:
            return Verdict(
                "redis_misconf",
                "The ingest buffer cannot persist to disk (Redis MISCONF), try again shortly",
                10,
            )
        if code in ("BUSY", "LOADING") or text.startswith(("BUSY", "LOADING")):
            return Verdict("redis_busy", "The ingest buffer is busy or loading, try again shortly", 1)
    return Verdict("redis_unavailable", "Storage is unavailable, try again shortly", 1)


class Sample(msgspec.Struct):
    at: float  # monotonic time
    used_memory: int
    maxmemory: int
    backlog: dict[int, int]  # partition -> entries not yet stored (lag + pending)


def _field(info: Any, name: str) -> int:
    value = info.get(name, info.get(name.encode(), 0)) if isinstance(info, dict) else 0
    return int(value or 0)


def _backlog(groups: Any) -> int | None:
    """lag + pending of our group, or None when the stream or the group does not exist yet."""
    if not isinstance(groups, list):
        return None
    for group in groups:
        if not isinstance(group, dict):
            continue
        name = group.get("name", group.get(b"name"))
        if (name.decode() if isinstance(name, bytes) else name) != GROUP:
            continue
        lag = group.get("lag", group.get(b"lag"))
        pending = int(group.get("pending", group.get(b"pending", 0)) or 0)
        # `lag` is nil when Redis cannot compute it (entries deleted after the group's position):
        # the pending count alone is then a lower bound, and XLEN in the script the upper one.
        return pending + (int(lag) if lag is not None else 0)
    return None


class Admission:
    """The last sample of Redis, shared by every post of this process."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.partitions = settings.stream_partitions
        self.high_water = settings.stream_high_water
        self.memory_pct = settings.redis_memory_high_water_pct
        self.sample: Sample | None = None
        self._memory: Verdict | None = None
        self._lagging: dict[int, Verdict] = {}
        self._task: asyncio.Task[None] | None = None
        self._refusing: str | None = None  # the reason last logged, to log a change once
        self._stopping = False

    def verdict(self, partition: int) -> Verdict | None:
        """Why a post to `partition` is refused now, or None to let it through to the script."""
        sample = self.sample
        if sample is None or time.monotonic() - sample.at > STALE_S:
            return None
        return self._memory or self._lagging.get(partition)

    def note_error(self, verdict: Verdict) -> None:
        """An append came back OOM: refuse at once, until a sample shows memory below the mark."""
        if verdict.reason == "redis_oom" and self.sample is not None:
            self.sample.at = time.monotonic()
            self._memory = verdict
            self._log(verdict)

    async def refresh(self) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.info("memory")
            for p in range(self.partitions):
                pipe.xinfo_groups(stream_key(p))
            replies = await pipe.execute(raise_on_error=False)
        info = replies[0]
        if isinstance(info, Exception):
            raise info
        used, limit = _field(info, "used_memory"), _field(info, "maxmemory")
        backlog: dict[int, int] = {}
        lagging: dict[int, Verdict] = {}
        for p, groups in enumerate(replies[1:]):
            n = _backlog(groups)
            if n is None:
                continue
            backlog[p] = n
            if n >= self.high_water:
                lagging[p] = Verdict(
                    "worker_lag",
                    f"The workers are behind ({n} entries not yet stored, the limit is "
                    f"{self.high_water}), try again shortly",
                    5,
                )
        self.sample = Sample(time.monotonic(), used, limit, backlog)
        self._memory = memory_verdict(used, limit, self.memory_pct)
        self._lagging = lagging
        self._log(self._memory or next(iter(lagging.values()), None))

    def _log(self, verdict: Verdict | None) -> None:
        reason = verdict.reason if verdict else None
        if reason == self._refusing:
            return
        self._refusing = reason
        if verdict is None:
            log.info("admission open again: posts are accepted")
        else:
            log.warning("admission closed: posts get 503", reason=verdict.reason, detail=verdict.message)

    async def _run(self) -> None:
        while not self._stopping:
            # Redis unreachable: the appends answer 503 themselves; the sample goes stale.
            with contextlib.suppress(TimeoutError, RedisError, OSError):
                await self.refresh()
            await asyncio.sleep(SAMPLE_S)

    async def start(self) -> None:
        self._stopping = False
        with contextlib.suppress(TimeoutError, RedisError, OSError):
            await self.refresh()
        self._task = asyncio.create_task(self._run(), name="admission")

    async def stop(self) -> None:
        # The flag too: redis-py can swallow a cancellation that lands inside its timeout
        # handling (Python 3.11), and shutdown must not wait on a sampler stuck in a frozen Redis.
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1.0)
