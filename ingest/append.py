"""The append: one Lua script per post, coalesced into one Redis pipeline per event-loop tick.

The script does everything a post needs from Redis in the same round trip, atomically, on keys
that all carry the partition's hash tag (so it runs on Redis Cluster too):
  1. backlog check: XLEN of the partition's stream against the high-water mark;
  2. rate limit: GCRA on the bot's rate key (the time comes from Redis, so every gateway
     process agrees on it);
  3. custom-metric slots: names already in the bot's slot set pass, new names take a free slot,
     the rest are dropped (and removed from the stats event before it is written);
  4. XADD of every event of the post.
Nothing is written unless every check passed, so a refused post leaves no trace.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
from collections.abc import Sequence

import msgspec
import redis.asyncio as aioredis
from hiredis import pack_command
from redis.exceptions import NoScriptError, ResponseError

from runtime.logs import get_logger
from runtime.streams import custom_slots_key, stream_key

log = get_logger(__name__)

# ARGV: interval_ms, burst, high_water, slot_limit, n_names, name_1..name_n, event_1..event_m.
# The first event is the one that carries the custom metrics (when n_names > 0).
SCRIPT = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return {2, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local stored = redis.call('GET', KEYS[2])
local tat = now
if stored then
  tat = math.max(tonumber(stored), now)
end
local new_tat = tat + interval
local allow_at = new_tat - interval * tonumber(ARGV[2])
if allow_at > now then
  return {1, math.ceil(allow_at - now)}
end
local n = tonumber(ARGV[5])
local dropped = {}
if n > 0 then
  local limit = tonumber(ARGV[4])
  local used = redis.call('SCARD', KEYS[3])
  for i = 6, 5 + n do
    if redis.call('SISMEMBER', KEYS[3], ARGV[i]) == 0 then
      if used < limit then
        redis.call('SADD', KEYS[3], ARGV[i])
        used = used + 1
      else
        dropped[#dropped + 1] = ARGV[i]
      end
    end
  end
end
local first = 6 + n
local event = ARGV[first]
if #dropped > 0 then
  local decoded = cmsgpack.unpack(event)
  local metrics = decoded['payload']['custom_metrics']
  for _, name in ipairs(dropped) do
    metrics[name] = nil
  end
  if next(metrics) == nil then
    decoded['payload']['custom_metrics'] = nil
  end
  event = cmsgpack.pack(decoded)
end
redis.call('XADD', KEYS[1], '*', 'e', event)
for i = first + 1, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'e', ARGV[i])
end
redis.call('SET', KEYS[2], string.format('%d', new_tat), 'PX', string.format('%d', math.ceil(new_tat - now)))
local out = {0}
for _, name in ipairs(dropped) do
  out[#out + 1] = name
end
return out
"""
SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


class Outcome(enum.Enum):
    APPENDED = 0
    RATE_LIMITED = 1
    BACKLOG_FULL = 2


class Result(msgspec.Struct, frozen=True):
    outcome: Outcome
    retry_after_ms: int = 0
    dropped: tuple[str, ...] = ()


class Post(msgspec.Struct, frozen=True):
    """What one request asks the script to do."""

    partition: int
    bot_id: str
    rate_key: str
    interval_ms: int
    burst: int
    slot_limit: int
    metric_names: Sequence[str]
    events: Sequence[bytes]  # the first carries the custom metrics

    def command(self, high_water: int) -> tuple[object, ...]:
        keys = (stream_key(self.partition), self.rate_key, custom_slots_key(self.partition, self.bot_id))
        return (
            3,
            *keys,
            self.interval_ms,
            self.burst,
            high_water,
            self.slot_limit,
            len(self.metric_names),
            *self.metric_names,
            *self.events,
        )


def _result(reply: list[object]) -> Result:
    code = int(reply[0])  # type: ignore[call-overload]
    if code == 0:
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in reply[1:])
        return Result(Outcome.APPENDED, dropped=names)
    if code == 1:
        return Result(Outcome.RATE_LIMITED, retry_after_ms=int(reply[1]))  # type: ignore[call-overload]
    return Result(Outcome.BACKLOG_FULL)


class Appender:
    """Coalesces the posts of one event-loop tick into one pipeline of EVALSHA calls.

    `append()` resolves only after Redis answered for that post; a Redis failure or timeout
    raises (the handler answers 503) and never hangs longer than `timeout_s`.
    """

    def __init__(self, redis: aioredis.Redis, high_water: int, timeout_s: float) -> None:
        self.redis = redis
        self.high_water = high_water
        self.timeout_s = timeout_s
        self._pending: list[tuple[Post, asyncio.Future[Result]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def append(self, post: Post) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((post, future))
        if not self._scheduled:
            self._scheduled = True
            # call_soon runs after every callback already ready in this tick: the handlers
            # woken together all get into the same pipeline.
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._pending, self._scheduled = self._pending, [], False
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Post, asyncio.Future[Result]]]) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                replies = await self._execute([p for p, _ in batch], "EVALSHA", SHA)
                missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
                if missing:
                    # Redis restarted or was flushed: EVAL loads the script again. NOSCRIPT means
                    # the script did not run, so running it now appends exactly once.
                    again = await self._execute([batch[i][0] for i in missing], "EVAL", SCRIPT)
                    for i, reply in zip(missing, again, strict=True):
                        replies[i] = reply
        except BaseException as exc:
            failure = exc if isinstance(exc, Exception) else ConnectionError("append cancelled")
            for _, future in batch:
                if not future.done():
                    future.set_exception(failure)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(_result(reply))  # type: ignore[arg-type]

    async def _execute(self, posts: list[Post], verb: str, script: str) -> list[object]:
        """One write of all the calls, then their replies in order: a pipeline without the
        client's per-command bookkeeping (this is the gateway's hot path)."""
        pool = self.redis.connection_pool
        connection = await pool.get_connection()
        try:
            packed = b"".join(pack_command((verb, script, *post.command(self.high_water))) for post in posts)
            await connection.send_packed_command(packed)
            replies: list[object] = []
            for _ in posts:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as exc:  # this call's error (e.g. NOSCRIPT): the others stand
                    replies.append(exc)
        except BaseException:
            # A reply may still be on the wire: never hand this connection to anyone else.
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)
        return replies

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.timeout_s)
