"""Uptime: a post at `t` marks the bot up during `[t, t + window)`; uptime over `[start, end)`
is the length of the union of those intervals inside the range.

With the posts sorted, that union is the disjoint union of `[t_i, min(t_{i+1}, t_i + window))`,
so one window-function pass over the post timestamps (only the `ts` column of `bot_stats`,
by its `(bot_id, ts)` key, in 128-row granules) gives both the uptime and the gaps, with no
per-post work in Python.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from botpulse.runtime.clickhouse import Store

# Bounds used for "no range" (total uptime): inside DateTime64(3)'s range.
EPOCH_MS = 0
FAR_FUTURE_MS = 10_000_000_000_000
MAX_PERIODS = 1000
HOUR_MS = 3_600_000


def now_ms() -> int:
    return int(time.time() * 1000)


def connection_status(last: int | None, window_ms: int) -> str:
    """Connected while the last post still marks the bot up, by the same window as uptime."""
    return "connected" if last is not None and now_ms() - last < window_ms else "disconnected"


def floor_hour(ms: int) -> int:
    """Datagram rounds both ends of an uptime range down to the hour."""
    return ms // HOUR_MS * HOUR_MS


_POSTS = (
    "SELECT bot_id, t, leadInFrame(t, 1, greatest(t + {w:Int64}, {end:Int64})) OVER ("
    " PARTITION BY bot_id ORDER BY t ROWS BETWEEN CURRENT ROW AND 1 FOLLOWING) AS nxt"
    " FROM (SELECT bot_id, toUnixTimestamp64Milli(ts) AS t FROM bot_stats"
    " WHERE bot_id IN {ids:Array(String)}"
    " AND ts > fromUnixTimestamp64Milli({start:Int64} - {w:Int64}, 'UTC')"
    " AND ts < fromUnixTimestamp64Milli({end:Int64}, 'UTC'))"
)

# The same sum over a sorted array instead of a window function: one pass, cheaper for the
# Datagram routes, which need only the total (`python -m botpulse.bench.plans` compares the two).
UPTIME_SQL = (
    "SELECT bot_id, length(a), a[1], arraySum(arrayMap((t, nxt) ->"
    " greatest(0, least(nxt, t + {w:Int64}, {end:Int64}) - greatest(t, {start:Int64})), a,"
    " arrayPushBack(arrayPopFront(a), greatest(a[-1] + {w:Int64}, {end:Int64}))))"
    " FROM (SELECT bot_id, arraySort(groupArray(toUnixTimestamp64Milli(ts))) AS a FROM bot_stats"
    " WHERE bot_id IN {ids:Array(String)}"
    " AND ts > fromUnixTimestamp64Milli({start:Int64} - {w:Int64}, 'UTC')"
    " AND ts < fromUnixTimestamp64Milli({end:Int64}, 'UTC') GROUP BY bot_id)"
)

PERIODS_SQL = (
    "SELECT count(), min(t),"
    " sum(greatest(0, least(nxt, t + {w:Int64}, {end:Int64}) - greatest(t, {start:Int64}))),"
    " groupArrayIf({max_periods:UInt32})((greatest(t + {w:Int64}, {start:Int64}), least(nxt, {end:Int64})),"
    " least(nxt, {end:Int64}) > greatest(t + {w:Int64}, {start:Int64})),"
    " countIf(least(nxt, {end:Int64}) > greatest(t + {w:Int64}, {start:Int64}))"
    f" FROM ({_POSTS})"
)

LAST_SEEN_SQL = (
    "SELECT bot_id, toUnixTimestamp64Milli(max(last_ts)) FROM bot_stats_1d"
    " WHERE bot_id IN {ids:Array(String)} GROUP BY bot_id"
)


class Uptime(msgspec.Struct, frozen=True):
    uptime_ms: int
    offline: list[tuple[int, int]]
    offline_truncated: bool


async def uptimes(store: Store, bot_ids: list[str], start: int, end: int, window_ms: int) -> dict[str, int]:
    """Uptime ms per bot id (0 for a bot with no post in reach of the range)."""
    if end <= start or not bot_ids:
        return dict.fromkeys(bot_ids, 0)
    rows = await store.query(UPTIME_SQL, {"ids": bot_ids, "start": start, "end": end, "w": window_ms})
    found = {r[0]: int(r[3]) for r in rows}
    return {b: found.get(b, 0) for b in bot_ids}


async def uptime_with_periods(store: Store, bot_id: str, start: int, end: int, window_ms: int) -> Uptime:
    """Uptime of one bot plus its offline periods `(from, to)` inside `[start, end)`."""
    params: dict[str, Any] = {
        "ids": [bot_id], "start": start, "end": end, "w": window_ms, "max_periods": MAX_PERIODS,
    }  # fmt: skip
    count, first, up, gaps, gap_count = (await store.query(PERIODS_SQL, params))[0]
    if not count:
        return Uptime(0, [(start, end)], False)
    periods: list[tuple[int, int]] = []
    # Before the first post that reaches into the range.
    if int(first) > start:
        periods.append((start, min(int(first), end)))
    periods.extend((int(a), int(b)) for a, b in gaps)
    periods.sort()
    truncated = int(gap_count) > len(gaps)
    return Uptime(int(up), periods[:MAX_PERIODS], truncated or len(periods) > MAX_PERIODS)


async def last_seen(store: Store, bot_ids: list[str]) -> dict[str, int]:
    rows = await store.query(LAST_SEEN_SQL, {"ids": bot_ids})
    return {r[0]: int(r[1]) for r in rows}
