"""The registry index in Redis, and the in-process cache every request authenticates from.

Layout:  bp:reg:key:<sha256(key)> -> msgpack IndexedKey (account, key id, scope, bots)
         bp:reg:bot:<id> -> msgpack IndexedBot    bp:reg:acct:<id> -> msgpack IndexedAccount (limits)
         bp:reg:version -> counter bumped on every change      bp:reg:ready -> "1" once built
         bp:reg:gen -> the ClickHouse registry generation the index reflects (see catalog.generation)
A rebuild sets the version to a fresh value (microseconds since the epoch, or one more than the
current value) so a process that cached entries before Redis was emptied never mistakes the
rebuilt index's version for the one it knew.
A process caches lookups (hits and misses) and drops its cache whenever `bp:reg:version`
moves; it polls the version every BOTPULSE_REGISTRY_REFRESH_MS, so a regenerated or revoked
key stops working everywhere within that interval (default 250 ms, well under 1 s), and a
request costs no Redis round trip for auth once its key and bot are cached.

Last-used times of keys are kept in memory per process (a dict write per request), merged into
the Redis hash `bp:keys:used` every BOTPULSE_KEY_USAGE_FLUSH_S (keeping the newest time), and
copied from there to ClickHouse by the query service: never a write per post.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TypeVar

import redis.asyncio as aioredis

from botpulse.registry.keys import hash_key
from botpulse.runtime.cancelling import reraise_if_cancelled
from botpulse.runtime.logs import get_logger
from botpulse.schemas.registry import (
    ACCOUNT_KEY_ID,
    IndexedAccount,
    IndexedBot,
    IndexedKey,
    decode_account,
    decode_bot,
    decode_key,
    encode_account,
    encode_bot,
    encode_key,
)

log = get_logger(__name__)

V = TypeVar("V")

VERSION_KEY = "bp:reg:version"
READY_KEY = "bp:reg:ready"
GEN_KEY = "bp:reg:gen"
META_KEYS = (VERSION_KEY, READY_KEY, GEN_KEY)
# Outside `bp:reg:*`: a rebuild does not own it (it is not derived from ClickHouse).
USED_KEY = "bp:keys:used"
NO_LIMITS = IndexedAccount()

# HSET each field to the newer of its stored and given value (Unix ms).
_NEWER = """
for i = 1, #ARGV, 2 do
  local old = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0') or 0
  if tonumber(ARGV[i + 1]) > old then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 0
"""

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


def account_entry(account_id: str) -> str:
    return f"bp:reg:acct:{account_id}"


async def is_ready(redis: aioredis.Redis) -> bool:
    return bool(await redis.exists(READY_KEY))


class RegistryCache:
    """Per-process view of the index. `start()` launches the version poller."""

    def __init__(self, redis: aioredis.Redis, refresh_ms: int = 250, usage_flush_s: float = 30.0) -> None:
        self.redis = redis
        self.refresh_s = refresh_ms / 1000
        self.usage_flush_s = usage_flush_s
        self._keys: dict[str, IndexedKey | None] = {}
        self._bots: dict[str, IndexedBot | None] = {}
        self._limits: dict[str, IndexedAccount] = {}
        self._used: dict[str, int] = {}  # key id -> last use (Unix ms) not yet in Redis
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
        with contextlib.suppress(Exception):  # best effort: Redis may be gone already
            await self.flush_usage()

    def used(self, key_id: str) -> None:
        """Note that a key was used now (kept in memory until the next flush)."""
        self._used[key_id] = int(time.time() * 1000)

    async def flush_usage(self) -> None:
        if not self._used:
            return
        pending, self._used = self._used, {}
        args: list[str] = []
        for key_id, at in pending.items():
            args += (key_id, str(at))
        try:
            await self.redis.eval(_NEWER, 1, USED_KEY, *args)
        except Exception:
            for key_id, at in pending.items():  # keep them for the next try
                self._used[key_id] = max(at, self._used.get(key_id, 0))
            raise

    async def _poll_once(self) -> None:
        version, ready = await self.redis.mget(VERSION_KEY, READY_KEY)
        if version != self._version:
            self.invalidate()
            self._version = version
        self.ready = ready is not None

    async def _poll(self) -> None:
        failing = False
        next_flush = time.monotonic() + self.usage_flush_s
        while True:
            reraise_if_cancelled()  # a cancel swallowed anywhere in the last round
            await asyncio.sleep(self.refresh_s)
            try:
                await self._poll_once()
                if time.monotonic() >= next_flush:
                    next_flush = time.monotonic() + self.usage_flush_s
                    await self.flush_usage()
                if failing:
                    log.info("registry poll recovered")
                failing = False
            except Exception as exc:
                reraise_if_cancelled()
                # Redis gone: forget everything so no stale key keeps working.
                self.invalidate()
                self._version = None
                self.ready = False
                if not failing:
                    log.warning("registry poll failing", error=str(exc))
                failing = True

    def invalidate(self) -> None:
        self._epoch += 1
        self._keys.clear()
        self._bots.clear()
        self._limits.clear()

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

    async def credential(self, key: str) -> IndexedKey | None:
        """Whose key this is and what it may do; None for an unknown key — or, when `ready` is
        now False, because the index is missing (callers answer 503 then, not 401)."""
        return await self.credential_for_hash(hash_key(key))

    async def credential_for_hash(self, key_hash: str) -> IndexedKey | None:
        """`credential` by the key's hash: what a dashboard session keeps instead of the key, so
        the session ends when that key is regenerated or revoked, and has the key's scope."""
        return await self._lookup(self._keys, key_hash, key_entry, decode_key, None)

    async def account_for_key(self, key: str) -> str | None:
        """The account the key belongs to, whatever its scope (see `credential`)."""
        found = await self.credential(key)
        return found.account_id if found else None

    async def limits(self, account_id: str) -> IndexedAccount:
        """The account's overrides the gateway applies (`NO_LIMITS`: the settings' defaults)."""
        return await self._lookup(self._limits, account_id, account_entry, decode_account, NO_LIMITS)

    async def bot(self, bot_id: str) -> IndexedBot | None:
        return await self._lookup(self._bots, bot_id, bot_entry, decode_bot, None)

    def cached(self, key_hash: str, bot_id: str) -> tuple[IndexedKey, IndexedBot, IndexedAccount] | None:
        """A poster's key, bot and account limits when all three are in the cache and known (the
        gateway's common post: no coroutine per lookup); None when any of them needs `credential`,
        `bot` or `limits` (a lookup, or a cached miss those answer)."""
        credential = self._keys.get(key_hash)
        if credential is None:
            return None
        bot = self._bots.get(bot_id)
        if bot is None:
            return None
        limits = self._limits.get(credential.account_id)
        if limits is None:
            return None
        return credential, bot, limits

    async def _lookup(
        self,
        cache: dict[str, V],
        key: str,
        entry: Callable[[str], str],
        decode: Callable[[bytes], V],
        absent: V,
    ) -> V:
        """One cached read of the index: the cache, else Redis (`absent` when the entry is not
        there), remembered only when `_fetch` says the answer is current."""
        try:
            return cache[key]
        except KeyError:
            pass
        raw, cacheable = await self._fetch(entry(key))
        found = decode(raw) if raw is not None else absent
        if cacheable:
            _remember(cache, key, found)
        return found


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
    await put_key(redis, key_hash, account_key(account_id), old_hash)


def account_key(account_id: str) -> IndexedKey:
    """The index entry of an account's own key (it manages everything)."""
    return IndexedKey(account_id=account_id, key_id=ACCOUNT_KEY_ID)


async def put_key(redis: aioredis.Redis, key_hash: str, key: IndexedKey, old_hash: str | None = None) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        if old_hash:
            pipe.delete(key_entry(old_hash))
        pipe.set(key_entry(key_hash), encode_key(key))
        pipe.incr(VERSION_KEY)
        await pipe.execute()


async def drop_keys(redis: aioredis.Redis, key_hashes: list[str]) -> None:
    if not key_hashes:
        return
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(*(key_entry(h) for h in key_hashes))
        pipe.incr(VERSION_KEY)
        await pipe.execute()


async def put_limits(redis: aioredis.Redis, account_id: str, limits: IndexedAccount) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(account_entry(account_id), encode_account(limits))
        pipe.incr(VERSION_KEY)
        await pipe.execute()


async def last_used(redis: aioredis.Redis, key_ids: list[str]) -> dict[str, int]:
    """Last-used times (Unix ms) that Redis holds for these keys."""
    if not key_ids:
        return {}
    values = await redis.hmget(USED_KEY, key_ids)
    return {k: int(v) for k, v in zip(key_ids, values, strict=True) if v is not None}


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
