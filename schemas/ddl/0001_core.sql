-- Core tables. Placeholders are filled by runtime/migrations.py:
--   ${ON_CLUSTER}    empty on a single server, " ON CLUSTER `name`" on a cluster
--   ${REPLICATED}    empty, or "Replicated" (ReplicatedMergeTree with the server's default paths)
--   ${LOCAL:t}       the table that holds the data: t, or t_local under a Distributed t on a cluster
--   ${TTL_DAYS}      BOTPULSE_RETENTION_DAYS
-- A "-- distribute: t <sharding key>" line makes the runner create the Distributed table t on a cluster.
-- Every data table keeps a non-replicated deduplication window so a retried batch (same
-- insert_deduplication_token) is stored once on a single server too.

-- One row per accepted stats post. Absent fields stay NULL. The query service reads it directly:
-- 128-row granules and small compressed blocks, so a read of a few scattered hours (the ragged
-- edges of `dataPoints` buckets, uptime ranges) touches only those hours instead of 8192-row
-- granules, and decompresses little beyond them.
CREATE TABLE IF NOT EXISTS ${LOCAL:bot_stats}${ON_CLUSTER}
(
    bot_id      LowCardinality(String),
    ts          DateTime64(3, 'UTC'),
    event_id    String,
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
PARTITION BY toYYYYMM(ts)
ORDER BY (bot_id, ts)
TTL toDateTime(ts) + INTERVAL ${TTL_DAYS} DAY
SETTINGS index_granularity = 128, min_compress_block_size = 2048, max_compress_block_size = 8192,
    non_replicated_deduplication_window = 10000;
-- distribute: bot_stats cityHash64(bot_id)

-- One row per custom-graph entry (e.g. a command use). Values are kept exactly as strings, with
-- the number alongside when the value is numeric.
CREATE TABLE IF NOT EXISTS ${LOCAL:custom_events}${ON_CLUSTER}
(
    bot_id      LowCardinality(String),
    ts          DateTime64(3, 'UTC'),
    event_id    String,
    type        LowCardinality(String),
    value1      Nullable(String),
    value2      Nullable(String),
    value3      Nullable(String),
    value1_num  Nullable(Float64),
    value2_num  Nullable(Float64),
    value3_num  Nullable(Float64)
)
ENGINE = ${REPLICATED}MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (bot_id, type, ts)
TTL toDateTime(ts) + INTERVAL ${TTL_DAYS} DAY
SETTINGS non_replicated_deduplication_window = 10000;
-- distribute: custom_events cityHash64(bot_id)

-- Registry: ClickHouse is the system of record, Redis holds the index the gateway reads.
-- Rows are versions; the newest (by updated_at) wins, read with FINAL.
CREATE TABLE IF NOT EXISTS ${LOCAL:accounts}${ON_CLUSTER}
(
    id          String,
    name        String,
    key_hash    String,
    key_prefix  String,
    created_at  DateTime64(3, 'UTC'),
    updated_at  DateTime64(3, 'UTC'),
    deleted     UInt8 DEFAULT 0
)
ENGINE = ${REPLICATED}ReplacingMergeTree(updated_at)
ORDER BY id;
-- distribute: accounts cityHash64(id)

CREATE TABLE IF NOT EXISTS ${LOCAL:bots}${ON_CLUSTER}
(
    id               String,
    account_id       String,
    username         String,
    avatar           Nullable(String),
    private          UInt8,
    custom_slots     UInt16,
    vote_webhook_url Nullable(String),
    created_at       DateTime64(3, 'UTC'),
    updated_at       DateTime64(3, 'UTC'),
    deleted          UInt8 DEFAULT 0
)
ENGINE = ${REPLICATED}ReplacingMergeTree(updated_at)
ORDER BY id;
-- distribute: bots cityHash64(id)

-- Custom metric names that took one of a bot's custom-graph slots.
CREATE TABLE IF NOT EXISTS ${LOCAL:custom_metric_names}${ON_CLUSTER}
(
    bot_id      String,
    name        String,
    first_seen  DateTime64(3, 'UTC')
)
ENGINE = ${REPLICATED}ReplacingMergeTree
ORDER BY (bot_id, name)
SETTINGS non_replicated_deduplication_window = 10000;
-- distribute: custom_metric_names cityHash64(bot_id)

-- Every change to a bot or a key: who, when, field, old and new value (never a key itself).
CREATE TABLE IF NOT EXISTS ${LOCAL:audit_log}${ON_CLUSTER}
(
    bot_id      String,
    account_id  String,
    at          DateTime64(3, 'UTC'),
    by          String,
    field       String,
    old_value   Nullable(String),
    new_value   Nullable(String)
)
ENGINE = ${REPLICATED}MergeTree
ORDER BY (bot_id, at);
-- distribute: audit_log cityHash64(bot_id)
