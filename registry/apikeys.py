"""Named, scoped API keys of an account, and each bot's own ingest token.

Besides its account key (`accounts.key_hash`, scope manage), an account holds named keys in
`api_keys`, each with a scope fixed at creation (ingest — optionally for a set of its bots —,
read or manage), and every bot may have one ingest token of its own (`bot` set), rotated by
`rotate_bot_token` without touching any other key. Writes follow `catalog`'s rules: the registry
lock, ClickHouse first and the index second, audit rows, the generation stamp — except that a
revocation drops the index entry first, so a failure half-way leaves the key refused, never alive.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

import msgspec
import redis.asyncio as aioredis

from botpulse.registry import audit, index
from botpulse.registry.catalog import _after, _utc, get_account, now, registry_lock, stamp
from botpulse.registry.keys import generate_key, hash_key, key_hint
from botpulse.registry.model import Invalid, NotFound, QuotaExceeded
from botpulse.runtime.clickhouse import Store
from botpulse.runtime.logs import get_logger
from botpulse.schemas.account import KeyCreate
from botpulse.schemas.registry import ACCOUNT_KEY_ID, INGEST, IndexedKey

log = get_logger(__name__)

COLUMNS = [
    "id", "account_id", "name", "scope", "bots", "bot", "key_hash", "key_prefix",
    "created_at", "updated_at", "revoked",
]  # fmt: skip


class ApiKey(msgspec.Struct, frozen=True):
    id: str
    account_id: str
    name: str
    scope: str
    bots: tuple[str, ...]
    bot: str  # set for a bot's own token
    key_prefix: str
    created_at: dt.datetime


class _Row(msgspec.Struct, frozen=True):
    key: ApiKey
    key_hash: str
    updated_at: dt.datetime
    revoked: bool


_SELECT = (
    "SELECT id, account_id, name, scope, bots, bot, key_hash, key_prefix, created_at, updated_at, revoked "
    "FROM api_keys FINAL"
)


def _row(r: tuple[Any, ...]) -> _Row:
    key = ApiKey(r[0], r[1], r[2], r[3], tuple(r[4]), r[5], r[7], _utc(r[8]))
    return _Row(key, r[6], _utc(r[9]), bool(r[10]))


async def list_keys(store: Store, account_id: str) -> list[ApiKey]:
    """The account's live named keys and bot tokens, oldest first."""
    rows = await store.query(
        f"{_SELECT} WHERE account_id = {{a:String}} AND revoked = 0 ORDER BY created_at, id",
        {"a": account_id},
    )
    return [_row(r).key for r in rows]


async def _live_rows(store: Store, where: str, params: dict[str, Any]) -> list[_Row]:
    rows = await store.query(f"{_SELECT} WHERE revoked = 0 AND {where}", params)
    return [_row(r) for r in rows]


def new_key_fields(body: KeyCreate) -> tuple[str, str, tuple[str, ...]]:
    """(name, scope, bots) of a key to create; what `KeyCreate` cannot say: only an ingest key
    is limited to bots."""
    bots = tuple(dict.fromkeys(body.bots or ()))
    if bots and body.scope != INGEST:
        raise Invalid("bots limits an ingest key; read and manage keys cover every bot", "bots")
    return body.name, body.scope, bots


async def _insert_locked(
    store: Store, redis: aioredis.Redis | None, row: _Row, by: str, diff: dict[str, tuple[Any, Any]]
) -> None:
    k = row.key
    await store.insert(
        "api_keys",
        [[k.id, k.account_id, k.name, k.scope, list(k.bots), k.bot, row.key_hash, k.key_prefix,
          k.created_at, row.updated_at, int(row.revoked)]],
        COLUMNS,
    )  # fmt: skip
    await audit.write(store, audit.rows(k.bot or audit.ACCOUNT_ROW, k.account_id, row.updated_at, by, diff))
    if redis is not None and not row.revoked:
        await index.put_key(redis, row.key_hash, IndexedKey(k.account_id, k.id, k.scope, k.bots))
    await stamp(store, redis)


def _described(key: ApiKey) -> dict[str, Any]:
    """What the audit log keeps of a key (never the key)."""
    return {
        "id": key.id,
        "name": key.name,
        "scope": key.scope,
        "bots": list(key.bots),
        "keyPrefix": key.key_prefix,
    }


async def create_key(
    store: Store,
    redis: aioredis.Redis | None,
    account_id: str,
    name: str,
    scope: str,
    bots: tuple[str, ...] = (),
    *,
    by: str,
    max_keys: int | None,
) -> tuple[ApiKey, str]:
    """A new named key and its secret (returned once). `max_keys` bounds the account's named keys
    (bot tokens do not count: there is one per bot at most)."""
    async with registry_lock(redis):
        if await get_account(store, account_id) is None:
            raise NotFound(f"No account {account_id!r}", "account")
        live = await _live_rows(store, "account_id = {a:String} AND bot = ''", {"a": account_id})
        if max_keys is not None and len(live) >= max_keys:
            raise QuotaExceeded(
                f"Key limit reached: this account has {len(live)} of {max_keys} API keys; revoke one, "
                "or ask the operator to raise the account's limit",
                "keys",
                max_keys,
            )
        if bots:
            rows = await store.query(
                "SELECT id FROM bots FINAL WHERE deleted = 0 AND account_id = {a:String} "
                "AND id IN {ids:Array(String)}",
                {"a": account_id, "ids": list(bots)},
            )
            missing = sorted(set(bots) - {r[0] for r in rows})
            if missing:
                raise Invalid(f"bots: no bot {missing[0]!r} in this account", "bots")
        secret = generate_key()
        at = now()
        key = ApiKey("key_" + secrets.token_hex(8), account_id, name, scope, bots, "", key_hint(secret), at)
        await _insert_locked(store, redis, _Row(key, hash_key(secret), at, False), by,
                             {f"apiKey:{key.id}": (audit.ABSENT, _described(key))})  # fmt: skip
    log.info("api key created", account=account_id, key=key.id, scope=scope, by=by)
    return key, secret


async def revoke_key(
    store: Store, redis: aioredis.Redis | None, account_id: str, key_id: str, *, by: str
) -> ApiKey:
    """Revoke one key of the account (named or a bot's token); the others stay as they are."""
    if key_id == ACCOUNT_KEY_ID:
        raise Invalid(
            "The account key is not revoked but regenerated: POST /v1/account/key/regenerate", "keyId"
        )
    async with registry_lock(redis):
        rows = await _live_rows(
            store, "id = {id:String} AND account_id = {a:String}", {"id": key_id, "a": account_id}
        )
        if not rows:
            raise NotFound(f"No key {key_id!r}", "keyId")
        await _revoke_locked(store, redis, rows[0], by)
    log.info("api key revoked", account=account_id, key=key_id, by=by)
    return rows[0].key


async def _revoke_locked(store: Store, redis: aioredis.Redis | None, row: _Row, by: str) -> None:
    if redis is not None:
        await index.drop_keys(redis, [row.key_hash])
    revoked = msgspec.structs.replace(row, updated_at=_after(row.updated_at), revoked=True)
    await _insert_locked(store, redis, revoked, by, {f"apiKey:{row.key.id}": (_described(row.key), None)})


async def rotate_bot_token(
    store: Store, redis: aioredis.Redis | None, account_id: str, bot: str, *, by: str
) -> tuple[ApiKey, str]:
    """A new ingest token for this bot only: its previous token is refused from now on, every
    other key (the account's included) keeps working."""
    async with registry_lock(redis):
        for row in await _live_rows(store, "bot = {b:String}", {"b": bot}):
            await _revoke_locked(store, redis, row, by)
        secret = generate_key()
        at = now()
        key = ApiKey("key_" + secrets.token_hex(8), account_id, f"bot {bot}", INGEST, (bot,), bot,
                     key_hint(secret), at)  # fmt: skip
        await _insert_locked(store, redis, _Row(key, hash_key(secret), at, False), by,
                             {"token": (audit.ABSENT, key.key_prefix)})  # fmt: skip
    log.info("bot token rotated", account=account_id, bot=bot, by=by)
    return key, secret


# --- last used ----------------------------------------------------------------------------------
async def last_used(store: Store, redis: aioredis.Redis | None, key_ids: list[str]) -> dict[str, int]:
    """Last use (Unix ms) of each key that has one: the newer of Redis's and ClickHouse's."""
    rows = await store.query(
        "SELECT key_id, toUnixTimestamp64Milli(max(last_used_at)) FROM api_key_usage "
        "WHERE key_id IN {ids:Array(String)} GROUP BY key_id",
        {"ids": key_ids},
    )
    found = {r[0]: int(r[1]) for r in rows}
    if redis is not None:
        for key_id, at in (await index.last_used(redis, key_ids)).items():
            found[key_id] = max(at, found.get(key_id, 0))
    return found


async def flush_usage(store: Store, redis: aioredis.Redis) -> int:
    """Copy the last-used times Redis holds to ClickHouse (so they outlive a Redis loss). The
    Redis hash stays: it is the fresher copy and holds one field per key."""
    raw = await redis.hgetall(index.USED_KEY)
    if not raw:
        return 0
    rows = [[k.decode(), dt.datetime.fromtimestamp(int(v) / 1000, dt.UTC)] for k, v in raw.items()]
    await store.insert("api_key_usage", rows, ["key_id", "last_used_at"])
    return len(rows)
