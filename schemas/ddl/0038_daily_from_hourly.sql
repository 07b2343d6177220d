-- The daily roll-up is fed from the hourly one instead of from every post (issue 18). Each
-- insert into bot_stats used to be aggregated twice over all its rows, once per hour and once
-- per day; now the day view reads only the block the hour view wrote (one row per bot and
-- hour of the insert, about a tenth of the posts in the worker's batches). The states are the
-- same functions merged one level further (argMax by the newest time, avg as sum and count,
-- sums, min/max), so a day holds exactly what it held when computed from the posts.
--
-- One statement: the view's query (and with it its source) changes atomically, so no insert
-- is aggregated by both definitions or by neither while a worker keeps writing. The rows the
-- old definition wrote stay as they are: they are the same states the new one writes, so they
-- are neither rebuilt nor migrated. A retried block counts once at both levels:
-- deduplicate_blocks_in_dependent_materialized_views = 1 (the worker's inserts) derives a
-- token for the block each view writes from the insert's token, down the chain
-- (tests/test_rollups.py).
ALTER TABLE bot_stats_1d_mv${ON_CLUSTER} MODIFY QUERY
SELECT
    bot_id,
    toStartOfDay(h.bucket) AS bucket,
    sum(posts) AS posts,
    min(first_ts) AS first_ts,
    max(last_ts) AS last_ts,
    argMaxMergeState(guilds) AS guilds,
    argMaxMergeState(users) AS users,
    argMaxMergeState(shards) AS shards,
    argMaxMergeState(ram_total) AS ram_total,
    avgMergeState(api_ping) AS api_ping,
    avgMergeState(ram_usage) AS ram_usage,
    avgMergeState(cpu) AS cpu,
    avgMergeState(bandwidth) AS bandwidth,
    sumMap(custom_sum) AS custom_sum,
    sumMap(custom_count) AS custom_count
FROM ${LOCAL:bot_stats_1h} AS h
GROUP BY bot_id, bucket;
