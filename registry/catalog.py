"""Accounts and bots in ClickHouse (the system of record), kept in step with the Redis index.

Every write takes the registry lock in Redis (so writes and index rebuilds from any process never
interleave), writes ClickHouse first and the index second, appends its audit rows, and stamps the
index with the new registry generation. If the index write fails, the generation in Redis stays
behind ClickHouse's and the next `ensure_index` (query service start-up and its periodic check,
or `botpulse registry sync`) rebuilds the index from ClickHouse.

A key regeneration is the one exception to "ClickHouse first": the old key's index entry is
dropped before anything else, so a failure half-way leaves the old key refused, never alive.

`redis=None` writes ClickHouse only (the operator CLI against an embedded store whose Redis is
not running); the generation check makes the next start rebuild the index.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import redis.asyncio as aioredis

from botpulse.registry import audit, index
from botpulse.registry.keys import generate_key, hash_key, key_hint
from botpulse.registry.model import (
    OPERATOR,
    BotFields,
    Busy,
    Conflict,
    Invalid,
    NotFound,
    NotManageable,
    QuotaExceeded,
    given,
)
from botpulse.runtime.clickhouse import Store
from botpulse.runtime.logs import get_logger
from botpulse.schemas.registry import (
    IndexedAccount,
    IndexedBot,
    IndexedKey,
    encode_account,
    encode_bot,
    encode_key,
)
from botpulse.schemas.stream import custom_slots_key, partition_of

log = get_logger(__name__)

LOCK_KEY = "bp:lock:registry"
LOCK_TTL_MS = 30_000
LOCK_WAIT_S = 10.0
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


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

    def audited(self) -> dict[str, Any]:
        """The fields the audit log tracks, under their API names."""
        return {
            "account": self.account_id,
            "username": self.username,
            "avatar": self.avatar,
            "private": self.private,
            "voteWebhookURL": self.vote_webhook_url,
            "customSlots": self.custom_slots,
        }


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _after(previous: dt.datetime | None) -> dt.datetime:
    """A row version newer than `previous` even if the clock has not moved a millisecond (the
    newest `updated_at` wins in ReplacingMergeTree; a tie would be ambiguous)."""
    t = now()
    if previous is not None and t <= _utc(previous):
        t = _utc(previous) + dt.timedelta(milliseconds=1)
    return t


ACCOUNT_COLUMNS = ["id", "name", "key_hash", "key_prefix", "created_at", "updated_at", "deleted"]
BOT_COLUMNS = [
    "id", "account_id", "username", "avatar", "private", "custom_slots",
    "vote_webhook_url", "created_at", "updated_at", "deleted",
]  # fmt: skip


# --- locking and generation ---------------------------------------------------------------------
@contextlib.asynccontextmanager
async def registry_lock(redis: aioredis.Redis | None, wait_s: float = LOCK_WAIT_S) -> AsyncIterator[None]:
    """Serialize registry writes and rebuilds across processes (a Redis lock with a TTL, so a
    crashed holder cannot block the registry for longer than 30 s)."""
    if redis is None:
        yield
        return
    token = secrets.token_hex(16)
    deadline = time.monotonic() + wait_s
    while not await redis.set(LOCK_KEY, token, nx=True, px=LOCK_TTL_MS):
        if time.monotonic() > deadline:
            raise Busy("The registry is busy; retry in a moment")
        await asyncio.sleep(0.02)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # the TTL frees it if Redis is gone
            await redis.eval(_RELEASE, 1, LOCK_KEY, token)


async def generation(store: Store) -> str:
    """The registry generation in ClickHouse: the newest row version of accounts and of bots.
    Every registry write inserts a newer row, so a Redis index stamped with an older generation
    (restored from an old AOF, or missing a write whose index update failed) is stale."""
    rows = await store.query(
        "SELECT (SELECT toUnixTimestamp64Milli(max(updated_at)) FROM accounts), "
        "(SELECT toUnixTimestamp64Milli(max(updated_at)) FROM bots), "
        "(SELECT toUnixTimestamp64Milli(max(updated_at)) FROM api_keys), "
        "(SELECT toUnixTimestamp64Milli(max(updated_at)) FROM account_limits)"
    )
    return ":".join(str(int(v or 0)) for v in rows[0])


async def stamp(store: Store, redis: aioredis.Redis | None) -> None:
    if redis is not None:
        await index.set_generation(redis, await generation(store))


# --- accounts -----------------------------------------------------------------------------------
class _AccountRow(msgspec.Struct, frozen=True):
    account: Account
    key_hash: str
    updated_at: dt.datetime


async def _account_row(store: Store, account_id: str) -> _AccountRow | None:
    rows = await store.query(
        "SELECT id, name, key_hash, key_prefix, created_at, updated_at FROM accounts FINAL "
        "WHERE id = {id:String} AND deleted = 0",
        {"id": account_id},
    )
    if not rows:
        return None
    r = rows[0]
    return _AccountRow(Account(r[0], r[1], r[3], _utc(r[4])), r[2], _utc(r[5]))


async def get_account(store: Store, account_id: str) -> Account | None:
    row = await _account_row(store, account_id)
    return row.account if row else None


async def list_accounts(store: Store) -> list[tuple[Account, int]]:
    """Every account with its number of bots, oldest first."""
    rows = await store.query(
        "SELECT a.id, a.name, a.key_prefix, a.created_at, ifNull(b.n, 0) "
        "FROM (SELECT id, name, key_prefix, created_at FROM accounts FINAL WHERE deleted = 0) AS a "
        "LEFT JOIN (SELECT account_id, count() AS n FROM bots FINAL WHERE deleted = 0 "
        "GROUP BY account_id) AS b "
        "ON a.id = b.account_id ORDER BY a.created_at, a.id",
        settings={"join_use_nulls": 1},
    )
    return [(Account(r[0], r[1], r[2], _utc(r[3])), int(r[4])) for r in rows]


async def create_account(
    store: Store, redis: aioredis.Redis | None, name: str, *, by: str = OPERATOR
) -> tuple[Account, str]:
    """A new account and its API key (returned once, never stored)."""
    key = generate_key()
    at = now()
    account = Account(id="acc_" + secrets.token_hex(8), name=name, key_prefix=key_hint(key), created_at=at)
    async with registry_lock(redis):
        diff = {"name": (audit.ABSENT, name), "key": (audit.ABSENT, account.key_prefix)}
        await _write_account_locked(store, redis, account, hash_key(key), at, by, diff)
    log.info("account created", account=account.id, by=by)
    return account, key


async def regenerate_key(
    store: Store, redis: aioredis.Redis | None, account_id: str, *, by: str = OPERATOR
) -> tuple[Account, str]:
    """A new key for the account; the old one is refused from the moment this returns (and by
    every process's cache within BOTPULSE_REGISTRY_REFRESH_MS)."""
    async with registry_lock(redis):
        row = await _account_row(store, account_id)
        if row is None:
            raise NotFound(f"No account {account_id!r}", "account")
        if redis is not None:
            await index.drop_account_key(redis, row.key_hash)
        key = generate_key()
        at = _after(row.updated_at)
        account = msgspec.structs.replace(row.account, key_prefix=key_hint(key))
        diff = {"key": (row.account.key_prefix, account.key_prefix)}
        await _write_account_locked(store, redis, account, hash_key(key), at, by, diff)
    log.info("account key regenerated", account=account.id, by=by)
    return account, key


async def _write_account_locked(
    store: Store,
    redis: aioredis.Redis | None,
    account: Account,
    key_hash: str,
    at: dt.datetime,
    by: str,
    diff: dict[str, tuple[Any, Any]],
) -> None:
    """The new version of an account row, its audit rows, its index entry and the generation
    stamp; the caller holds the registry lock."""
    await store.insert(
        "accounts",
        [[account.id, account.name, key_hash, account.key_prefix, account.created_at, at, 0]],
        ACCOUNT_COLUMNS,
    )
    await audit.write(store, audit.rows(audit.ACCOUNT_ROW, account.id, at, by, diff))
    if redis is not None:
        await index.put_account_key(redis, account.id, key_hash, None)
    await stamp(store, redis)


# --- bots ---------------------------------------------------------------------------------------
class _BotRow(msgspec.Struct, frozen=True):
    bot: Bot
    updated_at: dt.datetime
    deleted: bool


_BOT_SELECT = (
    "SELECT id, account_id, username, avatar, private, custom_slots, vote_webhook_url, created_at, "
    "updated_at, deleted FROM bots FINAL"
)


def _bot_from(r: tuple[Any, ...]) -> Bot:
    return Bot(r[0], r[1], r[2], r[3], bool(r[4]), int(r[5]), r[6], _utc(r[7]))


async def _bot_row(store: Store, bot_id: str) -> _BotRow | None:
    """The newest version of the bot's row, removed or not."""
    rows = await store.query(f"{_BOT_SELECT} WHERE id = {{id:String}}", {"id": bot_id})
    if not rows:
        return None
    return _BotRow(_bot_from(rows[0]), _utc(rows[0][8]), bool(rows[0][9]))


async def get_bot(store: Store, bot_id: str) -> Bot | None:
    row = await _bot_row(store, bot_id)
    return row.bot if row and not row.deleted else None


async def list_bots(store: Store, account_id: str | None = None) -> list[Bot]:
    if account_id is None:
        rows = await store.query(f"{_BOT_SELECT} WHERE deleted = 0 ORDER BY created_at, id")
    else:
        rows = await store.query(
            f"{_BOT_SELECT} WHERE deleted = 0 AND account_id = {{a:String}} ORDER BY created_at, id",
            {"a": account_id},
        )
    return [_bot_from(r) for r in rows]


async def count_bots(store: Store, account_id: str) -> int:
    rows = await store.query(
        "SELECT count() FROM bots FINAL WHERE deleted = 0 AND account_id = {a:String}", {"a": account_id}
    )
    return int(rows[0][0])


async def custom_metric_names(store: Store, bot_id: str) -> list[str]:
    rows = await store.query(
        "SELECT name FROM custom_metric_names FINAL WHERE bot_id = {id:String} ORDER BY first_seen, name",
        {"id": bot_id},
    )
    return [r[0] for r in rows]


async def managed_bot(store: Store, bot_id: str, account_id: str) -> Bot:
    """The bot, if `account_id` owns it."""
    bot = await get_bot(store, bot_id)
    if bot is None:
        raise NotFound("Not found")
    if bot.account_id != account_id:
        raise NotManageable()
    return bot


async def _bot_rows(store: Store, bot_ids: list[str]) -> dict[str, _BotRow]:
    rows = await store.query(f"{_BOT_SELECT} WHERE id IN {{ids:Array(String)}}", {"ids": bot_ids})
    return {r[0]: _BotRow(_bot_from(r), _utc(r[8]), bool(r[9])) for r in rows}


def _diff(previous: _BotRow | None, bot: Bot, deleted: bool) -> dict[str, tuple[Any, Any]]:
    alive = previous is not None and not previous.deleted
    if deleted:
        return {"deleted": (False, True)} if alive else {}
    if alive:
        assert previous is not None
        old, new = previous.bot.audited(), bot.audited()
        return {k: (old[k], new[k]) for k in new if old[k] != new[k]}
    return {"id": (audit.ABSENT, bot.id)} | {k: (audit.ABSENT, v) for k, v in bot.audited().items()}


async def _write_bots_locked(
    store: Store, redis: aioredis.Redis | None, bots: list[Bot], *, deleted: bool, by: str
) -> int:
    """Write the bots' new versions, their audit rows and index entries in one batch each;
    returns how many changed (a bot written as it already is writes nothing)."""
    previous = await _bot_rows(store, [b.id for b in bots])
    rows: list[list[Any]] = []
    audit_rows: list[list[Any]] = []
    changed: list[Bot] = []
    for bot in bots:
        diff = _diff(previous.get(bot.id), bot, deleted)
        if not diff:
            continue
        before = previous.get(bot.id)
        at = _after(before.updated_at if before else None)
        rows.append([
            bot.id, bot.account_id, bot.username, bot.avatar, int(bot.private), bot.custom_slots,
            bot.vote_webhook_url, bot.created_at, at, int(deleted),
        ])  # fmt: skip
        audit_rows += audit.rows(bot.id, bot.account_id, at, by, diff)
        changed.append(bot)
    if not changed:
        return 0
    await store.insert("bots", rows, BOT_COLUMNS)
    await audit.write(store, audit_rows)
    if redis is not None:
        if deleted:
            await index.remove_bots(redis, [b.id for b in changed])
        else:
            await index.put_bots(redis, [b.indexed() for b in changed])
    await stamp(store, redis)
    return len(changed)


async def _write_bot_locked(
    store: Store, redis: aioredis.Redis | None, bot: Bot, *, deleted: bool, by: str
) -> bool:
    return await _write_bots_locked(store, redis, [bot], deleted=deleted, by=by) == 1


async def write_bot(
    store: Store, redis: aioredis.Redis | None, bot: Bot, *, deleted: bool = False, by: str = OPERATOR
) -> None:
    """Store this version of the bot as is (create or replace), audited."""
    async with registry_lock(redis):
        await _write_bot_locked(store, redis, bot, deleted=deleted, by=by)


async def write_bots(
    store: Store, redis: aioredis.Redis | None, bots: list[Bot], *, by: str = OPERATOR
) -> int:
    """`write_bot` for many bots at once (seeding a fleet): one query, insert and Redis round
    trip for all of them. Returns how many changed."""
    async with registry_lock(redis):
        return await _write_bots_locked(store, redis, bots, deleted=False, by=by)


async def create_bot(
    store: Store,
    redis: aioredis.Redis | None,
    bot_id: str,
    fields: BotFields,
    *,
    account_id: str,
    default_slots: int,
    by: str,
    max_bots: int | None = None,
) -> Bot:
    """A new bot owned by `account_id`; `Conflict` when the id is taken, `QuotaExceeded` when the
    account already has `max_bots` (None: no limit, the operator's way)."""
    values = given(fields)
    async with registry_lock(redis):
        if max_bots is not None:
            have = await count_bots(store, account_id)
            if have >= max_bots:
                raise QuotaExceeded(
                    f"Bot limit reached: this account has {have} of {max_bots} bots; remove one, "
                    "or ask the operator to raise the account's limit",
                    "bots",
                    max_bots,
                )
        row = await _bot_row(store, bot_id)
        if row is not None and not row.deleted:
            raise Conflict(f"Bot {bot_id} already exists", "id")
        # A removed bot's stats, custom graphs and audit log stay stored under its id: only the
        # account that owned it may register the id again, or another account would read them.
        if row is not None and row.bot.account_id != account_id:
            raise Conflict(f"Bot id {bot_id} was used by another account", "id")
        if await get_account(store, account_id) is None:
            raise Invalid(f"No account {account_id!r}", "account")
        bot = Bot(
            id=bot_id,
            account_id=account_id,
            username=values["username"],
            avatar=values.get("avatar"),
            private=values.get("private", False),
            custom_slots=values.get("custom_slots", default_slots),
            vote_webhook_url=values.get("vote_webhook_url"),
            created_at=now(),
        )
        await _write_bot_locked(store, redis, bot, deleted=False, by=by)
    log.info("bot created", bot=bot_id, account=account_id, by=by)
    return bot


async def update_bot(
    store: Store,
    redis: aioredis.Redis | None,
    bot_id: str,
    fields: BotFields,
    *,
    by: str,
    owner: str | None = None,
) -> Bot:
    """Apply the given fields; with `owner`, only if that account owns the bot."""
    values = given(fields)
    async with registry_lock(redis):
        bot = await get_bot(store, bot_id)
        if bot is None:
            raise NotFound("Not found")
        if owner is not None and bot.account_id != owner:
            raise NotManageable()
        if "account_id" in values and await get_account(store, values["account_id"]) is None:
            raise Invalid(f"No account {values['account_id']!r}", "account")
        bot = msgspec.structs.replace(bot, **values)
        await _write_bot_locked(store, redis, bot, deleted=False, by=by)
    return bot


async def remove_bot(store: Store, redis: aioredis.Redis | None, bot_id: str, *, by: str) -> Bot:
    async with registry_lock(redis):
        bot = await get_bot(store, bot_id)
        if bot is None:
            raise NotFound("Not found")
        await _write_bot_locked(store, redis, bot, deleted=True, by=by)
    log.info("bot removed", bot=bot_id, by=by)
    return bot


# --- the index ----------------------------------------------------------------------------------
async def rebuild_index(store: Store, redis: aioredis.Redis, partitions: int) -> int:
    """Rewrite the whole Redis index from ClickHouse; returns the number of bots indexed."""
    async with registry_lock(redis):
        return await _rebuild_locked(store, redis, partitions)


async def _rebuild_locked(store: Store, redis: aioredis.Redis, partitions: int) -> int:
    gen = await generation(store)
    accounts = await store.query("SELECT id, key_hash FROM accounts FINAL WHERE deleted = 0")
    bots = await store.query(
        "SELECT id, account_id, username, private, custom_slots FROM bots FINAL WHERE deleted = 0"
    )
    names = await store.query(
        "SELECT bot_id, groupArray(name) FROM custom_metric_names FINAL GROUP BY bot_id"
    )
    keys = await store.query(
        "SELECT key_hash, account_id, id, scope, bots FROM api_keys FINAL WHERE revoked = 0"
    )
    limits = await store.query(
        "SELECT account_id, posts_per_min, custom_event_types FROM account_limits FINAL"
    )
    wanted: dict[str, bytes | str] = {}
    for account_id, key_hash in accounts:
        wanted[index.key_entry(key_hash)] = encode_key(index.account_key(account_id))
    live = {account_id for account_id, _ in accounts}
    for key_hash, account_id, key_id, scope, key_bots in keys:
        if account_id in live:
            entry = IndexedKey(account_id, key_id, scope, tuple(key_bots))
            wanted[index.key_entry(key_hash)] = encode_key(entry)
    for account_id, posts, types in limits:
        wanted[index.account_entry(account_id)] = encode_account(IndexedAccount(posts, types))
    for bot_id, account_id, username, private, slots in bots:
        wanted[index.bot_entry(bot_id)] = encode_bot(
            IndexedBot(bot_id, account_id, username, bool(private), int(slots))
        )
    keep = {k.encode() for k in wanted} | {k.encode() for k in index.META_KEYS}
    # Write every current entry before dropping stale ones: a valid key never disappears
    # mid-rebuild, and a stale one is gone when the rebuild returns.
    stale = [k async for k in redis.scan_iter(match="bp:reg:*", count=1000) if k not in keep]
    async with redis.pipeline(transaction=False) as pipe:
        for key, value in wanted.items():
            pipe.set(key, value)
        for bot_id, metric_names in names:
            if metric_names:
                pipe.sadd(custom_slots_key(partition_of(bot_id, partitions), bot_id), *metric_names)
        if stale:
            pipe.delete(*stale)
        pipe.set(index.GEN_KEY, gen)
        pipe.set(index.READY_KEY, "1")
        await pipe.execute()
    await index.bump_version_fresh(redis)
    log.info(
        "registry index rebuilt", accounts=len(accounts), bots=len(bots), stale=len(stale), generation=gen
    )
    return len(bots)


async def ensure_index(store: Store, redis: aioredis.Redis, partitions: int) -> bool:
    """Rebuild the index when Redis lost it or it is stale (its generation differs from
    ClickHouse's); True when a rebuild ran."""
    if await index.is_ready(redis) and await index.generation(redis) == await generation(store):
        return False
    async with registry_lock(redis):
        # Another process may have rebuilt it while this one waited for the lock.
        if await index.is_ready(redis) and await index.generation(redis) == await generation(store):
            return False
        await _rebuild_locked(store, redis, partitions)
    return True
