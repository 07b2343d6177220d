"""Posts made by one shard (`shardId`): the shard's own event, and the bot's totals.

A bot whose shards post separately has no single post that holds its totals. The gateway keeps
each shard's latest values in a Redis hash per bot (`shard_state_key`); the script below, run
once per shard post, checks the backlog and that shard's rate limit (the stats limit, per shard,
kept in the same hash), stores the shard's values,
appends the shard's events and — at most once per `BOTPULSE_SHARD_TOTAL_INTERVAL_S` — a stats
event holding the bot's totals at that moment: the sums of every live shard's latest values
(the mean of their latencies; `shards`: the live shards, or the largest shard count a shard
reported). Those totals are ordinary `bot_stats` rows, so bucketing, roll-ups and uptime read
them as before, and a bot with 1,000 shards stores one total row per interval, not 1,000. A
shard silent for `SHARD_FORGET_MS` drops out of the totals (it was removed by resharding).

Everything happens in one script on keys of the bot's partition, so a refused post leaves no
trace and an accepted one is appended once.
"""

from __future__ import annotations

import asyncio
import string

import msgspec
import redis.asyncio as aioredis

from botpulse.ingest.append import Outcome, Result
from botpulse.schemas.stream import ENTRY_FIELD, SHARD_FORGET_MS, shard_state_key, stream_key

# KEYS: stream, the bot's shard hash (fields: `<shard id>` the shard's latest values, `r:<shard
#       id>` its rate-limit state, `=last` when the totals were last written; it expires with the
#       bot's last shard post, so it never outlives the shards).
# ARGV: high_water, interval_ms, burst, total_interval_ms, forget_ms, rate field, shard id,
#       the shard's values (msgpack map of StatsPayload field names), the totals event template
#       (a StreamEvent whose payload is an empty StatsPayload), then the events to append.
_SHARD_BODY = """
local stream, state = KEYS[1], KEYS[2]
local high_water, interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local total_every, forget = tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('XLEN', stream) >= high_water then
  return {2}
end
local field = ARGV[6]
local tat = tonumber(redis.call('HGET', state, field)) or now
if tat < now then
  tat = now
end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if allow_at > now then
  return {1, math.ceil(allow_at - now)}
end
redis.call('HSET', state, field, string.format('%d', new_tat))
local values = cmsgpack.unpack(ARGV[8])
values['ts'] = now
redis.call('HSET', state, ARGV[7], cmsgpack.pack(values))
for i = 10, #ARGV do
  redis.call('XADD', stream, '*', '$field', ARGV[i])
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
  redis.call('XADD', stream, '*', '$field', cmsgpack.pack(event))
  redis.call('HSET', state, '=last', string.format('%d', now))
end
redis.call('PEXPIRE', state, forget)
return {0}
"""
# The entry's field comes from the stream contract, filled in once at import (as in append.py).
SHARD_SCRIPT = string.Template(_SHARD_BODY).substitute(field=ENTRY_FIELD)

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
    ) -> Result:
        keys = [stream_key(partition), shard_state_key(partition, bot_id)]
        args = [*self._head, f"r:{shard_id}", str(shard_id), values, totals_template, *events]
        async with asyncio.timeout(self.timeout_s):
            reply = await self._script(keys=keys, args=args)
        if reply[0] == 1:
            return Result(Outcome.RATE_LIMITED, retry_after_ms=int(reply[1]))
        if reply[0] == 2:
            return Result(Outcome.BACKLOG_FULL)
        return Result(Outcome.APPENDED)
