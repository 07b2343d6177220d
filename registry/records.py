"""Accounts and bots in ClickHouse (the system of record), kept in step with the Redis index.

Writes go to ClickHouse first, then to the index: if the index write fails the next
`rebuild_index` (run on start, or by `botpulse registry sync`) repairs it from ClickHouse.
"""

from __future__ import annotations

import datetime as dt
import secrets

import msgspec
import redis.asyncio as aioredis

from registry import index
from registry.keys import generate_key, hash_key, key_hint
from runtime.clickhouse import Store
from runtime.logs import get_logger
from runtime.streams import custom_slots_key, partition_of
from schemas.registry import IndexedBot, encode_bot

log = get_logger(__name__)


class Account(msgspec.Struct, frozen=True):
    id: str
    name: str
    key_prefix: str
    created_at: dt.datetime


class Bot(msgspec.Struct, frozen=True):
    id: str
    account_id: str
    username: str
    avatar: str | None
    private: bool
    custom_slots: int
    vote_webhook_url: str | None
    created_at: dt.datetime

    def indexed(self) -> IndexedBot:
        return IndexedBot(
            id=self.id,
            account_id=self.account_id,
            username=self.username,
            private=self.private,
            custom_slots=self.custom_slots,
        )


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


ACCOUNT_COLUMNS = ["id", "name", "key_hash", "key_prefix", "created_at", "updated_at", "deleted"]
BOT_COLUMNS = [
    "id", "account_id", "username", "avatar", "private", "custom_slots",
    "vote_webhook_url", "created_at", "updated_at", "deleted",
]  # fmt: skip


async def create_account(store: Store, redis: aioredis.Redis, name: str) -> tuple[Account, str]:
    """A new account and its API key (returned once, never stored)."""
    key = generate_key()
    account = Account(id="acc_" + secrets.token_hex(8), name=name, key_prefix=key_hint(key), created_at=now())
    await store.insert(
        "accounts",
        [[account.id, name, hash_key(key), account.key_prefix, account.created_at, account.created_at, 0]],
        ACCOUNT_COLUMNS,
    )
    await index.put_account_key(redis, account.id, hash_key(key), None)
    return account, key


async def get_bot(store: Store, bot_id: str) -> Bot | None:
    rows = await store.query(
        "SELECT id, account_id, username, avatar, private, custom_slots, vote_webhook_url, created_at "
        "FROM bots FINAL WHERE id = {id:String} AND deleted = 0",
        {"id": bot_id},
    )
    if not rows:
        return None
    r = rows[0]
    return Bot(r[0], r[1], r[2], r[3], bool(r[4]), int(r[5]), r[6], _utc(r[7]))


async def write_bot(store: Store, redis: aioredis.Redis, bot: Bot, *, deleted: bool = False) -> None:
    await store.insert(
        "bots",
        [[
            bot.id, bot.account_id, bot.username, bot.avatar, int(bot.private), bot.custom_slots,
            bot.vote_webhook_url, bot.created_at, now(), int(deleted),
        ]],
        BOT_COLUMNS,
    )  # fmt: skip
    if deleted:
        await index.remove_bot(redis, bot.id)
    else:
        await index.put_bot(redis, bot.indexed())


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


async def rebuild_index(store: Store, redis: aioredis.Redis, partitions: int) -> int:
    """Rewrite the whole Redis index from ClickHouse; returns the number of bots indexed."""
    accounts = await store.query("SELECT id, key_hash FROM accounts FINAL WHERE deleted = 0")
    bots = await store.query(
        "SELECT id, account_id, username, private, custom_slots FROM bots FINAL WHERE deleted = 0"
    )
    names = await store.query(
        "SELECT bot_id, groupArray(name) FROM custom_metric_names FINAL GROUP BY bot_id"
    )
    stale = [k async for k in redis.scan_iter(match="bp:reg:*", count=1000)]
    async with redis.pipeline(transaction=False) as pipe:
        for key in stale:
            if key not in (index.VERSION_KEY.encode(), index.READY_KEY.encode()):
                pipe.delete(key)
        for account_id, key_hash in accounts:
            pipe.set(index.key_entry(key_hash), account_id)
        for bot_id, account_id, username, private, slots in bots:
            bot = IndexedBot(bot_id, account_id, username, bool(private), int(slots))
            pipe.set(index.bot_entry(bot_id), encode_bot(bot))
        for bot_id, metric_names in names:
            if metric_names:
                pipe.sadd(custom_slots_key(partition_of(bot_id, partitions), bot_id), *metric_names)
        pipe.set(index.READY_KEY, "1")
        pipe.incr(index.VERSION_KEY)
        await pipe.execute()
    log.info("registry index rebuilt", accounts=len(accounts), bots=len(bots))
    return len(bots)


async def ensure_index(store: Store, redis: aioredis.Redis, partitions: int) -> bool:
    """Rebuild the index when Redis lost it; True when a rebuild ran."""
    if await index.is_ready(redis):
        return False
    await rebuild_index(store, redis, partitions)
    return True
