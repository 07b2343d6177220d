"""Posts made by one shard (`shardId`): the shard's own event, and the bot's totals.

A bot whose shards post separately has no single post that holds its totals. The gateway keeps
each shard's latest values in a Redis hash per bot (`shard_state_key`); the script below, run
once per shard post, admits the post as the append script does (`LUA_ADMIT`: the backlog, that
shard's rate limit — the stats limit, per shard, kept in the same hash — the account's rate in
the partition's rate hash, and the custom-event type slots of the post's entries), stores the
shard's values, appends the shard's events and — at most once per
`BOTPULSE_SHARD_TOTAL_INTERVAL_S` — a stats event holding the bot's totals at that moment: the
sums of every live shard's latest values (the mean of their latencies; `shards`: the live
shards, or the largest shard count a shard reported). Those totals are ordinary `bot_stats`
rows, so bucketing, roll-ups and uptime read them as before, and a bot with 1,000 shards stores
one total row per interval, not 1,000. A shard silent for `SHARD_FORGET_MS` drops out of the
totals (it was removed by resharding).

Everything happens in one script on keys of the bot's partition, so a refused post leaves no
trace and an accepted one is appended once. Its reply has the append script's shape, read by
the same `result_of`.
"""

from __future__ import annotations

import asyncio
import string
import time

import msgspec
import redis.asyncio as aioredis

from botpulse.ingest.append import LUA_ADMIT, Result, result_of
from botpulse.ingest.metrics import REDIS_DURATION
from botpulse.schemas.stream import (
    LUA_ENTRY,
    SHARD_FORGET_MS,
    custom_types_key,
    rate_key,
    shard_state_key,
    stream_key,
)

# KEYS: stream, the bot's shard hash (fields: `<shard id>` the shard's latest values, `r:<shard
#       id>` its rate-limit state, `=last` when the totals were last written; it expires with the
#       bot's last shard post, so it never outlives the shards), the partition's rate hash (the
#       account's field), then the bot's type-set key when the post has custom entries.
# ARGV: high_water, interval_ms, burst, total_interval_ms, forget_ms, rate field, shard id,
#       the shard's values (msgpack map of StatsPayload field names), the totals event template
#       (a StreamEvent whose payload is an empty StatsPayload), the account's rate field, its
#       interval_ms and burst, n_typed, type_limit, then the events to append (the last n_typed
#       are custom entries), then the types of those n_typed entries.
_SHARD_BODY = """
local stream, state, rates = KEYS[1], KEYS[2], KEYS[3]
local high_water, interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local total_every, forget = tonumber(ARGV[4]), tonumber(ARGV[5])
local account, typed, type_limit = ARGV[10], tonumber(ARGV[13]), tonumber(ARGV[14])
local first, types = 15, #ARGV - typed + 1
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('XLEN', stream) >= high_water then
  return {2}
end
local field = ARGV[6]
local new_tat, allow_at = gcra(tonumber(redis.call('HGET', state, field)) or now, now, interval, burst)
if allow_at > now then
  return {1, math.ceil(allow_at - now), 1}
end
local acct_tat, acct_allow = gcra(
  tonumber(redis.call('HGET', rates, account)) or now, now, tonumber(ARGV[11]), tonumber(ARGV[12]))
if acct_allow > now then
  return {1, math.ceil(acct_allow - now), 2}
end
local dropped_types, no_slot = {}, {}
if typed > 0 then
  dropped_types = take_slots(KEYS[4], type_limit, ARGV, types, types + typed)
  for _, name in ipairs(dropped_types) do
    no_slot[name] = true
  end
end
redis.call('HSET', state, field, string.format('%d', new_tat))
redis.call('HSET', rates, account, string.format('%d', acct_tat))
local values = cmsgpack.unpack(ARGV[8])
values['ts'] = now
redis.call('HSET', state, ARGV[7], cmsgpack.pack(values))
local untyped = types - first - typed
for i = first, types - 1 do
  if i - first < untyped or not no_slot[ARGV[i + typed]] then
    entry_add(stream, ARGV[i])
  end
end
local last = tonumber(redis.call('HGET', state, '=last'))
if last == nil or now - last >= total_every then
  local all = redis.call('HGETALL', state)
  local sums, live, reported, pings, ping_n, stale = {}, 0, 0, 0, 0, {}
  for i = 1, #all, 2 do
    if string.match(all[i], '^%d+$$') then
      local v = cmsgpack.unpack(all[i + 1])
      if now - v['ts'] > forget then
        stale[#stale + 1] = all[i]
      else
        live = live + 1
        for key, x in pairs(v) do
          if key == 'shards' then
            if x > reported then
              reported = x
            end
          elseif key == 'api_ping' then
            pings, ping_n = pings + x, ping_n + 1
          elseif key ~= 'ts' then
            sums[key] = (sums[key] or 0) + x
          end
        end
      end
    end
  end
  if #stale > 0 then
    redis.call('HDEL', state, unpack(stale))
  end
  local event = cmsgpack.unpack(ARGV[9])
  event['received_ms'] = now
  local payload = event['payload']
  for key, x in pairs(sums) do
    payload[key] = x
  end
  if ping_n > 0 then
    payload['api_ping'] = pings / ping_n
  end
  payload['shards'] = math.max(live, reported)
  entry_add(stream, cmsgpack.pack(event))
  redis.call('HSET', state, '=last', string.format('%d', now))
end
entry_flush(stream)
redis.call('PEXPIRE', state, forget)
return reply_with({}, {}, dropped_types)
"""
# The entries' form comes from the stream contract (`LUA_ENTRY`, as in append.py); `$$` in the
# body is Lua's `$`.
SHARD_SCRIPT = LUA_ENTRY + LUA_ADMIT + string.Template(_SHARD_BODY).substitute()

# The values a shard contributes to the bot's totals, by StatsPayload field name.
SUMMED = ("guilds", "users", "ram_usage", "ram_total", "cpu", "bandwidth")
_encoder = msgspec.msgpack.Encoder()


def shard_values(values: dict[str, float | int | None]) -> bytes:
    return _encoder.encode({k: v for k, v in values.items() if v is not None})


class ShardAppender:
    """Runs the shard script through redis-py (which reloads it after NOSCRIPT). Shard posts
    are one per shard per minute or so; they do not need the coalescing of `Appender`."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        high_water: int,
        interval_ms: int,
        burst: int,
        total_interval_ms: int,
        timeout_s: float,
    ) -> None:
        self._script = redis.register_script(SHARD_SCRIPT)
        self._head = (high_water, interval_ms, burst, total_interval_ms, SHARD_FORGET_MS)
        self.timeout_s = timeout_s

    async def append(
        self,
        *,
        partition: int,
        bot_id: str,
        shard_id: int,
        values: bytes,
        totals_template: bytes,
        events: list[bytes],
        account_id: str,
        account_interval_ms: int,
        account_burst: int,
        type_limit: int,
        types: list[str],
    ) -> Result:
        """`events`: the shard's event, then its custom entries (the last len(types) of them,
        of those types). The account's rate and the type slots are `Post`'s (ingest/append.py)."""
        keys = [stream_key(partition), shard_state_key(partition, bot_id), rate_key(partition)]
        if types:
            keys.append(custom_types_key(partition, bot_id))
        args = [
            *self._head, f"r:{shard_id}", str(shard_id), values, totals_template,
            "a:" + account_id, account_interval_ms, account_burst, len(types), type_limit,
            *events, *types,
        ]  # fmt: skip
        started = time.perf_counter()
        async with asyncio.timeout(self.timeout_s):
            reply = await self._script(keys=keys, args=args)
        REDIS_DURATION.observe(time.perf_counter() - started)
        return result_of(reply)
