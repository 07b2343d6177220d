"""The registry index in Redis, and the in-process cache every request authenticates from.

Layout:  bp:reg:key:<sha256(key)> -> account id       bp:reg:bot:<id> -> msgpack IndexedBot
         bp:reg:version -> counter bumped on every change      bp:reg:ready -> "1" once built
         bp:reg:gen -> the ClickHouse registry generation the index reflects (see catalog.generation)
A rebuild sets the version to a fresh value (microseconds since the epoch, or one more than the
current value) so a process that cached entries before Redis was emptied never mistakes the
rebuilt index's version for the one it knew.
A process caches lookups (hits and misses) and drops its cache whenever `bp:reg:version`
moves; it polls the version every BOTPULSE_REGISTRY_REFRESH_MS, so a regenerated or revoked
key stops working everywhere within that interval (default 250 ms, well under 1 s), and a
request costs no Redis round trip for auth once its key and bot are cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TypeVar

import redis.asyncio as aioredis

from botpulse.registry.keys import hash_key
from botpulse.runtime.logs import get_logger
from botpulse.schemas.registry import IndexedBot, decode_bot, encode_bot

log = get_logger(__name__)

V = TypeVar("V")

VERSION_KEY = "bp:reg:version"
READY_KEY = "bp:reg:ready"
GEN_KEY = "bp:reg:gen"
META_KEYS = (VERSION_KEY, READY_KEY, GEN_KEY)

# SET version to ARGV[1] unless it already holds that much or more; then INCR instead.
_FRESH_VERSION = """
local v = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local t = tonumber(ARGV[1])
if v >= t then return redis.call('INCR', KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[1])
return t
"""


def key_entry(key_hash: str) -> str:
    return f"bp:reg:key:{key_hash}"


def bot_entry(bot_id: str) -> str:
    return f"bp:reg:bot:{bot_id}"


async def is_ready(redis: aioredis.Redis) -> bool:
    return bool(await redis.exists(READY_KEY))


class RegistryCache:
    """Per-process view of the index. `start()` launches the version poller."""

    def __init__(self, redis: aioredis.Redis, refresh_ms: int = 250) -> None:
        self.redis = redis
        self.refresh_s = refresh_ms / 1000
        self._accounts: dict[str, str | None] = {}
        self._bots: dict[str, IndexedBot | None] = {}
        self._version: bytes | None = None
        # Bumped on every clear: a lookup that started before a clear must not refill the cache
        # with what it read then (it could be a key regenerated meanwhile).
        self._epoch = 0
        self.ready = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        with contextlib.suppress(Exception):
            await self._poll_once()
        self._task = asyncio.create_task(self._poll(), name="registry-poll")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _poll_once(self) -> None:
        version, ready = await self.redis.mget(VERSION_KEY, READY_KEY)
        if version != self._version:
            self.invalidate()
            self._version = version
        self.ready = ready is not None

    async def _poll(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self._poll_once()
                if failing:
                    log.info("registry poll recovered")
                failing = False
            except Exception as exc:
                # Redis gone: forget everything so no stale key keeps working.
                self.invalidate()
                self._version = None
                self.ready = False
                if not failing:
                    log.warning("registry poll failing", error=str(exc))
                failing = True

    def invalidate(self) -> None:
        self._epoch += 1
        self._accounts.clear()
        self._bots.clear()

    async def _fetch(self, entry: str) -> tuple[bytes | None, bool]:
        """An index entry, and whether it may be cached: a lookup made while the index is not
        ready (Redis emptied, rebuild pending) flips `ready` at once, without waiting for the
        poller, and its miss is not remembered — the entry may be back a moment later. Costs no
        extra round trip."""
        epoch = self._epoch
        raw, ready = await self.redis.mget(entry, READY_KEY)
        if ready is None:
            self.ready = False
            return raw, False
        return raw, epoch == self._epoch

    async def account_for_key(self, key: str) -> str | None:
        """The account the key belongs to; None for an unknown key — or, when `ready` is now
        False, because the index is missing (callers answer 503 then, not 401)."""
        return await self.account_for_hash(hash_key(key))

    async def account_for_hash(self, key_hash: str) -> str | None:
        """`account_for_key` by the key's hash (what a dashboard session keeps instead of the key,
        so regenerating the key ends the session)."""
        try:
            return self._accounts[key_hash]
        except KeyError:
            pass
        raw, cacheable = await self._fetch(key_entry(key_hash))
        account = raw.decode() if raw is not None else None
        if cacheable:
            _remember(self._accounts, key_hash, account)
        return account

    async def bot(self, bot_id: str) -> IndexedBot | None:
        try:
            return self._bots[bot_id]
        except KeyError:
            pass
        raw, cacheable = await self._fetch(bot_entry(bot_id))
        bot = decode_bot(raw) if raw is not None else None
        if cacheable:
            _remember(self._bots, bot_id, bot)
        return bot


# Misses are cached too (unknown keys and bot ids cost no round trip once seen), so anyone can
# add entries: past this many the cache starts over, which bounds memory and costs each live
# key and bot one refetch.
MAX_CACHED = 50_000


def _remember(cache: dict[str, V], key: str, value: V) -> None:
    if len(cache) >= MAX_CACHED:
        cache.clear()
    cache[key] = value


async def put_account_key(
    redis: aioredis.Redis, account_id: str, key_hash: str, old_hash: str | None
) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        if old_hash:
            pipe.delete(key_entry(old_hash))
        pipe.set(key_entry(key_hash), account_id)
        pipe.incr(VERSION_KEY)
        await pipe.execute()


async def put_bot(redis: aioredis.Redis, bot: IndexedBot) -> None:
    await put_bots(redis, [bot])


async def put_bots(redis: aioredis.Redis, bots: list[IndexedBot]) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        for bot in bots:
            pipe.set(bot_entry(bot.id), encode_bot(bot))
        pipe.incr(VERSION_KEY)
        await pipe.execute()


async def remove_bot(redis: aioredis.Redis, bot_id: str) -> None:
    await remove_bots(redis, [bot_id])


async def remove_bots(redis: aioredis.Redis, bot_ids: list[str]) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(*(bot_entry(b) for b in bot_ids))
        pipe.incr(VERSION_KEY)
        await pipe.execute()


async def drop_account_key(redis: aioredis.Redis, key_hash: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(key_entry(key_hash))
        pipe.incr(VERSION_KEY)
        await pipe.execute()


async def set_generation(redis: aioredis.Redis, generation: str) -> None:
    await redis.set(GEN_KEY, generation)


async def generation(redis: aioredis.Redis) -> str | None:
    raw = await redis.get(GEN_KEY)
    return raw.decode() if raw is not None else None


async def bump_version_fresh(redis: aioredis.Redis) -> None:
    await redis.eval(_FRESH_VERSION, 1, VERSION_KEY, str(time.time_ns() // 1000))
