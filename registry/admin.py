"""The operator's operations, defined once: the admin HTTP API (`/v1/admin/...`, served by the
query service) routes to them, and the operator CLI either calls them over that API or, when it
opens the store itself, calls them directly. Each takes the path and query parameters and its
body decoded into the operation's struct (`Operation.body`, which the OpenAPI document shows),
and returns (HTTP status, JSON body) or raises a `RegistryError`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import redis.asyncio as aioredis

from botpulse.registry import apikeys, catalog, model, quotas
from botpulse.runtime.clickhouse import Store
from botpulse.runtime.settings import Settings
from botpulse.schemas.account import AccountCreate, AdminBotCreate, AdminBotPatch, LimitsPatch
from botpulse.schemas.registry import ACCOUNT_KEY_ID, MANAGE

Params = dict[str, str]
Result = tuple[int, dict[str, Any]]


class Context(msgspec.Struct, frozen=True):
    settings: Settings
    store: Store
    # None only in the CLI's direct mode when no Redis is configured (ClickHouse-only writes).
    redis: aioredis.Redis | None


class Operation(msgspec.Struct, frozen=True):
    method: str
    path: str
    run: Callable[[Context, Params, Any], Awaitable[Result]]
    # The struct the JSON body decodes to (None: no body): the same one `query/spec.py` documents.
    body: type | None = None

    async def call(self, ctx: Context, params: Params, raw: bytes) -> Result:
        """Run with the request's raw body, decoded first (`Invalid` naming the field). An
        operation without a body ignores one, but it must still be JSON (as it always was)."""
        if self.body is not None:
            return await self.run(ctx, params, model.decode(raw, self.body))
        if raw.strip():
            model.decode(raw, dict[str, Any])
        return await self.run(ctx, params, None)


def ms(value: dt.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1000)


async def bot_view(store: Store, bot: catalog.Bot) -> dict[str, Any]:
    """A bot as its owner and the operator see it."""
    return {
        "id": bot.id,
        "account": bot.account_id,
        "username": bot.username,
        "avatar": bot.avatar,
        "private": bot.private,
        "customSlots": bot.custom_slots,
        "customMetrics": await catalog.custom_metric_names(store, bot.id),
        "voteWebhookURL": bot.vote_webhook_url,
        "createdAt": ms(bot.created_at),
    }


def account_view(account: catalog.Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "name": account.name,
        "keyPrefix": account.key_prefix,
        "createdAt": ms(account.created_at),
    }


def key_view(key: apikeys.ApiKey, last_used_ms: int | None) -> dict[str, Any]:
    """A key as listed: never the key, only its first characters."""
    return {
        "id": key.id,
        "name": key.name,
        "scope": key.scope,
        "bots": list(key.bots),
        "bot": key.bot or None,
        "keyPrefix": key.key_prefix,
        "createdAt": ms(key.created_at),
        "lastUsedAt": last_used_ms,
    }


async def keys_view(ctx: Context, account_id: str) -> list[dict[str, Any]]:
    """The account key first (scope manage), then the named keys and bot tokens."""
    account = await catalog.get_account(ctx.store, account_id)
    if account is None:
        raise model.NotFound(f"No account {account_id!r}", "accountId")
    keys = await apikeys.list_keys(ctx.store, account_id)
    used = await apikeys.last_used(ctx.store, ctx.redis, [account_id, *(k.id for k in keys)])
    own = apikeys.ApiKey(
        ACCOUNT_KEY_ID, account_id, "account key", MANAGE, (), "", account.key_prefix, account.created_at
    )
    return [key_view(own, used.get(account_id)), *(key_view(k, used.get(k.id)) for k in keys)]


async def list_keys(ctx: Context, params: Params, body: None) -> Result:
    return 200, {"keys": await keys_view(ctx, params["accountId"])}


async def revoke_key(ctx: Context, params: Params, body: None) -> Result:
    account, key_id = params["accountId"], params["keyId"]
    key = await apikeys.revoke_key(ctx.store, ctx.redis, account, key_id, by=model.OPERATOR)
    return 200, {"id": key.id, "revoked": True}


async def get_limits(ctx: Context, params: Params, body: None) -> Result:
    if await catalog.get_account(ctx.store, params["accountId"]) is None:
        raise model.NotFound(f"No account {params['accountId']!r}", "accountId")
    limits = await quotas.limits_for(ctx.store, ctx.settings, params["accountId"])
    return 200, {"account": params["accountId"], "limits": limits.view()}


async def set_limits(ctx: Context, params: Params, body: LimitsPatch) -> Result:
    model.require_changes(body)
    changes = model.given(body)
    limits = await quotas.set_overrides(ctx.store, ctx.redis, ctx.settings, params["accountId"], changes)
    return 200, {"account": params["accountId"], "limits": limits.view()}


async def create_account(ctx: Context, params: Params, body: AccountCreate) -> Result:
    account, key = await catalog.create_account(ctx.store, ctx.redis, body.name)
    return 201, account_view(account) | {"key": key}


async def list_accounts(ctx: Context, params: Params, body: None) -> Result:
    rows = await catalog.list_accounts(ctx.store)
    return 200, {"accounts": [account_view(a) | {"bots": n} for a, n in rows]}


async def regenerate_key(ctx: Context, params: Params, body: None) -> Result:
    account, key = await catalog.regenerate_key(ctx.store, ctx.redis, params["accountId"])
    return 200, {"account": account.id, "token": key}


async def list_bots(ctx: Context, params: Params, body: None) -> Result:
    bots = await catalog.list_bots(ctx.store, params.get("account") or None)
    return 200, {"bots": [await bot_view(ctx.store, b) for b in bots]}


async def add_bot(ctx: Context, params: Params, body: AdminBotCreate) -> Result:
    bot = await catalog.create_bot(
        ctx.store,
        ctx.redis,
        body.id,
        model.bot_fields(body),
        account_id=body.account,
        default_slots=ctx.settings.default_custom_slots,
        by=model.OPERATOR,
    )
    return 201, await bot_view(ctx.store, bot)


async def set_bot(ctx: Context, params: Params, body: AdminBotPatch) -> Result:
    model.require_changes(body)
    fields = model.bot_fields(body)
    bot = await catalog.update_bot(
        ctx.store, ctx.redis, model.bot_id(params["botId"], "botId"), fields, by=model.OPERATOR
    )
    return 200, await bot_view(ctx.store, bot)


async def remove_bot(ctx: Context, params: Params, body: None) -> Result:
    bot = await catalog.remove_bot(
        ctx.store, ctx.redis, model.bot_id(params["botId"], "botId"), by=model.OPERATOR
    )
    return 200, {"id": bot.id, "removed": True}


async def sync_registry(ctx: Context, params: Params, body: None) -> Result:
    if ctx.redis is None:
        raise model.Invalid("REDIS_URL is not set: there is no index to rebuild")
    bots = await catalog.rebuild_index(ctx.store, ctx.redis, ctx.settings.stream_partitions)
    return 200, {"bots": bots, "generation": await catalog.generation(ctx.store)}


OPERATIONS: dict[str, Operation] = {
    "accounts.create": Operation("POST", "/v1/admin/accounts", create_account, AccountCreate),
    "accounts.list": Operation("GET", "/v1/admin/accounts", list_accounts),
    "keys.regenerate": Operation("POST", "/v1/admin/accounts/{accountId}/key/regenerate", regenerate_key),
    "keys.list": Operation("GET", "/v1/admin/accounts/{accountId}/keys", list_keys),
    "keys.revoke": Operation("DELETE", "/v1/admin/accounts/{accountId}/keys/{keyId}", revoke_key),
    "limits.get": Operation("GET", "/v1/admin/accounts/{accountId}/limits", get_limits),
    "limits.set": Operation("PATCH", "/v1/admin/accounts/{accountId}/limits", set_limits, LimitsPatch),
    "bots.list": Operation("GET", "/v1/admin/bots", list_bots),
    "bots.add": Operation("POST", "/v1/admin/bots", add_bot, AdminBotCreate),
    "bots.set": Operation("PATCH", "/v1/admin/bots/{botId}", set_bot, AdminBotPatch),
    "bots.remove": Operation("DELETE", "/v1/admin/bots/{botId}", remove_bot),
    "registry.sync": Operation("POST", "/v1/admin/registry/sync", sync_registry),
}
