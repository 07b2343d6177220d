-- Scoped API keys, per-account limits, and a per-bot summary for the listings.

-- Named API keys of an account, besides the account key in `accounts`. `scope` is fixed at
-- creation: 'ingest' (post only; `bots` non-empty limits it to those bots), 'read' or 'manage'.
-- `bot` is set for a bot's own ingest token (the one `POST /bots/{id}/keys/regen` rotates).
-- Rows are versions (the newest by updated_at wins, read with FINAL); a revoked key keeps its
-- row with revoked = 1. Only the SHA-256 of a key is stored.
CREATE TABLE IF NOT EXISTS ${LOCAL:api_keys}${ON_CLUSTER}
(
    id          String,
    account_id  String,
    name        String,
    scope       LowCardinality(String),
    bots        Array(String),
    bot         String DEFAULT '',
    key_hash    String,
    key_prefix  String,
    created_at  DateTime64(3, 'UTC'),
    updated_at  DateTime64(3, 'UTC'),
    revoked     UInt8 DEFAULT 0
)
ENGINE = ${REPLICATED}ReplacingMergeTree(updated_at)
ORDER BY id;
-- distribute: api_keys cityHash64(id)

-- When each key was last used, flushed from Redis now and then (never written per post).
CREATE TABLE IF NOT EXISTS ${LOCAL:api_key_usage}${ON_CLUSTER}
(
    key_id        String,
    last_used_at  DateTime64(3, 'UTC')
)
ENGINE = ${REPLICATED}ReplacingMergeTree(last_used_at)
ORDER BY key_id;
-- distribute: api_key_usage cityHash64(key_id)

-- The operator's per-account overrides of the quotas (NULL: the setting's default).
CREATE TABLE IF NOT EXISTS ${LOCAL:account_limits}${ON_CLUSTER}
(
    account_id               String,
    bots                     Nullable(UInt32),
    api_keys                 Nullable(UInt32),
    custom_event_types       Nullable(UInt32),
    registry_writes_per_min  Nullable(UInt32),
    posts_per_min            Nullable(UInt32),
    updated_at               DateTime64(3, 'UTC')
)
ENGINE = ${REPLICATED}ReplacingMergeTree(updated_at)
ORDER BY account_id;
-- distribute: account_limits cityHash64(account_id)

-- The newest values per bot, one row per bot once merged: `GET /v1/bots` and `/v1/top` read
-- this instead of the daily roll-up, so they cost per bot, not per bot-day. Only idempotent
-- aggregates (argMax, max): the back-fill below may overlap rows the view already wrote.
CREATE TABLE IF NOT EXISTS ${LOCAL:bot_latest}${ON_CLUSTER}
(
    bot_id     LowCardinality(String),
    last_ts    SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    guilds     AggregateFunction(argMax, Nullable(UInt64), DateTime64(3, 'UTC')),
    users      AggregateFunction(argMax, Nullable(UInt64), DateTime64(3, 'UTC')),
    shards     AggregateFunction(argMax, Nullable(UInt64), DateTime64(3, 'UTC')),
    ram_total  AggregateFunction(argMax, Nullable(Float64), DateTime64(3, 'UTC'))
)
ENGINE = ${REPLICATED}AggregatingMergeTree
ORDER BY bot_id
SETTINGS non_replicated_deduplication_window = 10000;
-- distribute: bot_latest cityHash64(bot_id)

CREATE MATERIALIZED VIEW IF NOT EXISTS bot_latest_mv${ON_CLUSTER} TO ${LOCAL:bot_latest}
AS SELECT
    bot_id,
    max(ts) AS last_ts,
    argMaxState(guilds, ts) AS guilds,
    argMaxState(users, ts) AS users,
    argMaxState(shards, ts) AS shards,
    argMaxState(ram_total, ts) AS ram_total
FROM ${LOCAL:bot_stats}
GROUP BY bot_id;

INSERT INTO ${LOCAL:bot_latest}
SELECT bot_id, max(last_ts), argMaxMergeState(guilds), argMaxMergeState(users), argMaxMergeState(shards),
    argMaxMergeState(ram_total)
FROM ${LOCAL:bot_stats_1d}
GROUP BY bot_id;
