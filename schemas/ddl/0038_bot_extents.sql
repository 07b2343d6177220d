-- What each bot has beside its posts (issue 18): a bot's answer reads this row first and then
-- only the tables the bot has rows in. In the engine every table a statement touches costs
-- milliseconds even when the bot has no rows there, and most bots have no custom events, no
-- properties, no shards.
--
-- One row per bot once merged, fed by a view from each table it describes, so it is exact and
-- written in the same insert as the rows themselves. Each view sets only its own columns; the
-- others take their defaults (NULL, 0), which the aggregates ignore: min/max skip NULLs when
-- parts merge and when a read aggregates unmerged rows, and a flag's max keeps any 1.
--   events_first, events_last  the oldest and newest `custom_events` ts ever inserted (rows may
--                              have expired since: the bounds only ever widen, so a read that
--                              skips totals outside them skips only ranges without events)
--   has_props                  1 once the bot has a `bot_props` row
--   has_shards                 1 once the bot posted per shard (`shard_stats`, so `shard_latest`)
--   has_names                  1 once a custom metric name took a slot (`custom_metric_names`)
CREATE TABLE IF NOT EXISTS ${LOCAL:bot_extents}${ON_CLUSTER}
(
    bot_id        LowCardinality(String),
    events_first  SimpleAggregateFunction(min, Nullable(DateTime64(3, 'UTC'))),
    events_last   SimpleAggregateFunction(max, Nullable(DateTime64(3, 'UTC'))),
    has_props     SimpleAggregateFunction(max, UInt8),
    has_shards    SimpleAggregateFunction(max, UInt8),
    has_names     SimpleAggregateFunction(max, UInt8)
)
ENGINE = ${REPLICATED}AggregatingMergeTree
ORDER BY bot_id
SETTINGS non_replicated_deduplication_window = 10000;
-- distribute: bot_extents cityHash64(bot_id)

CREATE MATERIALIZED VIEW IF NOT EXISTS bot_extents_events_mv${ON_CLUSTER} TO ${LOCAL:bot_extents}
AS SELECT bot_id, min(ts) AS events_first, max(ts) AS events_last
FROM ${LOCAL:custom_events}
GROUP BY bot_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS bot_extents_props_mv${ON_CLUSTER} TO ${LOCAL:bot_extents}
AS SELECT bot_id, toUInt8(1) AS has_props
FROM ${LOCAL:bot_props}
GROUP BY bot_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS bot_extents_shards_mv${ON_CLUSTER} TO ${LOCAL:bot_extents}
AS SELECT bot_id, toUInt8(1) AS has_shards
FROM ${LOCAL:shard_stats}
GROUP BY bot_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS bot_extents_names_mv${ON_CLUSTER} TO ${LOCAL:bot_extents}
AS SELECT bot_id, toUInt8(1) AS has_names
FROM ${LOCAL:custom_metric_names}
GROUP BY bot_id;

-- The back-fill is 0039: on a cluster it goes through the Distributed tables, which exist only
-- once this file has run.
