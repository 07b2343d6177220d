"""What one account may cost: the operator's settings, overridden per account in
`account_limits` (a NULL column keeps the setting's default).

- bots per account and named keys per account: checked by the write that would exceed them
  (`catalog.create_bot`, `apikeys.create_key`), 403 naming the limit;
- registry writes per minute: `charge_write`, a per-account counter in Redis per clock minute,
  429 with Retry-After (each write bumps the registry version and empties every process's cache);
- posts per minute over all the account's bots and custom-event types per bot: applied by the
  gateway's admission script (ingest/append.py) from the index entry `bp:reg:acct:<id>`.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import redis.asyncio as aioredis

from botpulse.registry import index
from botpulse.registry.catalog import get_account, now, registry_lock, stamp
from botpulse.registry.model import NotFound, TooManyWrites
from botpulse.runtime.clickhouse import Store
from botpulse.runtime.settings import Settings
from botpulse.schemas.registry import IndexedAccount

# API name -> (column, the setting giving its default); `schemas.account.LimitsPatch` has the same
# fields, with their bounds.
FIELDS: dict[str, tuple[str, str]] = {
    "bots": ("bots", "max_bots_per_account"),
    "keys": ("api_keys", "max_keys_per_account"),
    "customEventTypes": ("custom_event_types", "custom_event_types"),
    "registryWritesPerMin": ("registry_writes_per_min", "registry_writes_per_min"),
    "postsPerMin": ("posts_per_min", "account_posts_per_min"),
}
_COLUMNS = [column for column, _ in FIELDS.values()]


class Limits(msgspec.Struct, frozen=True):
    """An account's limits in force, and which of them are its own overrides."""

    values: dict[str, int]
    overridden: tuple[str, ...]

    def view(self) -> dict[str, Any]:
        return {**self.values, "overridden": list(self.overridden)}


async def _overrides(store: Store, account_id: str) -> dict[str, int]:
    rows = await store.query(
        f"SELECT {', '.join(_COLUMNS)} FROM account_limits FINAL WHERE account_id = {{a:String}}",
        {"a": account_id},
    )
    if not rows:
        return {}
    return {name: int(v) for name, v in zip(FIELDS, rows[0], strict=True) if v is not None}


async def limits_for(store: Store, settings: Settings, account_id: str) -> Limits:
    own = await _overrides(store, account_id)
    values = {name: own.get(name, getattr(settings, setting)) for name, (_, setting) in FIELDS.items()}
    return Limits(values, tuple(own))


async def set_overrides(
    store: Store,
    redis: aioredis.Redis | None,
    settings: Settings,
    account_id: str,
    changes: dict[str, int | None],
) -> Limits:
    """Apply the operator's overrides (None: back to the default) and index what the gateway needs."""
    async with registry_lock(redis):
        if await get_account(store, account_id) is None:
            raise NotFound(f"No account {account_id!r}", "accountId")
        own: dict[str, int | None] = dict(await _overrides(store, account_id))
        own.update(changes)
        await store.insert(
            "account_limits",
            [[account_id, *(own.get(name) for name in FIELDS), now()]],
            ["account_id", *_COLUMNS, "updated_at"],
        )
        if redis is not None:
            await index.put_limits(
                redis, account_id, IndexedAccount(own.get("postsPerMin"), own.get("customEventTypes"))
            )
        await stamp(store, redis)
    return await limits_for(store, settings, account_id)


def _writes_key(account_id: str, minute: int) -> str:
    return f"bp:quota:writes:{account_id}:{minute}"


async def charge_write(redis: aioredis.Redis, account_id: str, limit: int) -> None:
    """Count one registry write of the account in this clock minute; `TooManyWrites` past `limit`."""
    t = time.time()
    minute = int(t // 60)
    key = _writes_key(account_id, minute)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, 120)
        count, _ = await pipe.execute()
    if int(count) > limit:
        raise TooManyWrites(limit, max(1, int((minute + 1) * 60 - t + 0.999)))
