"""Stream upkeep: trimming that never drops an unacknowledged entry, and consumer clean-up that
never removes a consumer owning pending entries (XGROUP DELCONSUMER would make them unclaimable).

Both are Lua scripts so the check and the action see one consistent snapshot of the stream.
"""

from __future__ import annotations

import redis.asyncio as aioredis

# Trim every entry below the lowest point any consumer group still needs: its oldest pending
# entry, or (nothing pending) the entry after its last-delivered id. Entries not yet delivered
# or not yet acknowledged are never touched. Returns the number of entries removed.
_TRIM = """
local function field(flat, name)
  for i = 1, #flat, 2 do if flat[i] == name then return flat[i + 1] end end
  return nil
end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
local best_ms, best_seq = nil, nil
for _, g in ipairs(groups) do
  local name = field(g, 'name')
  local summary = redis.call('XPENDING', KEYS[1], name)
  local ms, seq
  if tonumber(summary[1]) > 0 then
    ms, seq = parse(summary[2])
  else
    ms, seq = parse(field(g, 'last-delivered-id'))
    seq = seq + 1
  end
  if best_ms == nil or ms < best_ms or (ms == best_ms and seq < best_seq) then
    best_ms, best_seq = ms, seq
  end
end
if best_ms == 0 and best_seq <= 1 then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-%d', best_ms, best_seq))
"""

# Remove consumer ARGV[2] of group ARGV[1] only if it owns no pending entry. Returns 1 if removed.
_RETIRE = """
local mine = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #mine > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# Remove every consumer of group ARGV[1] that owns nothing and was idle longer than ARGV[2] ms
# (workers that crashed and whose entries were taken over). Returns the names removed.
_SWEEP = """
local function field(flat, name)
  for i = 1, #flat, 2 do if flat[i] == name then return flat[i + 1] end end
  return nil
end
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  if tonumber(field(c, 'pending')) == 0 and tonumber(field(c, 'idle')) > tonumber(ARGV[2]) then
    local name = field(c, 'name')
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    removed[#removed + 1] = name
  end
end
return removed
"""


# Reset the idle time of those of ARGV[3..] that consumer ARGV[2] still owns, without taking any
# entry from another consumer and without counting a delivery. Returns how many were touched.
_TOUCH_OWN = """
local mine = {}
for i = 3, #ARGV do
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #row > 0 and row[1][2] == ARGV[2] then mine[#mine + 1] = ARGV[i] end
end
if #mine == 0 then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(mine), 'JUSTID')
return #mine
"""


# Delete batch record ARGV[2] if none of its ids (ARGV[3], comma-separated) is pending any more:
# they were all acknowledged, so no one can need it (a record's ids leave the pending list only
# by XACK, normally in the same MULTI that deletes the record). Returns 1 if deleted.
_DROP_STALE_RECORD = """
for id in string.gmatch(ARGV[3], '[^,]+') do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1) > 0 then return 0 end
end
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
"""


class Upkeep:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._trim = redis.register_script(_TRIM)
        self._retire = redis.register_script(_RETIRE)
        self._sweep = redis.register_script(_SWEEP)
        self._touch = redis.register_script(_TOUCH_OWN)
        self._drop_stale = redis.register_script(_DROP_STALE_RECORD)

    async def drop_stale_record(
        self, stream: str, batches: str, group: str, token: str, ids: list[str]
    ) -> bool:
        return bool(await self._drop_stale(keys=[stream, batches], args=[group, token, ",".join(ids)]))

    async def touch_own(self, stream: str, group: str, consumer: str, ids: list[bytes]) -> int:
        """Keep entries this consumer is working on from looking idle (so neither it nor anyone
        else takes them over), in chunks (Lua's unpack has a stack limit)."""
        touched = 0
        for start in range(0, len(ids), 5000):
            touched += int(
                await self._touch(keys=[stream], args=[group, consumer, *ids[start : start + 5000]])
            )
        return touched

    async def trim(self, stream: str) -> int:
        return int(await self._trim(keys=[stream]))

    async def retire(self, stream: str, group: str, consumer: str) -> bool:
        return bool(await self._retire(keys=[stream], args=[group, consumer]))

    async def sweep(self, stream: str, group: str, idle_ms: int) -> list[str]:
        removed = await self._sweep(keys=[stream], args=[group, idle_ms])
        return [r.decode() if isinstance(r, bytes) else str(r) for r in removed]
