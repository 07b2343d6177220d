-- Copy the posts stored before 0030 existed. Only posts older than the first one the view has
-- already copied are taken, so no post is copied twice (on a fresh install both are empty).
-- Goes through the Distributed tables on a cluster, so every shard is covered.
INSERT INTO bot_stats_posts
SELECT bot_id, ts, guilds, users, shards, api_ping, ram_usage, ram_total, cpu, bandwidth, custom
FROM bot_stats
WHERE ts < (SELECT if(count() = 0, toDateTime64('2299-12-31 00:00:00', 3, 'UTC'), min(ts)) FROM bot_stats_posts);
