"""Per-shard reads and a bot's extra properties.

A shard is up, and one of the bot's shards, by the rule in `runtime.shards` (shared with the
`shards_down` alerts). With any shards, the bot's `connectionState` is `connected` (all up),
`degraded` (some up) or `disconnected` (none), next to the unchanged two-valued
`connectionStatus`. Per-shard uptime over a range follows the bot's definition (a post at `t`
marks the shard up during `[t, t + window)`, cut short by the shard's next post), counting only
posts that reported the shard up.
"""

from __future__ import annotations

from typing import Any

import msgspec

from botpulse.runtime.clickhouse import Store
from botpulse.runtime.shards import is_known, is_up

# What a bot's answer adds, each a scalar column for the statement of its side reads
# (query/bot_reads.py): its properties, and each shard's last post. Read only for a bot whose
# `bot_extents` row says it has them.
PROPS_COLUMN = (
    "(SELECT groupArray((name, v)) FROM (SELECT name, argMax(value, ts) AS v FROM bot_props"
    " WHERE bot_id = {id:String} GROUP BY name ORDER BY name))"
)
SHARDS_COLUMN = (
    "(SELECT groupArray((shard_id, last, up)) FROM (SELECT shard_id,"
    " toUnixTimestamp64Milli(max(last_ts)) AS last, argMaxMerge(up) AS up FROM shard_latest"
    " WHERE bot_id = {id:String} GROUP BY shard_id))"
)

GRID_SQL = (
    "SELECT shard_id, toUnixTimestamp64Milli(min(first_ts)), toUnixTimestamp64Milli(max(last_ts)),"
    " argMaxMerge(up), argMaxMerge(status), argMaxMerge(guilds), argMaxMerge(users),"
    " argMaxMerge(api_ping) FROM shard_latest WHERE bot_id = {id:String}"
    " GROUP BY shard_id ORDER BY shard_id"
)

# Posts sorted by time as (ts, up); each up post counts until the next post or the window ends.
SHARD_UPTIME_SQL = (
    "SELECT shard_id, arraySum(arrayMap((p, nxt) -> if(p.2 = 1,"
    " greatest(0, least(nxt, p.1 + {w:Int64}, {end:Int64}) - greatest(p.1, {start:Int64})), 0), a,"
    " arrayPushBack(arrayPopFront(arrayMap(p -> p.1, a)), greatest(a[-1].1 + {w:Int64}, {end:Int64}))))"
    " FROM (SELECT shard_id, arraySort(groupArray((toUnixTimestamp64Milli(ts), up))) AS a"
    " FROM shard_stats WHERE bot_id = {id:String} AND shard_id IN {shards:Array(UInt32)}"
    " AND ts > fromUnixTimestamp64Milli({start:Int64} - {w:Int64}, 'UTC')"
    " AND ts < fromUnixTimestamp64Milli({end:Int64}, 'UTC') GROUP BY shard_id)"
)


class ShardSummary(msgspec.Struct, frozen=True):
    up: int
    total: int


class Extras(msgspec.Struct, frozen=True):
    properties: dict[str, str]
    shards: ShardSummary | None  # None: the bot never posted per shard


def extras_of(
    props: list[tuple[str, str]], shards: list[tuple[int, int, int]], now: int, window_ms: int
) -> Extras:
    """The `PROPS_COLUMN` and `SHARDS_COLUMN` values (empty when not read) as the bot's
    properties and shard summary."""
    known = [(int(last), int(up)) for _, last, up in shards if is_known(int(last), now)]
    summary = None
    if known:
        summary = ShardSummary(sum(is_up(last, up, now, window_ms) for last, up in known), len(known))
    return Extras({name: value for name, value in props}, summary)


def connection_state(status: str, shards: ShardSummary | None) -> str:
    """`connectionStatus` refined by the shards: `degraded` when some but not all are up."""
    if shards is None:
        return status
    if shards.up == shards.total:
        return "connected"
    return "degraded" if shards.up else "disconnected"


async def shard_grid(store: Store, bot_id: str, now: int, window_ms: int) -> list[dict[str, Any]]:
    """Every shard the bot still has (`runtime.shards.is_known`), with its latest values."""
    rows = await store.query(GRID_SQL, {"id": bot_id})
    grid = []
    for shard_id, first, last, up, status, guilds, users, ping in rows:
        if not is_known(int(last), now):
            continue
        grid.append(
            {
                "id": int(shard_id),
                "status": "up" if is_up(int(last), int(up), now, window_ms) else "down",
                "reportedStatus": status,
                "firstSeen": int(first),
                "lastSeen": int(last),
                "guilds": guilds,
                "users": users,
                "latency": ping,
            }
        )
    return grid


async def shard_uptimes(
    store: Store, bot_id: str, shard_ids: list[int], start: int, end: int, window_ms: int
) -> dict[int, int]:
    """Uptime ms of each shard in `[start, end)` (0 for a shard with no post in reach)."""
    if not shard_ids:
        return {}
    params = {"id": bot_id, "shards": shard_ids, "start": start, "end": end, "w": window_ms}
    found = {int(r[0]): int(r[1]) for r in await store.query(SHARD_UPTIME_SQL, params)}
    return {s: found.get(s, 0) for s in shard_ids}
