"""`dataPoints` bucketing of a bot's stats, exactly as defined on raw posts, served mostly from
the roll-ups.

Definition: `[start, end)` is split into `n` buckets; a post at `t` (ms) falls in bucket
`floor((t - start) * n / (end - start))`, whose `time` is the smallest ms that maps to it
(`start + ceil(i * (end - start) / n)`). Per bucket: the newest non-null value of the "last"
fields, the mean of the non-null values of the averaged fields, and per custom metric the mean
over the posts that carried it.

Plans. When every bucket edge and both range ends fall on an hour (the dashboard's ranges, and
any client that asks that way), the hourly roll-up alone answers: one read of `bot_stats_1h`, a
row per hour, whatever the range's length. Otherwise, up to `RAW_MAX_HOURS` the posts of the
range are aggregated directly (one read of `bot_stats`; below ~40 days of 1-minute posts this
beats the two-level plan's fixed costs).
Longer ranges use the two-level plan: an hour of `bot_stats_1h` is used when the whole hour lies
inside one bucket; the posts of every other hour in the range (the "ragged" hours, which hold a
bucket edge or a range end) come from `bot_stats`, the raw posts in 128-row granules, so
only those hours are read. Every post is therefore counted exactly once, and argMax/avg states
merge losslessly, so the answer is identical to the raw definition. The ragged hours are at most
`dataPoints + 1`, so a year costs about what a month does: 8760 hourly rows plus <= 1001 hours of
posts.
"""

from __future__ import annotations

from typing import Any

from botpulse.query.uptime import HOUR_MS
from botpulse.runtime.clickhouse import Store
from botpulse.schemas.account import MAX_EVENT_TYPES
from botpulse.schemas.stats import AVG_FIELDS, LAST_FIELDS

_IDX = "intDiv(({t} - {{start:Int64}}) * {{n:Int64}}, {{span:Int64}})"
_STATE_COLUMNS = ", ".join([*LAST_FIELDS.values(), *AVG_FIELDS.values()])
# A bucket row from roll-up states (either plan that reads them): posts, the merged "last" and
# averaged fields, custom sums and counts.
_MERGED = ", ".join(
    ["sum(posts)"]
    + [f"argMaxMerge({c})" for c in LAST_FIELDS.values()]
    + [f"avgMerge({c})" for c in AVG_FIELDS.values()]
    + ["sumMap(custom_sum)", "sumMap(custom_count)"]
)

# The two levels are exact complements: `hours` is the sorted list of ragged hour numbers
# (`ragged_hours`), the hourly level takes every other hour inside the range, the posts level
# the posts of those hours (clipped to the range). The IN sets also narrow the primary-key reads.
_HOURS_LEVEL = (
    "SELECT " + _IDX.format(t="toInt64(toUnixTimestamp(bucket)) * 1000") + " AS i, posts, "
    f"{_STATE_COLUMNS}, custom_sum, custom_count "
    "FROM bot_stats_1h WHERE bot_id = {id:String} "
    "AND bucket >= toDateTime(intDiv({start:Int64} + 3599999, 3600000) * 3600, 'UTC') "
    "AND bucket < toDateTime(intDiv({end:Int64}, 3600000) * 3600, 'UTC') "
    "AND intDiv(toUnixTimestamp(bucket), 3600) NOT IN {hours:Array(Int64)}"
)

_POSTS_LEVEL = (
    "SELECT "
    + _IDX.format(t="toUnixTimestamp64Milli(ts)")
    + " AS i, count() AS posts, "
    + ", ".join(
        [f"argMaxState({c}, ts) AS {c}" for c in LAST_FIELDS.values()]
        + [f"avgState({c}) AS {c}" for c in AVG_FIELDS.values()]
    )
    + ", sumMap(CAST(custom, 'Map(String, Float64)')) AS custom_sum, "
    "sumMap(CAST(mapApply((k, v) -> (k, toUInt64(1)), custom), 'Map(String, UInt64)')) "
    "AS custom_count "
    "FROM bot_stats WHERE bot_id = {id:String} "
    "AND intDiv(toUnixTimestamp64Milli(ts), 3600000) IN {hours:Array(Int64)} "
    "AND ts >= fromUnixTimestamp64Milli({start:Int64}, 'UTC') "
    "AND ts < fromUnixTimestamp64Milli({end:Int64}, 'UTC') GROUP BY i"
)

# Short ranges: every post of the range aggregated directly. Below a few weeks of 1-minute posts
# this is cheaper than the two-level plan, whose fixed cost (two table reads, a key analysis over
# a set of scattered hours, merging aggregate states) dominates there.
RAW_BUCKETS_SQL = (
    "SELECT "
    + _IDX.format(t="toUnixTimestamp64Milli(ts)")
    + " AS i, count(), "
    + ", ".join(
        [f"argMax({c}, ts)" for c in LAST_FIELDS.values()] + [f"avg({c})" for c in AVG_FIELDS.values()]
    )
    + ", sumMap(CAST(custom, 'Map(String, Float64)')), "
    "sumMap(CAST(mapApply((k, v) -> (k, toUInt64(1)), custom), 'Map(String, UInt64)')) "
    "FROM bot_stats WHERE bot_id = {id:String} "
    "AND ts >= fromUnixTimestamp64Milli({start:Int64}, 'UTC') "
    "AND ts < fromUnixTimestamp64Milli({end:Int64}, 'UTC') GROUP BY i ORDER BY i"
)

# Ranges up to this many hours (40 days) are read raw (see RAW_BUCKETS_SQL): up to there, reading
# every post costs less than the two-level plan's fixed costs, with a margin below where the two
# meet (`python -m botpulse.bench.plans` compares them; docs/benchmarks.md has the figures).
RAW_MAX_HOURS = 960

# Every bucket edge on an hour (the dashboard asks this way; see `ragged_hours`): the hourly
# roll-up alone answers, exactly, whatever the range's length. The hour that holds now is whole
# in the range too (the range ends at or after its end), and its row already holds every post.
HOURLY_BUCKETS_SQL = (
    "SELECT "
    + _IDX.format(t="toInt64(toUnixTimestamp(bucket)) * 1000")
    + f" AS i, {_MERGED} FROM bot_stats_1h "
    "WHERE bot_id = {id:String} "
    "AND bucket >= toDateTime(intDiv({start:Int64}, 1000), 'UTC') "
    "AND bucket < toDateTime(intDiv({end:Int64}, 1000), 'UTC') GROUP BY i ORDER BY i"
)

BUCKETS_SQL = f"SELECT i, {_MERGED} FROM ({_HOURS_LEVEL} UNION ALL {_POSTS_LEVEL}) GROUP BY i ORDER BY i"

# At most `max_types` types (the most used), each with its top `limit` values: the answer's size
# is bounded whatever a bot posted before types took slots.
CUSTOM_TOTALS_SQL = (
    "SELECT type, value1, c, total FROM ("
    " SELECT type, value1, c, total, dense_rank() OVER (ORDER BY total DESC, type) AS r FROM ("
    " SELECT type, value1, count() AS c, sum(count()) OVER (PARTITION BY type) AS total"
    " FROM custom_events WHERE bot_id = {id:String}"
    " AND ts >= fromUnixTimestamp64Milli({start:Int64}, 'UTC')"
    " AND ts < fromUnixTimestamp64Milli({end:Int64}, 'UTC')"
    " {type_filter} GROUP BY type, value1))"
    " WHERE r <= {max_types:UInt32}"
    " ORDER BY type, isNull(value1), c DESC, value1 LIMIT {limit:UInt32} BY type"
)


# A bucket row: index, posts, the "last" fields, the averaged fields, custom sums, custom counts.
_STAT_NAMES = [*LAST_FIELDS, *AVG_FIELDS]
_SUMS = 2 + len(_STAT_NAMES)
_COUNTS = _SUMS + 1


def bucket_time(start: int, span: int, n: int, i: int) -> int:
    """The smallest ms that maps to bucket i (ceil division, so it matches `_IDX` exactly)."""
    return start + -((-i * span) // n)


def ragged_hours(start: int, end: int, n: int) -> list[int]:
    """Hour numbers (ms // 3600000) of the hours that hold a bucket edge or a range end strictly
    inside them: exactly the hours `bot_stats_1h` cannot serve."""
    span = end - start
    edges = [start, end, *(bucket_time(start, span, n, i) for i in range(1, n))]
    return sorted({e // HOUR_MS for e in edges if e % HOUR_MS})


def is_hour_aligned(start: int, end: int, n: int) -> bool:
    """Whether every bucket edge and both ends fall on an hour (no ragged hour), without listing
    the edges: both ends on hours and a whole number of hours per bucket (the first edge,
    start + span / n, is on an hour only then)."""
    return start % HOUR_MS == 0 and end % HOUR_MS == 0 and ((end - start) // HOUR_MS) % n == 0


def buckets_statement(bot_id: str, start: int, end: int, n: int) -> tuple[str, dict[str, Any]]:
    """The statement that answers `[start, end)` in `n` buckets (the plans above), and its
    parameters."""
    span = end - start
    params: dict[str, Any] = {"id": bot_id, "start": start, "end": end, "n": n, "span": span}
    if is_hour_aligned(start, end, n):
        return HOURLY_BUCKETS_SQL, params
    if span <= RAW_MAX_HOURS * HOUR_MS:
        return RAW_BUCKETS_SQL, params
    return BUCKETS_SQL, {**params, "hours": ragged_hours(start, end, n)}


async def buckets(
    store: Store, bot_id: str, start: int, end: int, n: int, custom_names: list[str]
) -> list[dict[str, Any]]:
    rows = await store.query(*buckets_statement(bot_id, start, end, n))
    return buckets_of(rows, start, end, n, custom_names)


def buckets_of(
    rows: list[tuple[Any, ...]], start: int, end: int, n: int, custom_names: list[str]
) -> list[dict[str, Any]]:
    """The `n` buckets from the rows of `buckets_statement`; every bucket has an entry (null
    when no value) for each of `custom_names` and each custom metric of the range."""
    span = end - start
    by_index = {int(r[0]): r for r in rows}
    names = set(custom_names)
    for r in rows:
        names.update(r[_COUNTS].keys())
    ordered_names = sorted(names)
    out: list[dict[str, Any]] = []
    for i in range(n):
        bucket: dict[str, Any] = {"time": bucket_time(start, span, n, i)}
        r = by_index.get(i)
        for k, name in enumerate(_STAT_NAMES):
            bucket[name] = None if r is None else r[2 + k]
        sums: dict[str, float] = r[_SUMS] if r is not None else {}
        counts: dict[str, int] = r[_COUNTS] if r is not None else {}
        bucket["custom"] = {
            name: (sums.get(name, 0.0) / counts[name]) if counts.get(name) else None for name in ordered_names
        }
        out.append(bucket)
    return out


def totals_statement(
    bot_id: str, start: int, end: int, *, limit: int = 10, type_: str | None = None
) -> tuple[str, dict[str, Any]]:
    """The statement of `custom_totals` and its parameters (it asks for one more than `limit`)."""
    sql = CUSTOM_TOTALS_SQL.replace("{type_filter}", "AND type = {type:String}" if type_ else "")
    params: dict[str, Any] = {
        "id": bot_id, "start": start, "end": end, "limit": limit + 1, "max_types": MAX_EVENT_TYPES,
    }  # fmt: skip
    if type_:
        params["type"] = type_
    return sql, params


async def custom_totals(
    store: Store, bot_id: str, start: int, end: int, *, limit: int = 10, type_: str | None = None
) -> dict[str, dict[str, Any]]:
    """Per custom-graph type in `[start, end)`: the count of entries and the top `value1`s."""
    rows = await store.query(*totals_statement(bot_id, start, end, limit=limit, type_=type_))
    return totals_of(rows, limit)


def totals_of(rows: list[tuple[Any, ...]], limit: int = 10) -> dict[str, dict[str, Any]]:
    """`custom_totals` from the rows of `totals_statement` (asked with the same `limit`)."""
    totals: dict[str, dict[str, Any]] = {}
    for type_name, value, count, total in rows:
        entry = totals.setdefault(type_name, {"count": int(total), "top": []})
        if value is not None and len(entry["top"]) < limit:
            entry["top"].append({"value": value, "count": int(count)})
    return totals
