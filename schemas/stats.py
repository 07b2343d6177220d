"""The stats columns: one table that the gateway's payload, the worker's rows, the query
service's buckets, listing and leaderboards, and the bench's synthetic history all read.

Each standard stat of a post has an API name (what DisStat clients post and read back), a
column (of `bot_stats` and of the roll-ups, and the `StatsPayload` attribute in
schemas/stream.py), a bucket aggregation and a ClickHouse type:

- "last" fields are levels (how many guilds now): a bucket or a listing shows the newest
  non-null value (`argMax(…, ts)`, `argMaxState` in the roll-ups);
- "avg" fields are samples (a ping, a CPU reading): a bucket shows the mean of the non-null
  values (`avg`, `avgState`).

`listed` marks the counts the `GET /v1/bots` listing shows and filters on. Columns are
`Nullable(<type>)` in `bot_stats`: an absent field stays NULL. tests/test_stats_columns.py checks
this table against the DDL snapshot (schemas/schema.txt), the stream payload and the request body.
"""

from __future__ import annotations

from typing import Literal

import msgspec


class StatsField(msgspec.Struct, frozen=True):
    api: str  # the name in request and response bodies
    column: str  # the ClickHouse column and the StatsPayload attribute
    kind: Literal["last", "avg"]
    clickhouse_type: str  # inside Nullable(…) in bot_stats
    listed: bool = False


# In column order (the order of bot_stats and of every row the worker builds).
STATS_FIELDS: tuple[StatsField, ...] = (
    StatsField("guilds", "guilds", "last", "UInt64", listed=True),
    StatsField("users", "users", "last", "UInt64", listed=True),
    StatsField("shards", "shards", "last", "UInt64", listed=True),
    StatsField("apiPing", "api_ping", "avg", "Float64"),
    StatsField("ramUsage", "ram_usage", "avg", "Float64"),
    StatsField("ramTotal", "ram_total", "last", "Float64"),
    StatsField("cpu", "cpu", "avg", "Float64"),
    StatsField("bandwidth", "bandwidth", "avg", "Float64"),
)

# API name -> column, per kind (in column order).
LAST_FIELDS: dict[str, str] = {f.api: f.column for f in STATS_FIELDS if f.kind == "last"}
AVG_FIELDS: dict[str, str] = {f.api: f.column for f in STATS_FIELDS if f.kind == "avg"}
LISTED_FIELDS: dict[str, str] = {f.api: f.column for f in STATS_FIELDS if f.listed}

STATS_TABLE = "bot_stats"
# Every column of `bot_stats`, in order: the post's identity, the stats, its custom metrics.
STATS_COLUMNS: list[str] = ["bot_id", "ts", "event_id", *(f.column for f in STATS_FIELDS), "custom"]
