"""The append: one Lua script call per partition per event-loop tick, all calls in one write.

The script does everything a post needs from Redis, atomically, on keys that all carry the
partition's hash tag (so it runs on Redis Cluster too). Once per call: the time (`TIME`), the
stream length (`XLEN`, counted on as the call appends) and every post's rate-limit state (one
`HMGET` on the partition's rate hash). For each post of the call, in order:
  1. backlog check: the stream length against the high-water mark;
  2. rate limits: GCRA on the bot's field of the rate hash and on its account's field (the
     account's posts per minute, split evenly over the partitions; the time comes from Redis, so
     every gateway process agrees on it);
  3. custom-metric slots: names already in the bot's slot set pass, new names take a free slot,
     the rest are dropped (and removed from the stats event before it is written); the same for
     extra properties and the bot's property slots; custom-event types the same way in the
     bot's type set, an entry whose type has no slot is not written;
  4. every event of the post joins the call's stream entry (`LUA_ENTRY`, schemas/stream.py).
Then the entry is written (one `XADD` for the events of the whole call, a new entry only every
`MAX_ENTRY_EVENTS` events or `MAX_ENTRY_BYTES`) and one `HSET` stores the rate state of every
post that passed. A post is written only if every check passed, so a refused post leaves no
trace, and the posts that passed keep their own event ids in the shared entry. Posts of the same
partition share one call: Redis runs one script instead of one per post, and the gateway parses
one reply. Per call that is `TIME`, `XLEN`, `HMGET`, `HSET` and one `XADD` per entry (plus the
slot commands for posts that carry custom metrics): the rate limit costs a field in two commands
per call, not a `GET` and a `SET` per post, and the stream an entry per call, not one per post
(Redis's work per entry, its append-only file's and the worker's all shrink with it). The backlog
check counts entries, as `XLEN` does.

The rate-limit and slot steps are `LUA_ADMIT`, which the shard script (ingest/shards.py) runs
too, so a post made by one shard is admitted exactly like any other; both scripts answer in the
reply shape `result_of` reads.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import time
from collections.abc import Sequence

import hiredis
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from botpulse.ingest.metrics import REDIS_DURATION, write_sent
from botpulse.runtime.logs import get_logger
from botpulse.schemas.stream import (
    LUA_DROP_METRICS,
    LUA_ENTRY,
    custom_slots_key,
    custom_types_key,
    prop_slots_key,
    rate_key,
    stream_key,
)

log = get_logger(__name__)

# The admission steps every post script shares (Lua functions, prepended to each script).
# `gcra`: one post against a GCRA limit (one per `interval` ms, bursts of `burst`) -> the new
# theoretical arrival time to store and the time the post is allowed at (refused while > now).
# `take_slots`: the names of list[from..to) that hold or take a slot of set `key` (at most
# `limit` members) pass; the others are returned, to be dropped. A name seen twice counts once.
# `reply_with`: the success reply, naming what was dropped: 0 | {0, n_metrics, n_props,
# metric names..., property names..., custom-event types...}.
LUA_ADMIT = """
local function gcra(tat, now, interval, burst)
  if tat < now then
    tat = now
  end
  local new_tat = tat + interval
  return new_tat, new_tat - interval * burst
end
local function take_slots(key, limit, list, from, to)
  local dropped = {}
  if from >= to then
    return dropped
  end
  local used = redis.call('SCARD', key)
  for i = from, to - 1 do
    if redis.call('SISMEMBER', key, list[i]) == 0 then
      if used < limit then
        redis.call('SADD', key, list[i])
        used = used + 1
      else
        dropped[#dropped + 1] = list[i]
      end
    end
  end
  return dropped
end
local function reply_with(dropped, dropped_props, dropped_types)
  if #dropped == 0 and #dropped_props == 0 and #dropped_types == 0 then
    return 0  -- the common reply: a bare integer, no table for Redis to build nor the gateway to parse
  end
  local reply = {0, #dropped, #dropped_props}
  for _, list in ipairs({dropped, dropped_props, dropped_types}) do
    for _, name in ipairs(list) do
      reply[#reply + 1] = name
    end
  end
  return reply
end
"""

# KEYS: the stream, the rate hash, then per post: its slot-set key if it has metric names, its
#       property-slot key if it has property names, its type-set key if it has custom events.
# ARGV: high_water, stats interval_ms, stats burst, custom interval_ms, custom burst, then two
#       msgpack arrays and the events:
#       `fields`: the rate fields of the call's posts, each once: a post's own (`s:<bot>` or
#         `c:<bot>`: stats or custom limit) and its account's (`a:<account>`), for the one HMGET;
#       `heads`: per post the index in `fields` of its own field and of its account's, the
#         account's interval_ms and burst, n_names, n_props, n_events,
#         n_typed, slot_limit when n_names > 0, prop_limit when n_props > 0, type_limit when
#         n_typed > 0, name_1..name_n, prop_1..prop_p, type_1..type_t (the types of the post's
#         last n_typed events, its custom events);
#       then every post's events in order (a post's first carries its custom metrics and
#       properties).
#       Numbers and names travel inside msgpack, which Redis decodes in C, rather than as a
#       dozen arguments a post that Lua would convert one by one (docs/api/ingest.md, Round 5).
# Returns 0 when every post was appended with nothing dropped (the common reply: one integer
#       for the call, not a table of them), else one reply per post: `reply_with`'s |
#       {1, retry_after_ms, 1 (the bot's limit) or 2 (the account's)} | {2}.
# The stream contract (the entry's form that `entry_add` writes, the event encoding
# `drop_metrics` edits) comes from schemas/stream.py.
_BODY = """
local stream, rates = KEYS[1], KEYS[2]
local high_water = tonumber(ARGV[1])
local intervals = {s = tonumber(ARGV[2]), c = tonumber(ARGV[4])}
local bursts = {s = tonumber(ARGV[3]), c = tonumber(ARGV[5])}
local fields, heads = cmsgpack.unpack(ARGV[6]), cmsgpack.unpack(ARGV[7])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local length = redis.call('XLEN', stream)
local stored = redis.call('HMGET', rates, unpack(fields))
local tats, updates = {}, {}
local replies, plain = {}, true
local k, h, e = 3, 1, 8
local function limited(field, stored_tat, interval, burst)
  return gcra(tats[field] or tonumber(stored_tat) or now, now, interval, burst)
end
local function remember(field, tat)
  if tats[field] == nil then
    updates[#updates + 1] = field
  end
  tats[field] = tat
end
local p = 0
local n_heads = #heads
while h <= n_heads do
  p = p + 1
  local own, acct = heads[h], heads[h + 1]
  local field, account = fields[own], fields[acct]
  local acct_interval, acct_burst = heads[h + 2], heads[h + 3]
  local n, np, m, ty = heads[h + 4], heads[h + 5], heads[h + 6], heads[h + 7]
  h = h + 8
  local limit, prop_limit, type_limit = 0, 0, 0
  local slots_key, props_key, types_key
  if n > 0 then
    limit, h, slots_key, k = heads[h], h + 1, KEYS[k], k + 1
  end
  if np > 0 then
    prop_limit, h, props_key, k = heads[h], h + 1, KEYS[k], k + 1
  end
  if ty > 0 then
    type_limit, h, types_key, k = heads[h], h + 1, KEYS[k], k + 1
  end
  local names = h
  local props = names + n
  local types = props + np
  h = types + ty
  local first = e
  e = e + m
  if length >= high_water then
    replies[p], plain = {2}, false
  else
    local kind = string.sub(field, 1, 1)
    local new_tat, allow_at = limited(field, stored[own], intervals[kind], bursts[kind])
    local acct_tat, acct_allow = limited(account, stored[acct], acct_interval, acct_burst)
    if allow_at > now then
      replies[p], plain = {1, math.ceil(allow_at - now), 1}, false
    elseif acct_allow > now then
      replies[p], plain = {1, math.ceil(acct_allow - now), 2}, false
    elseif n + np + ty == 0 then
      -- the common post: its events, no names to check, no tables to build
      for i = first, e - 1 do
        length = length + entry_add(stream, ARGV[i])
      end
      remember(field, new_tat)
      remember(account, acct_tat)
      replies[p] = 0
    else
      local dropped, dropped_props, dropped_types = {}, {}, {}
      if n > 0 then
        dropped = take_slots(slots_key, limit, heads, names, props)
      end
      if np > 0 then
        dropped_props = take_slots(props_key, prop_limit, heads, props, types)
      end
      local no_slot = {}
      if ty > 0 then
        dropped_types = take_slots(types_key, type_limit, heads, types, types + ty)
        for _, name in ipairs(dropped_types) do
          no_slot[name] = true
        end
      end
      for i = 1, m do
        local event = ARGV[first + i - 1]
        if i == 1 and #dropped > 0 then
          event = drop_metrics(event, dropped)
        end
        if i == 1 and #dropped_props > 0 then
          event = drop_props(event, dropped_props)
        end
        if i <= m - ty or not no_slot[heads[types + i - 1 - (m - ty)]] then
          length = length + entry_add(stream, event)
        end
      end
      remember(field, new_tat)
      remember(account, acct_tat)
      replies[p] = reply_with(dropped, dropped_props, dropped_types)
      plain = plain and replies[p] == 0
    end
  end
end
entry_flush(stream)
if #updates > 0 then
  -- the times go as Lua numbers: valkey writes an integral one as its digits (some Redis 7.2
  -- releases as `1.8e+12`); the scripts read them back with tonumber, exact either way
  local args = {}
  for i, field in ipairs(updates) do
    args[2 * i - 1], args[2 * i] = field, tats[field]
  end
  redis.call('HSET', rates, unpack(args))
end
if plain then
  return 0
end
return replies
"""
SCRIPT = LUA_ENTRY + LUA_DROP_METRICS + LUA_ADMIT + _BODY
SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
# Posts per script call: bounds how long one call holds Redis.
MAX_CALL_POSTS = 128


class Outcome(enum.Enum):
    APPENDED = 0
    RATE_LIMITED = 1
    BACKLOG_FULL = 2


class Result(msgspec.Struct, frozen=True):
    outcome: Outcome
    retry_after_ms: int = 0
    dropped: tuple[str, ...] = ()  # custom metric names without a slot
    dropped_props: tuple[str, ...] = ()  # extra properties over the bot's property slots
    dropped_types: tuple[str, ...] = ()  # custom-event types without a slot (their events dropped)
    account_limited: bool = False  # RATE_LIMITED by the account's rate, not the bot's


class Limits(msgspec.Struct, frozen=True):
    """The rate limits (GCRA: one post per interval, bursts of `burst`) of the two kinds of post."""

    stats_interval_ms: int
    stats_burst: int
    custom_interval_ms: int
    custom_burst: int


class Post(msgspec.Struct, frozen=True):
    """What one request asks the script to do."""

    partition: int
    bot_id: str
    stats: bool  # the stats limit, else the custom one
    slot_limit: int
    metric_names: Sequence[str]
    events: Sequence[bytes]  # the first carries the custom metrics and properties
    account_id: str = ""
    # The account's rate (GCRA) in this partition: its share of the account's posts per minute.
    account_interval_ms: int = 1
    account_burst: int = 1_000_000
    type_limit: int = 0
    types: Sequence[str] = ()  # the types of the last len(types) events (custom entries)
    prop_limit: int = 0
    prop_names: Sequence[str] = ()


def _bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


_pack = msgspec.msgpack.encode
# The small counts every post sends, packed once (below 128 a msgpack int is one byte, to 255 two).
_COUNTS = [_pack(i) for i in range(256)]
# Each post's rate fields (its own and its account's) and its account's interval and burst,
# packed once per bot and account: the same few thousand come back post after post.
_HEADS: dict[tuple[bool, str, str, int, int], tuple[bytes, bytes, bytes]] = {}
_MAX_HEADS = 50_000


def _count(value: int) -> bytes:
    return _COUNTS[value] if 0 <= value < 256 else _pack(value)


def _head(post: Post) -> tuple[bytes, bytes, bytes]:
    """`script_call` looks the head up itself first (a call less per post)."""
    if len(_HEADS) >= _MAX_HEADS:
        _HEADS.clear()
    key = (post.stats, post.bot_id, post.account_id, post.account_interval_ms, post.account_burst)
    own, account = _pack(("s:" if post.stats else "c:") + post.bot_id), _pack("a:" + post.account_id)
    head = _HEADS[key] = (own, account, _pack(post.account_interval_ms) + _pack(post.account_burst))
    return head


def _array(items: int, packed: list[bytes]) -> bytes:
    """A RESP bulk string holding a msgpack array of `items` packed values."""
    return _bulk(b"\xdd" + items.to_bytes(4, "big") + b"".join(packed))


def script_call(verb: str, script: str, posts: Sequence[Post], high_water: int, limits: Limits) -> bytes:
    """The packed EVALSHA/EVAL for posts of one partition: the RESP of `verb script numkeys
    keys... args...`, laid out as the comment above `_BODY` says. Encoded here rather than by
    hiredis's `pack_command` and a msgpack encoder per call: the heads are cached per bot and
    account, so a post costs a few joins (docs/api/ingest.md, Round 5)."""
    partition = posts[0].partition
    keys = [_bulk(stream_key(partition).encode()), _bulk(rate_key(partition).encode())]
    limits_args = (high_water, limits.stats_interval_ms, limits.stats_burst, limits.custom_interval_ms,
                   limits.custom_burst)  # fmt: skip
    fields: dict[bytes, int] = {}  # packed field -> its index (from 1, as Lua counts)
    heads: list[bytes] = []
    events: list[bytes] = []
    n_heads = 0
    cache, zero = _HEADS, _COUNTS[0]
    for post in posts:
        names, props, types, posted = post.metric_names, post.prop_names, post.types, post.events
        key = (post.stats, post.bot_id, post.account_id, post.account_interval_ms, post.account_burst)
        cached = cache.get(key)
        if cached is None:
            cached = _head(post)
        own, account, rate = cached
        own_at = fields.setdefault(own, len(fields) + 1)
        account_at = fields.setdefault(account, len(fields) + 1)
        m = len(posted)
        if not (names or props or types):
            # The common post: nothing but its events (one, a stats post without entries).
            heads += (_count(own_at), _count(account_at), rate, zero, zero, _count(m), zero)
            n_heads += 8
        else:
            heads += (_count(own_at), _count(account_at), rate, _count(len(names)), _count(len(props)),
                      _count(m), _count(len(types)))  # fmt: skip
            n_heads += 8 + len(names) + len(props) + len(types)
            if names:
                keys.append(_bulk(custom_slots_key(partition, post.bot_id).encode()))
                heads.append(_count(post.slot_limit))
            if props:
                keys.append(_bulk(prop_slots_key(partition, post.bot_id).encode()))
                heads.append(_count(post.prop_limit))
            if types:
                keys.append(_bulk(custom_types_key(partition, post.bot_id).encode()))
                heads.append(_count(post.type_limit))
            n_heads += bool(names) + bool(props) + bool(types)
            heads += [_pack(text) for text in (*names, *props, *types)]
        for event in posted:
            events.append(b"$%d\r\n%b\r\n" % (len(event), event))
    argc = 3 + len(keys) + len(limits_args) + 2 + len(events)  # and the verb, the script, the key count
    return b"".join(
        (
            b"*%d\r\n" % argc, _bulk(verb.encode()), _bulk(script.encode()), _bulk(b"%d" % len(keys)), *keys,
            *[_bulk(b"%d" % v) for v in limits_args],
            _array(len(fields), list(fields)), _array(n_heads, heads), *events,
        )
    )  # fmt: skip


APPENDED = Result(Outcome.APPENDED)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def replies_of(reply: object, posts: int) -> list[object]:
    """An append-script call's reply as one reply per post (`result_of` reads each): the call
    answers a bare 0 when every post was appended with nothing dropped."""
    if reply == 0:
        return [0] * posts
    assert isinstance(reply, list) and len(reply) == posts, reply
    return reply


def result_of(reply: list[object] | int) -> Result:
    """A post script's reply (the append's or the shard script's) as a `Result`."""
    if reply == 0:
        return APPENDED  # the common case: nothing dropped, nothing to build
    assert isinstance(reply, list)
    code = reply[0]
    if code == 0:
        n_metrics, n_props = int(reply[1]), int(reply[2])  # type: ignore[call-overload]
        names = tuple(_text(n) for n in reply[3:])
        return Result(
            Outcome.APPENDED,
            dropped=names[:n_metrics],
            dropped_props=names[n_metrics : n_metrics + n_props],
            dropped_types=names[n_metrics + n_props :],
        )
    if code == 1:
        return Result(
            Outcome.RATE_LIMITED,
            retry_after_ms=int(reply[1]),  # type: ignore[call-overload]
            account_limited=int(reply[2]) == 2,  # type: ignore[call-overload]
        )
    return Result(Outcome.BACKLOG_FULL)


class Wire(asyncio.Protocol):
    """A Redis connection carrying one write at a time: the replies are parsed by hiredis as the
    bytes arrive, and the write's future resolves once all of them are in."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        # Held, not used: a stream writer closes its transport when it is garbage-collected.
        self._writer = writer
        self.transport: asyncio.Transport = writer.transport  # type: ignore[assignment]
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._future: asyncio.Future[list[object]] | None = None
        self._expected = 0
        self._replies: list[object] = []
        self._lost: Exception | None = None

    @property
    def usable(self) -> bool:
        return self._lost is None and not self.transport.is_closing()

    def call(self, packed: bytes, replies: int) -> asyncio.Future[list[object]]:
        """Send `packed` (`replies` commands); the future resolves to their replies in order."""
        future = asyncio.get_running_loop().create_future()
        if self._lost is not None:
            future.set_exception(self._lost)
            return future
        self._future, self._expected, self._replies = future, replies, []
        self.transport.write(packed)
        return future

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        replies = self._replies
        try:
            while (reply := reader.gets()) is not False:
                if isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT"):
                    reply = NoScriptError(str(reply))
                replies.append(reply)
        except hiredis.ProtocolError as exc:
            self._fail(ConnectionError(f"Redis protocol error: {exc}"))
            return
        future = self._future
        if future is not None and len(replies) >= self._expected:
            self._future = None
            if not future.done():
                future.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"Redis connection lost: {exc}" if exc else "Redis closed the connection"))

    def _fail(self, exc: Exception) -> None:
        self._lost = exc
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_exception(exc)
        self.transport.close()

    def close(self) -> None:
        self._lost = self._lost or ConnectionError("closed")
        self.transport.close()


class Appender:
    """Coalesces posts into as few Redis round trips as possible.

    The posts of one event-loop tick always share one write (one script call per partition).
    At most `MAX_IN_FLIGHT` writes are outstanding: posts that arrive meanwhile wait and go
    together in the next one, so batches grow with the load instead of the number of round
    trips (each costs system calls on both sides).

    `append()` resolves only after Redis answered for that post; a Redis failure or timeout
    raises (the handler answers 503). No post waits longer than `timeout_s` in all: a write's
    deadline is that of the oldest post in it, and when a write fails every waiting post fails
    with it (Redis is evidently unreachable).
    """

    MAX_IN_FLIGHT = 4

    def __init__(self, redis: aioredis.Redis, high_water: int, limits: Limits, timeout_s: float) -> None:
        self.redis = redis
        self.high_water = high_water
        self.limits = limits
        self.timeout_s = timeout_s
        self._pending: list[tuple[Post, asyncio.Future[Result]]] = []
        self._oldest = 0.0  # loop time the oldest pending post arrived
        self._oldest_at = 0.0  # the same on perf_counter, for metrics (uvloop's loop.time() ticks in ms)
        self._scheduled = False
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle: list[Wire] = []

    async def append(self, post: Post) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        if not self._pending:
            self._oldest = loop.time()
            self._oldest_at = time.perf_counter()
        self._pending.append((post, future))
        if not self._scheduled and self._in_flight < self.MAX_IN_FLIGHT:
            self._scheduled = True
            # call_soon runs after every callback already ready in this tick: the handlers
            # woken together all get into the same write.
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        if not self._pending or self._in_flight >= self.MAX_IN_FLIGHT:
            return
        batch, self._pending = self._pending, []
        write_sent(len(batch), time.perf_counter() - self._oldest_at)
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(batch, self._oldest + self.timeout_s))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        if self._pending and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _run(self, batch: list[tuple[Post, asyncio.Future[Result]]], deadline: float) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout_at(deadline):
                replies = await self._execute([p for p, _ in batch])
            REDIS_DURATION.observe(time.perf_counter() - started)
        except BaseException as exc:
            failure = exc if isinstance(exc, Exception) else ConnectionError("append cancelled")
            waiting, self._pending = self._pending, []
            for _, future in [*batch, *waiting]:
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
                future.set_result(result_of(reply))  # type: ignore[arg-type]

    async def _execute(self, posts: list[Post]) -> list[object]:
        """Each post's reply (or the error of its call), in the order of `posts`."""
        calls: list[list[int]] = []  # indexes into posts, one list per script call
        by_partition: dict[int, list[int]] = {}
        for i, post in enumerate(posts):
            by_partition.setdefault(post.partition, []).append(i)
        for indexes in by_partition.values():
            calls.extend(indexes[j : j + MAX_CALL_POSTS] for j in range(0, len(indexes), MAX_CALL_POSTS))
        replies: list[object] = [None] * len(posts)
        results = await self._send(calls, posts, "EVALSHA", SHA)
        missing = [c for c, r in zip(calls, results, strict=True) if isinstance(r, NoScriptError)]
        if missing:
            # Redis restarted or was flushed: EVAL loads the script again. NOSCRIPT means the
            # script did not run, so running it now appends exactly once.
            results = [r for r in results if not isinstance(r, NoScriptError)]
            calls = [c for c in calls if c not in missing]
            calls += missing
            results += await self._send(missing, posts, "EVAL", SCRIPT)
        for indexes, result in zip(calls, results, strict=True):
            n = len(indexes)
            each = [result] * n if isinstance(result, Exception) else replies_of(result, n)
            for i, reply in zip(indexes, each, strict=True):
                replies[i] = reply
        return replies

    async def _open(self) -> Wire:
        """One of the appender's own connections (one per write in flight). redis-py opens it
        with the client's settings (address, TLS, AUTH, SELECT: whatever the URL says), then the
        appender takes its transport over: a checkout from the pool, redis-py's stream reader and
        its per-reply coroutines would cost more than the rest of the write."""
        pool = self.redis.connection_pool
        connection = pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})
        await connection.connect()
        writer = connection._writer
        assert writer is not None
        # Detached, or the connection would close the transport when it is garbage-collected.
        connection._writer = connection._reader = None
        wire = Wire(writer)
        writer.transport.set_protocol(wire)
        return wire

    async def _send(self, calls: list[list[int]], posts: list[Post], verb: str, script: str) -> list[object]:
        """All calls in one write, then their replies in order (each an `Exception` when that
        call failed, e.g. NOSCRIPT: the others stand). No deadline of its own: `_run`'s bounds
        the whole write and its replies."""
        wire = None
        while self._idle and wire is None:
            wire = self._idle.pop()
            if not wire.usable:  # Redis closed it while idle (restart, timeout): open anew
                wire.close()
                wire = None
        if wire is None:
            wire = await self._open()
        try:
            packed = b"".join(
                script_call(verb, script, [posts[i] for i in call], self.high_water, self.limits)
                for call in calls
            )
            results = await wire.call(packed, len(calls))
        except BaseException:
            wire.close()  # a reply may still be on the wire: this connection is done
            raise
        self._idle.append(wire)
        return results

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.timeout_s)
        for wire in self._idle:
            wire.close()
        self._idle.clear()
