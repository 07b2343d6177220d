-- Extra properties and shards (issue 19).

-- The latest value of each extra (non-numeric) property a bot posts, e.g. DisStat's
-- `{"version": "2.4.1"}`. A bot holds at most a few names (BOTPULSE_PROPERTY_SLOTS, enforced by
-- the gateway), so a bot's answer reads a handful of rows. The newest `ts` wins on merge; reads
-- use argMax, so parts not merged yet answer the same.
CREATE TABLE IF NOT EXISTS ${LOCAL:bot_props}${ON_CLUSTER}
(
    bot_id      LowCardinality(String),
    name        String,
    ts          DateTime64(3, 'UTC'),
    value       String
)
ENGINE = ${REPLICATED}ReplacingMergeTree(ts)
ORDER BY (bot_id, name)
SETTINGS non_replicated_deduplication_window = 10000;
-- distribute: bot_props cityHash64(bot_id)

-- One row per shard per post that carried shard values (`shardId`, or a `shards` array). The
-- bot's totals are rows of `bot_stats` as before; this table only answers per-shard questions,
-- so a bot's own reads never scan it.
CREATE TABLE IF NOT EXISTS ${LOCAL:shard_stats}${ON_CLUSTER}
(
    bot_id      LowCardinality(String),
    shard_id    UInt32,
    ts          DateTime64(3, 'UTC'),
    event_id    String,
    up          UInt8,
    status      LowCardinality(Nullable(String)),
    guilds      Nullable(UInt64),
    users       Nullable(UInt64),
    api_ping    Nullable(Float64)
)
ENGINE = ${REPLICATED}MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (bot_id, shard_id, ts)
TTL toDateTime(ts) + INTERVAL ${TTL_DAYS} DAY
SETTINGS index_granularity = 1024, non_replicated_deduplication_window = 10000;
-- distribute: shard_stats cityHash64(bot_id)

-- Each shard's latest values and last post: one row per (bot, shard) once merged, so the shard
-- grid and the bot's `shardsUp` read at most BOTPULSE_SHARD_LIMIT rows.
CREATE TABLE IF NOT EXISTS ${LOCAL:shard_latest}${ON_CLUSTER}
(
    bot_id      LowCardinality(String),
    shard_id    UInt32,
    first_ts    SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_ts     SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    up          AggregateFunction(argMax, UInt8, DateTime64(3, 'UTC')),
    status      AggregateFunction(argMax, Nullable(String), DateTime64(3, 'UTC')),
    guilds      AggregateFunction(argMax, Nullable(UInt64), DateTime64(3, 'UTC')),
    users       AggregateFunction(argMax, Nullable(UInt64), DateTime64(3, 'UTC')),
    api_ping    AggregateFunction(argMax, Nullable(Float64), DateTime64(3, 'UTC'))
)
ENGINE = ${REPLICATED}AggregatingMergeTree
ORDER BY (bot_id, shard_id)
SETTINGS non_replicated_deduplication_window = 10000;
-- distribute: shard_latest cityHash64(bot_id)

CREATE MATERIALIZED VIEW IF NOT EXISTS shard_latest_mv${ON_CLUSTER} TO ${LOCAL:shard_latest}
AS SELECT
    bot_id,
    shard_id,
    min(ts) AS first_ts,
    max(ts) AS last_ts,
    argMaxState(up, ts) AS up,
    argMaxState(CAST(status, 'Nullable(String)'), ts) AS status,
    argMaxState(guilds, ts) AS guilds,
    argMaxState(users, ts) AS users,
    argMaxState(api_ping, ts) AS api_ping
FROM ${LOCAL:shard_stats}
GROUP BY bot_id, shard_id;
