-- Copy the posts stored before 0030 existed. A post is copied unless the view of 0030 already
-- holds one of that bot at that instant, so a re-run after an interruption, or posts that the
-- view copied out of time order (a lagging partition), lose nothing and copy nothing twice.
-- On a fresh install both tables are empty. Goes through the Distributed tables on a cluster
-- (GLOBAL: the set is built once and sent to every shard).
-- Run migrations from one process (`botpulse migrate`, the deploy job) before scaling services.
INSERT INTO bot_stats_posts
SELECT bot_id, ts, guilds, users, shards, api_ping, ram_usage, ram_total, cpu, bandwidth, custom
FROM bot_stats
WHERE (bot_id, ts) GLOBAL NOT IN (SELECT bot_id, ts FROM bot_stats_posts);
