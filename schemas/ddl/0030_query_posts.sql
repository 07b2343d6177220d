-- Query service: every stats post again, without event_id, in small granules (128 rows) so a
-- read of a few scattered hours (the ragged edges of dataPoints buckets, uptime ranges) touches
-- only those hours instead of 8192-row granules of bot_stats. Fed by a materialized view like
-- the roll-ups; posts stored before this file ran are copied by 0031. Partitioned by year, not
-- month: a year-long read then opens two partitions' parts instead of thirteen; small
-- compressed blocks so reading one scattered granule does not decompress 64 KiB per column.
CREATE TABLE IF NOT EXISTS ${LOCAL:bot_stats_posts}${ON_CLUSTER}
(
    bot_id      LowCardinality(String),
    ts          DateTime64(3, 'UTC'),
    guilds      Nullable(UInt64),
    users       Nullable(UInt64),
    shards      Nullable(UInt64),
    api_ping    Nullable(Float64),
    ram_usage   Nullable(Float64),
    ram_total   Nullable(Float64),
    cpu         Nullable(Float64),
    bandwidth   Nullable(Float64),
    custom      Map(LowCardinality(String), Float64)
)
ENGINE = ${REPLICATED}MergeTree
PARTITION BY toYear(ts)
ORDER BY (bot_id, ts)
TTL toDateTime(ts) + INTERVAL ${TTL_DAYS} DAY
SETTINGS index_granularity = 128, min_compress_block_size = 2048, max_compress_block_size = 8192,
    non_replicated_deduplication_window = 10000;
-- distribute: bot_stats_posts cityHash64(bot_id)

CREATE MATERIALIZED VIEW IF NOT EXISTS bot_stats_posts_mv${ON_CLUSTER} TO ${LOCAL:bot_stats_posts}
AS SELECT bot_id, ts, guilds, users, shards, api_ping, ram_usage, ram_total, cpu, bandwidth, custom
FROM ${LOCAL:bot_stats};
