-- Roll-ups for long ranges: one AggregatingMergeTree per resolution, fed by a materialized view
-- from bot_stats. "Last" fields keep argMax state (the newest non-null value), averaged fields
-- keep avg state, custom metrics keep per-name sums and counts. Each target keeps a
-- deduplication window so a deduplicated retry of a batch is not counted twice
-- (inserts run with deduplicate_blocks_in_dependent_materialized_views = 1).

CREATE TABLE IF NOT EXISTS ${LOCAL:bot_stats_1m}${ON_CLUSTER}
(
    bot_id        LowCardinality(String),
    bucket        DateTime('UTC'),
    posts         SimpleAggregateFunction(sum, UInt64),
    first_ts      SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_ts       SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    guilds        AggregateFunction(argMax, Nullable(UInt64), DateTime64(3, 'UTC')),
    users         AggregateFunction(argMax, Nullable(UInt64), DateTime64(3, 'UTC')),
    shards        AggregateFunction(argMax, Nullable(UInt64), DateTime64(3, 'UTC')),
    ram_total     AggregateFunction(argMax, Nullable(Float64), DateTime64(3, 'UTC')),
    api_ping      AggregateFunction(avg, Nullable(Float64)),
    ram_usage     AggregateFunction(avg, Nullable(Float64)),
    cpu           AggregateFunction(avg, Nullable(Float64)),
    bandwidth     AggregateFunction(avg, Nullable(Float64)),
    custom_sum    SimpleAggregateFunction(sumMap, Map(String, Float64)),
    custom_count  SimpleAggregateFunction(sumMap, Map(String, UInt64))
)
ENGINE = ${REPLICATED}AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (bot_id, bucket)
TTL bucket + INTERVAL ${TTL_DAYS} DAY
SETTINGS non_replicated_deduplication_window = 10000;
-- distribute: bot_stats_1m cityHash64(bot_id)

CREATE MATERIALIZED VIEW IF NOT EXISTS bot_stats_1m_mv${ON_CLUSTER} TO ${LOCAL:bot_stats_1m}
AS SELECT
    bot_id,
    toStartOfMinute(ts) AS bucket,
    count() AS posts,
    min(ts) AS first_ts,
    max(ts) AS last_ts,
    argMaxState(guilds, ts) AS guilds,
    argMaxState(users, ts) AS users,
    argMaxState(shards, ts) AS shards,
    argMaxState(ram_total, ts) AS ram_total,
    avgState(api_ping) AS api_ping,
    avgState(ram_usage) AS ram_usage,
    avgState(cpu) AS cpu,
    avgState(bandwidth) AS bandwidth,
    sumMap(CAST(custom, 'Map(String, Float64)')) AS custom_sum,
    sumMap(CAST(mapApply((k, v) -> (k, toUInt64(1)), custom), 'Map(String, UInt64)')) AS custom_count
FROM ${LOCAL:bot_stats}
GROUP BY bot_id, bucket;

CREATE TABLE IF NOT EXISTS ${LOCAL:bot_stats_1h}${ON_CLUSTER}
(
    bot_id        LowCardinality(String),
    bucket        DateTime('UTC'),
    posts         SimpleAggregateFunction(sum, UInt64),
    first_ts      SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_ts       SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    guilds        AggregateFunction(argMax, Nullable(UInt64), DateTime64(3, 'UTC')),
    users         AggregateFunction(argMax, Nullable(UInt64), DateTime64(3, 'UTC')),
    shards        AggregateFunction(argMax, Nullable(UInt64), DateTime64(3, 'UTC')),
    ram_total     AggregateFunction(argMax, Nullable(Float64), DateTime64(3, 'UTC')),
    api_ping      AggregateFunction(avg, Nullable(Float64)),
    ram_usage     AggregateFunction(avg, Nullable(Float64)),
    cpu           AggregateFunction(avg, Nullable(Float64)),
    bandwidth     AggregateFunction(avg, Nullable(Float64)),
    custom_sum    SimpleAggregateFunction(sumMap, Map(String, Float64)),
    custom_count  SimpleAggregateFunction(sumMap, Map(String, UInt64))
)
ENGINE = ${REPLICATED}AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (bot_id, bucket)
TTL bucket + INTERVAL ${TTL_DAYS} DAY
SETTINGS non_replicated_deduplication_window = 10000;
-- distribute: bot_stats_1h cityHash64(bot_id)

CREATE MATERIALIZED VIEW IF NOT EXISTS bot_stats_1h_mv${ON_CLUSTER} TO ${LOCAL:bot_stats_1h}
AS SELECT
    bot_id,
    toStartOfHour(ts) AS bucket,
    count() AS posts,
    min(ts) AS first_ts,
    max(ts) AS last_ts,
    argMaxState(guilds, ts) AS guilds,
    argMaxState(users, ts) AS users,
    argMaxState(shards, ts) AS shards,
    argMaxState(ram_total, ts) AS ram_total,
    avgState(api_ping) AS api_ping,
    avgState(ram_usage) AS ram_usage,
    avgState(cpu) AS cpu,
    avgState(bandwidth) AS bandwidth,
    sumMap(CAST(custom, 'Map(String, Float64)')) AS custom_sum,
    sumMap(CAST(mapApply((k, v) -> (k, toUInt64(1)), custom), 'Map(String, UInt64)')) AS custom_count
FROM ${LOCAL:bot_stats}
GROUP BY bot_id, bucket;

CREATE TABLE IF NOT EXISTS ${LOCAL:bot_stats_1d}${ON_CLUSTER}
(
    bot_id        LowCardinality(String),
    bucket        DateTime('UTC'),
    posts         SimpleAggregateFunction(sum, UInt64),
    first_ts      SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_ts       SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    guilds        AggregateFunction(argMax, Nullable(UInt64), DateTime64(3, 'UTC')),
    users         AggregateFunction(argMax, Nullable(UInt64), DateTime64(3, 'UTC')),
    shards        AggregateFunction(argMax, Nullable(UInt64), DateTime64(3, 'UTC')),
    ram_total     AggregateFunction(argMax, Nullable(Float64), DateTime64(3, 'UTC')),
    api_ping      AggregateFunction(avg, Nullable(Float64)),
    ram_usage     AggregateFunction(avg, Nullable(Float64)),
    cpu           AggregateFunction(avg, Nullable(Float64)),
    bandwidth     AggregateFunction(avg, Nullable(Float64)),
    custom_sum    SimpleAggregateFunction(sumMap, Map(String, Float64)),
    custom_count  SimpleAggregateFunction(sumMap, Map(String, UInt64))
)
ENGINE = ${REPLICATED}AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (bot_id, bucket)
TTL bucket + INTERVAL ${TTL_DAYS} DAY
SETTINGS non_replicated_deduplication_window = 10000;
-- distribute: bot_stats_1d cityHash64(bot_id)

CREATE MATERIALIZED VIEW IF NOT EXISTS bot_stats_1d_mv${ON_CLUSTER} TO ${LOCAL:bot_stats_1d}
AS SELECT
    bot_id,
    toStartOfDay(ts) AS bucket,
    count() AS posts,
    min(ts) AS first_ts,
    max(ts) AS last_ts,
    argMaxState(guilds, ts) AS guilds,
    argMaxState(users, ts) AS users,
    argMaxState(shards, ts) AS shards,
    argMaxState(ram_total, ts) AS ram_total,
    avgState(api_ping) AS api_ping,
    avgState(ram_usage) AS ram_usage,
    avgState(cpu) AS cpu,
    avgState(bandwidth) AS bandwidth,
    sumMap(CAST(custom, 'Map(String, Float64)')) AS custom_sum,
    sumMap(CAST(mapApply((k, v) -> (k, toUInt64(1)), custom), 'Map(String, UInt64)')) AS custom_count
FROM ${LOCAL:bot_stats}
GROUP BY bot_id, bucket;
