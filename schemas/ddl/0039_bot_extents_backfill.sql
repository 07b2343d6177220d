-- Back-fill of `bot_extents` (0038) from what is already stored. The views of 0038 exist
-- first, so a row a worker inserts while this runs is counted by its view and maybe also here:
-- min, max and the flags are idempotent, so counting a row twice changes nothing (and a re-run
-- after an interruption is harmless too). What an insert in flight while 0038 ran may have missed
-- is read from the tables themselves by each query service on a bot's first answer
-- (query/bot_reads.py `Known`). Shards come from `shard_latest`, which the answer reads and which
-- keeps every shard that ever posted, while `shard_stats` rows expire.
--
-- These name the tables without ${LOCAL:}: on a cluster they are the Distributed tables of 0038
-- and the tables described, so one run reads every shard and each bot's row lands on the shard
-- its other rows live on (the same key, cityHash64(bot_id)).
INSERT INTO bot_extents (bot_id, events_first, events_last)
SELECT bot_id, min(ts), max(ts) FROM custom_events GROUP BY bot_id;

INSERT INTO bot_extents (bot_id, has_props)
SELECT bot_id, toUInt8(1) FROM bot_props GROUP BY bot_id;

INSERT INTO bot_extents (bot_id, has_shards)
SELECT bot_id, toUInt8(1) FROM shard_latest GROUP BY bot_id;

INSERT INTO bot_extents (bot_id, has_names)
SELECT bot_id, toUInt8(1) FROM custom_metric_names GROUP BY bot_id;
