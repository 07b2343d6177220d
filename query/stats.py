"""`dataPoints` bucketing of a bot's stats, exactly as defined on raw posts, served mostly from
the roll-ups.

Definition: `[start, end)` is split into `n` buckets; a post at `t` (ms) falls in bucket
`floor((t - start) * n / (end - start))`, whose `time` is the smallest ms that maps to it
(`start + ceil(i * (end - start) / n)`). Per bucket: the newest non-null value of the "last"
fields, the mean of the non-null values of the averaged fields, and per custom metric the mean
over the posts that carried it.

Plan: each roll-up row (a UTC day, hour or minute) is used when its whole block lies inside
one bucket, and only if the next coarser block around it does not (then that coarser row is
used instead). Posts in minutes that straddle a bucket edge (or the range edges) come from the
raw table. Every post is therefore counted exactly once, at the coarsest level that keeps the
answer identical to the raw definition; argMax/avg states merge losslessly.
"""

from __future__ import annotations

from typing import Any

from runtime.clickhouse import Store

LAST_FIELDS = {"guilds": "guilds", "users": "users", "shards": "shards", "ramTotal": "ram_total"}
AVG_FIELDS = {"apiPing": "api_ping", "ramUsage": "ram_usage", "cpu": "cpu", "bandwidth": "bandwidth"}

_MINUTE, _HOUR, _DAY = 60_000, 3_600_000, 86_400_000

# Bucket index of a ms timestamp, and "the block [b, b + r) lies in one bucket inside the range".
_IDX = "intDiv(({t} - {{start:Int64}}) * {{n:Int64}}, {{span:Int64}})"


def _idx(expr: str) -> str:
    return _IDX.format(t=expr)


def _fits(block_ms: str, size: int) -> str:
    return (
        f"({block_ms} >= {{start:Int64}} AND {block_ms} + {size} <= {{end:Int64}} "
        f"AND {_idx(block_ms)} = {_idx(f'{block_ms} + {size - 1}')})"
    )


def _floor(expr: str, size: int) -> str:
    return f"intDiv({expr}, {size}) * {size}"


_STATE_COLUMNS = ", ".join([f"{c}" for c in LAST_FIELDS.values()] + [f"{c}" for c in AVG_FIELDS.values()])


def _rollup_level(table: str, size: int, parent: int | None) -> str:
    block = "(toInt64(toUnixTimestamp(bucket)) * 1000)"
    cond = _fits(block, size)
    if parent is not None:
        cond += f" AND NOT {_fits(_floor(block, parent), parent)}"
    return (
        f"SELECT {_idx(block)} AS i, posts, {_STATE_COLUMNS}, custom_sum, custom_count "
        f"FROM {table} WHERE bot_id = {{id:String}} "
        f"AND bucket >= toDateTime(intDiv({{start:Int64}}, 1000), 'UTC') "
        f"AND bucket < toDateTime(intDiv({{end:Int64}}, 1000), 'UTC') AND {cond}"
    )


def _raw_level() -> str:
    t = "toUnixTimestamp64Milli(ts)"
    states = ", ".join(
        [f"argMaxState({c}, ts) AS {c}" for c in LAST_FIELDS.values()]
        + [f"avgState({c}) AS {c}" for c in AVG_FIELDS.values()]
    )
    return (
        f"SELECT {_idx(t)} AS i, count() AS posts, {states}, "
        "sumMap(CAST(custom, 'Map(String, Float64)')) AS custom_sum, "
        "sumMap(CAST(mapApply((k, v) -> (k, toUInt64(1)), custom), 'Map(String, UInt64)')) "
        "AS custom_count "
        "FROM bot_stats WHERE bot_id = {id:String} "
        "AND ts >= fromUnixTimestamp64Milli({start:Int64}, 'UTC') "
        "AND ts < fromUnixTimestamp64Milli({end:Int64}, 'UTC') "
        f"AND NOT {_fits(_floor(t, _MINUTE), _MINUTE)} GROUP BY i"
    )


BUCKETS_SQL = (
    "SELECT i, sum(posts), "
    + ", ".join(
        [f"argMaxMerge({c})" for c in LAST_FIELDS.values()] + [f"avgMerge({c})" for c in AVG_FIELDS.values()]
    )
    + ", sumMap(custom_sum), sumMap(custom_count) FROM ("
    + " UNION ALL ".join(
        [
            _rollup_level("bot_stats_1d", _DAY, None),
            _rollup_level("bot_stats_1h", _HOUR, _DAY),
            _rollup_level("bot_stats_1m", _MINUTE, _HOUR),
            _raw_level(),
        ]
    )
    + ") GROUP BY i ORDER BY i"
)

CUSTOM_TOTALS_SQL = (
    "SELECT type, value1, c, total FROM ("
    " SELECT type, value1, count() AS c, sum(count()) OVER (PARTITION BY type) AS total"
    " FROM custom_events WHERE bot_id = {id:String}"
    " AND ts >= fromUnixTimestamp64Milli({start:Int64}, 'UTC')"
    " AND ts < fromUnixTimestamp64Milli({end:Int64}, 'UTC')"
    " {type_filter} GROUP BY type, value1)"
    " ORDER BY type, isNull(value1), c DESC, value1 LIMIT {limit:UInt32} BY type"
)


def bucket_time(start: int, span: int, n: int, i: int) -> int:
    """The smallest ms that maps to bucket i (ceil division, so it matches `_IDX` exactly)."""
    return start + -((-i * span) // n)


async def buckets(
    store: Store, bot_id: str, start: int, end: int, n: int, custom_names: list[str]
) -> list[dict[str, Any]]:
    span = end - start
    rows = await store.query(BUCKETS_SQL, {"id": bot_id, "start": start, "end": end, "n": n, "span": span})
    by_index = {int(r[0]): r for r in rows}
    names = set(custom_names)
    for r in rows:
        names.update(r[11].keys())
    ordered_names = sorted(names)
    out: list[dict[str, Any]] = []
    last = list(LAST_FIELDS)
    avg = list(AVG_FIELDS)
    for i in range(n):
        bucket: dict[str, Any] = {"time": bucket_time(start, span, n, i)}
        r = by_index.get(i)
        for k, name in enumerate(last):
            bucket[name] = None if r is None else r[2 + k]
        for k, name in enumerate(avg):
            bucket[name] = None if r is None else r[6 + k]
        sums: dict[str, float] = r[10] if r is not None else {}
        counts: dict[str, int] = r[11] if r is not None else {}
        bucket["custom"] = {
            name: (sums.get(name, 0.0) / counts[name]) if counts.get(name) else None for name in ordered_names
        }
        out.append(bucket)
    return out


async def custom_totals(
    store: Store, bot_id: str, start: int, end: int, *, limit: int = 10, type_: str | None = None
) -> dict[str, dict[str, Any]]:
    """Per custom-graph type in `[start, end)`: the count of entries and the top `value1`s."""
    sql = CUSTOM_TOTALS_SQL.replace("{type_filter}", "AND type = {type:String}" if type_ else "")
    params: dict[str, Any] = {"id": bot_id, "start": start, "end": end, "limit": limit + 1}
    if type_:
        params["type"] = type_
    rows = await store.query(sql, params)
    totals: dict[str, dict[str, Any]] = {}
    for type_name, value, count, total in rows:
        entry = totals.setdefault(type_name, {"count": int(total), "top": []})
        if value is not None and len(entry["top"]) < limit:
            entry["top"].append({"value": value, "count": int(count)})
    return totals
