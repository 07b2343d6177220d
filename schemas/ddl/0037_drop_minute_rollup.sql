-- The minute roll-up `bot_stats_1m` (0002) is read by nothing: the query service serves short
-- ranges from `bot_stats` itself and long ones from `bot_stats_1h` (query/stats.py), listings
-- from `bot_latest`, leaderboards and uptime from the hourly and daily roll-ups. Its view still
-- aggregated every block the worker inserts (issue 18: about a quarter of an insert's view work).
-- Dropped here, the view first so no insert feeds a table that is going away. A new database
-- creates it in 0002 and drops it here at once, empty.
DROP VIEW IF EXISTS bot_stats_1m_mv${ON_CLUSTER};
DROP TABLE IF EXISTS bot_stats_1m${ON_CLUSTER};
DROP TABLE IF EXISTS ${LOCAL:bot_stats_1m}${ON_CLUSTER};
