"""Worker statistics in Redis (`schemas.stream.worker_stats_key`) and the per-partition view
`botpulse status` prints. Only Redis is read: an operator command never opens ClickHouse.

The stats hash of a partition holds running totals written by every worker of that partition
(`rows_total`, `batches_total`, `recovered_total`, `dead_total`, `lost_total`), the time of the
last insert (`last_insert_ms`), and rows per 10-second window (`w:<unix_s // 10>`) from which
rows/s over the last minute is computed.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import redis.asyncio as aioredis

from botpulse.schemas.stream import GROUP, batches_key, dead_letter_key, stream_key, worker_stats_key

WINDOW_S = 10
RATE_WINDOWS = 6  # rows/s over the last minute


class PartitionStats:
    """Adds one batch's numbers to a partition's stats hash (one round trip, no transaction:
    these are operator figures, not part of the exactly-once path)."""

    @staticmethod
    async def record_batch(redis: aioredis.Redis, partition: int, *, rows: int, recovered: bool) -> None:
        now = time.time()
        window = int(now) // WINDOW_S
        key = worker_stats_key(partition)
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, "last_insert_ms", int(now * 1000))
            pipe.hincrby(key, "rows_total", rows)
            pipe.hincrby(key, "batches_total", 1)
            pipe.hincrby(key, f"w:{window}", rows)
            # Windows older than the rate horizon are dropped as time moves on.
            pipe.hdel(key, *[f"w:{w}" for w in range(window - RATE_WINDOWS - 30, window - RATE_WINDOWS - 1)])
            if recovered:
                pipe.hincrby(key, "recovered_total", 1)
            await pipe.execute()

    @staticmethod
    async def add(redis: aioredis.Redis, partition: int, field: str, amount: int) -> None:
        await redis.hincrby(worker_stats_key(partition), field, amount)


class ConsumerView(msgspec.Struct):
    name: str
    pending: int
    idle_ms: int


class PartitionView(msgspec.Struct):
    partition: int
    stream: str
    length: int
    group_exists: bool
    pending: int
    lag: int | None
    # Age of the oldest entry no worker has read yet (0 when every entry was read).
    lag_s: float
    consumers: list[ConsumerView]
    dead_letters: int
    batches_in_flight: int
    last_insert_ms: int | None
    rows_per_s: float
    rows_total: int
    recovered_batches: int
    dead_total: int
    lost_total: int


def _flat(pairs: Any) -> dict[str, Any]:
    if isinstance(pairs, dict):
        return {k.decode() if isinstance(k, bytes) else k: v for k, v in pairs.items()}
    return {}


async def partition_view(redis: aioredis.Redis, partition: int) -> PartitionView:
    stream = stream_key(partition)
    length = await redis.xlen(stream)
    group: dict[str, Any] | None = None
    consumers: list[ConsumerView] = []
    try:
        for g in await redis.xinfo_groups(stream):
            g = _flat(g)
            name = g.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == GROUP:
                group = g
        if group is not None:
            for c in await redis.xinfo_consumers(stream, GROUP):
                c = _flat(c)
                name = c.get("name", b"")
                consumers.append(
                    ConsumerView(
                        name=name.decode() if isinstance(name, bytes) else str(name),
                        pending=int(c.get("pending", 0)),
                        idle_ms=int(c.get("idle", 0)),
                    )
                )
    except aioredis.ResponseError:
        group = None  # the stream does not exist yet
    stats = {k.decode(): v.decode() for k, v in (await redis.hgetall(worker_stats_key(partition))).items()}
    now = time.time()
    now_window = int(now) // WINDOW_S
    # The last RATE_WINDOWS - 1 whole windows plus the current, partial one.
    recent = sum(int(stats.get(f"w:{w}", 0)) for w in range(now_window - RATE_WINDOWS + 1, now_window + 1))
    span_s = (RATE_WINDOWS - 1) * WINDOW_S + (now - now_window * WINDOW_S)
    lag = group.get("lag") if group else None
    lag_s = await _unread_age_s(redis, stream, group, now)
    return PartitionView(
        partition=partition,
        stream=stream,
        length=length,
        group_exists=group is not None,
        pending=int(group.get("pending", 0)) if group else 0,
        lag=int(lag) if lag is not None else None,
        lag_s=lag_s,
        consumers=sorted(consumers, key=lambda c: c.name),
        dead_letters=await redis.xlen(dead_letter_key(partition)),
        batches_in_flight=await redis.hlen(batches_key(partition)),
        last_insert_ms=int(stats["last_insert_ms"]) if "last_insert_ms" in stats else None,
        rows_per_s=recent / span_s,
        rows_total=int(stats.get("rows_total", 0)),
        recovered_batches=int(stats.get("recovered_total", 0)),
        dead_total=int(stats.get("dead_total", 0)),
        lost_total=int(stats.get("lost_total", 0)),
    )


async def _unread_age_s(
    redis: aioredis.Redis, stream: str, group: dict[str, Any] | None, now: float
) -> float:
    """The age of the first entry after the group's last delivered id: one XRANGE of one entry
    (O(log n)), cheap enough for every scrape, unlike an XPENDING over the whole group. The
    entry id's first part is the time Redis appended it."""
    last = group.get("last-delivered-id") if group else None
    start = "-" if last is None else "(" + (last.decode() if isinstance(last, bytes) else str(last))
    try:
        first = await redis.xrange(stream, min=start, max="+", count=1)
    except aioredis.ResponseError:
        return 0.0
    if not first:
        return 0.0
    entry_id = first[0][0]
    ms = int((entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-")[0])
    return max(0.0, now - ms / 1000)


def render(views: list[PartitionView], now_ms: int | None = None) -> str:
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    lines: list[str] = []
    for v in views:
        last = "never" if v.last_insert_ms is None else f"{(now_ms - v.last_insert_ms) / 1000:.1f}s ago"
        lines.append(
            f"partition {v.partition} ({v.stream}): length {v.length}, pending {v.pending}, "
            f"lag {'-' if v.lag is None else v.lag} ({v.lag_s:.1f}s), dead letters {v.dead_letters}, "
            f"batches in flight {v.batches_in_flight}"
        )
        lines.append(
            f"  last insert {last}, {v.rows_per_s:.1f} rows/s (last minute), rows {v.rows_total}, "
            f"recovered batches {v.recovered_batches}, dead-lettered {v.dead_total}, lost {v.lost_total}"
        )
        if not v.group_exists:
            lines.append("  no worker has joined this partition yet")
        for c in v.consumers:
            lines.append(f"  consumer {c.name}: pending {c.pending}, idle {c.idle_ms / 1000:.1f}s")
    return "\n".join(lines)
