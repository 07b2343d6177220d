"""When a shard counts as up, shared by the shards read (query.shards) and the `shards_down`
alert condition (alerts.conditions), so the API and the alerts never disagree about a shard.

A shard is up while its last post is younger than the heartbeat window (the same window as the
bot's uptime) and that post did not report a down status. A bot's shards are those that posted
in the last `SHARD_FORGET_MS` (older ones were removed by resharding).
"""

from __future__ import annotations

from botpulse.runtime.clickhouse import Store
from botpulse.schemas.stream import SHARD_FORGET_MS

# Each shard's newest post and the up flag it reported, for several bots in one read.
LATEST_SQL = (
    "SELECT bot_id, shard_id, toUnixTimestamp64Milli(max(last_ts)), argMaxMerge(up) FROM shard_latest"
    " WHERE bot_id IN {ids:Array(String)} GROUP BY bot_id, shard_id ORDER BY bot_id, shard_id"
)


def is_up(last: int, up: int, now: int, window_ms: int) -> bool:
    return bool(up) and now - last < window_ms


def is_known(last: int, now: int) -> bool:
    """Still one of the bot's shards (posted within `SHARD_FORGET_MS`)."""
    return now - last < SHARD_FORGET_MS


async def shard_states(
    store: Store, bot_ids: list[str], now: int, window_ms: int
) -> dict[str, list[tuple[int, bool]]]:
    """Per bot, its known shards as (shard id, up), by shard id; a bot that never posted per
    shard (or whose shards were all forgotten) is absent."""
    out: dict[str, list[tuple[int, bool]]] = {}
    if not bot_ids:
        return out
    for bot_id, shard_id, last, up in await store.query(LATEST_SQL, {"ids": sorted(set(bot_ids))}):
        if is_known(int(last), now):
            out.setdefault(bot_id, []).append((int(shard_id), is_up(int(last), int(up), now, window_ms)))
    return out
