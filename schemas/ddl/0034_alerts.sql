-- Alerts (docs/alerts.md): the rules and destinations accounts manage through the account API,
-- and the per-bot latest-post table the evaluator reads every few seconds.

-- Rules and destinations are versions like the registry's rows: the newest (by updated_at) wins,
-- read with FINAL. `spec` holds the rule or destination as validated JSON (schemas/alerts.py);
-- the columns beside it are what lookups filter on.
CREATE TABLE IF NOT EXISTS ${LOCAL:alert_rules}${ON_CLUSTER}
(
    id          String,
    account_id  String,
    bot_id      String,
    spec        String,
    created_at  DateTime64(3, 'UTC'),
    updated_at  DateTime64(3, 'UTC'),
    deleted     UInt8 DEFAULT 0
)
ENGINE = ${REPLICATED}ReplacingMergeTree(updated_at)
ORDER BY id;
-- distribute: alert_rules cityHash64(id)

-- A destination's signing secret is kept as it is (a signature cannot be made from a hash of
-- the key); it is shown once, at creation, and never in a listing, log or error.
CREATE TABLE IF NOT EXISTS ${LOCAL:alert_destinations}${ON_CLUSTER}
(
    id          String,
    account_id  String,
    spec        String,
    secret      String,
    created_at  DateTime64(3, 'UTC'),
    updated_at  DateTime64(3, 'UTC'),
    deleted     UInt8 DEFAULT 0
)
ENGINE = ${REPLICATED}ReplacingMergeTree(updated_at)
ORDER BY id;
-- distribute: alert_destinations cityHash64(id)

-- The newest post per bot, so "when did every bot last post" is one small read instead of a
-- scan of bot_stats: parts hold at most one row per bot and merge down to one.
CREATE TABLE IF NOT EXISTS ${LOCAL:bot_latest}${ON_CLUSTER}
(
    bot_id   LowCardinality(String),
    last_ts  SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = ${REPLICATED}AggregatingMergeTree
ORDER BY bot_id;
-- distribute: bot_latest cityHash64(bot_id)

CREATE MATERIALIZED VIEW IF NOT EXISTS bot_latest_mv${ON_CLUSTER} TO ${LOCAL:bot_latest}
AS SELECT bot_id, max(ts) AS last_ts
FROM ${LOCAL:bot_stats}
GROUP BY bot_id;

-- Bots that posted before this version: their newest post from the daily roll-up (max() makes
-- a post the view also saw harmless). On a cluster this reads the shard of the node that runs
-- the migration; the other shards' bots get their row with their next post.
INSERT INTO ${LOCAL:bot_latest} SELECT bot_id, max(last_ts) FROM ${LOCAL:bot_stats_1d} GROUP BY bot_id;
