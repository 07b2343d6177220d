-- Until this version the query service read a copy of every post, `bot_stats_posts`, fed by a
-- materialized view from `bot_stats` (versions 0030 and 0031, now empty). It now
-- reads `bot_stats`, created with the same small granules; the copy cost every insert a fourth
-- view and stored each post twice. Installs that ran 0030 drop it here; their `bot_stats` keeps
-- the granule size it was created with (it cannot be changed in place), which is correct, only
-- slower for long-range and uptime reads.
DROP VIEW IF EXISTS bot_stats_posts_mv${ON_CLUSTER};
DROP TABLE IF EXISTS bot_stats_posts${ON_CLUSTER};
DROP TABLE IF EXISTS ${LOCAL:bot_stats_posts}${ON_CLUSTER};
