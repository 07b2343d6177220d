"""Account API routes served by the query service: bot registration and changes, the DBots-style
log/keys/api endpoints, and the operator's admin endpoints (`/v1/admin/...`, guarded by
BOTPULSE_ADMIN_TOKEN). `add_routes` is called by `query.app.build_app`.

Accounts authenticate with their API key from the registry index (like the gateway). When the
index is missing (Redis emptied) a request rebuilds it from ClickHouse before answering, and a
background keeper rebuilds it within a second of its loss and whenever its generation falls
behind ClickHouse's (checked every BOTPULSE_REGISTRY_CHECK_S).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from botpulse.query.resources import REDIS, REGISTRY, SETTINGS, STORE, UNAVAILABLE
from botpulse.registry import admin, apikeys, audit, catalog, index, model, quotas
from botpulse.registry.keys import parse_authorization, request_key, same_secret
from botpulse.runtime.cancelling import reraise_if_cancelled
from botpulse.runtime.clickhouse import ReadRefused
from botpulse.runtime.logs import get_logger
from botpulse.schemas.account import BotCreate, BotPatch, KeyCreate, WebhookPatch
from botpulse.schemas.registry import INGEST, MANAGE, READ, IndexedKey

log = get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.Response]]
KEEPER = web.AppKey("registry_keeper", asyncio.Task)
REBUILD_LOCK = web.AppKey("registry_rebuild_lock", asyncio.Lock)
LOG_PAGE_MAX = 100
T = TypeVar("T")


def _answer(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status)


def guarded(handler: Handler) -> Handler:
    """Registry refusals become their 4xx; an unreachable Redis or ClickHouse a 503. After a
    success the process's registry cache is dropped, so this process sees its own change at once
    (the others within BOTPULSE_REGISTRY_REFRESH_MS)."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.Response:
        try:
            response = await handler(request)
            request.app[REGISTRY].invalidate()
            return response
        except model.RegistryError as exc:
            response = _answer(exc.status, exc.body())
            if exc.retry_after_s is not None:
                response.headers["Retry-After"] = str(exc.retry_after_s)
        except web.HTTPRequestEntityTooLarge:
            response = _answer(413, {"message": "Request body too large"})
        except ReadRefused as exc:
            response = _answer(503, {"message": exc.message, "limit": exc.limit})
        except UNAVAILABLE as exc:
            log.warning("registry backend unavailable", error=str(exc), path=request.path)
            response = _answer(503, {"message": "Registry temporarily unavailable; retry shortly"})
        if response.status == 503:
            response.headers["Retry-After"] = "1"
        return response

    return wrapper


def _context(request: web.Request) -> admin.Context:
    app = request.app
    return admin.Context(app[SETTINGS], app[STORE], app[REDIS])


async def _body(request: web.Request, struct: type[T]) -> T:
    """The request's body as `struct` (the route's documented body), 400 naming the field otherwise."""
    return model.decode(await request.read(), struct)


async def _rebuild_if_missing(app: web.Application) -> bool:
    """Rebuild the index if Redis lost it; one rebuild at a time per process."""
    redis = app[REDIS]
    if await index.is_ready(redis):
        return False
    async with app[REBUILD_LOCK]:
        settings = app[SETTINGS]
        rebuilt = await catalog.ensure_index(app[STORE], redis, settings.stream_partitions)
    app[REGISTRY].invalidate()
    return rebuilt


async def credential(request: web.Request) -> IndexedKey:
    """The key the request carries (`Authorization` or `?apikey=`): whose, and its scope."""
    key = request_key(request.headers, request.query)
    if not key:
        raise model.Unauthorized()
    registry = request.app[REGISTRY]
    found = await registry.credential(key)
    if found is None and await _rebuild_if_missing(request.app):
        found = await registry.credential(key)
    if found is None:
        raise model.Unauthorized()
    registry.used(found.usage_id)
    return found


def require_scope(found: IndexedKey, needs: str = MANAGE) -> str:
    """The key's account if the key has the scope `needs` (a manage key has every scope, a read
    key only read), else `MissingScope` (403 naming both). The one rule for what a key may do:
    the account API applies it to the request's key, the dashboard to its session's key."""
    if found.scope != MANAGE and (needs == MANAGE or found.scope != needs):
        what = "managing the account" if needs == MANAGE else "reading"
        raise model.MissingScope(found.scope, needs, what)
    return found.account_id


async def caller(request: web.Request, needs: str = MANAGE) -> str:
    """The account whose key the request carries, if the key has the scope `needs`."""
    return require_scope(await credential(request), needs)


async def charge(request: web.Request, account: str) -> quotas.Limits:
    """Count a registry write against the account's writes per minute; its limits in force
    (the account API's writes and the dashboard's forms count alike)."""
    app = request.app
    limits = await quotas.limits_for(app[STORE], app[SETTINGS], account)
    await quotas.charge_write(app[REDIS], account, limits.values["registryWritesPerMin"])
    return limits


def _path_bot(request: web.Request) -> str:
    bot_id = request.match_info["botId"]
    if not model.BOT_ID.match(bot_id):
        raise model.NotFound("Not found")
    return bot_id


# --- account API --------------------------------------------------------------------------------
@guarded
async def create_bot(request: web.Request) -> web.Response:
    account = await caller(request)
    body = await _body(request, BotCreate)
    fields = model.bot_fields(body)
    limits = await charge(request, account)
    ctx = _context(request)
    bot = await catalog.create_bot(
        ctx.store,
        ctx.redis,
        body.id,
        fields,
        account_id=account,
        default_slots=ctx.settings.default_custom_slots,
        by=account,
        max_bots=limits.values["bots"],
    )
    return _answer(201, await admin.bot_view(ctx.store, bot))


@guarded
async def patch_bot(request: web.Request) -> web.Response:
    account = await caller(request)
    bot_id = _path_bot(request)
    body = await _body(request, BotPatch)
    model.require_changes(body)
    fields = model.bot_fields(body)
    await charge(request, account)
    ctx = _context(request)
    bot = await catalog.update_bot(ctx.store, ctx.redis, bot_id, fields, by=account, owner=account)
    return _answer(200, await admin.bot_view(ctx.store, bot))


@guarded
async def get_account(request: web.Request) -> web.Response:
    account_id = await caller(request, READ)
    store = request.app[STORE]
    account = await catalog.get_account(store, account_id)
    if account is None:  # the index still knew a key ClickHouse no longer has
        raise model.Unauthorized()
    bots = await catalog.list_bots(store, account_id)
    limits = await quotas.limits_for(store, request.app[SETTINGS], account_id)
    return _answer(
        200,
        admin.account_view(account)
        | {"bots": [await admin.bot_view(store, b) for b in bots], "limits": limits.view()},
    )


@guarded
async def regenerate_key(request: web.Request) -> web.Response:
    account = await caller(request)
    await charge(request, account)
    ctx = _context(request)
    _, key = await catalog.regenerate_key(ctx.store, ctx.redis, account, by=account)
    return _answer(200, {"token": key})


# --- named keys ---------------------------------------------------------------------------------
@guarded
async def list_keys(request: web.Request) -> web.Response:
    account = await caller(request)
    ctx = _context(request)
    return _answer(200, {"keys": await admin.keys_view(ctx, account)})


@guarded
async def create_key(request: web.Request) -> web.Response:
    account = await caller(request)
    name, scope, bots = apikeys.new_key_fields(await _body(request, KeyCreate))
    limits = await charge(request, account)
    ctx = _context(request)
    key, secret = await apikeys.create_key(
        ctx.store, ctx.redis, account, name, scope, bots, by=account, max_keys=limits.values["keys"]
    )
    return _answer(201, admin.key_view(key, None) | {"key": secret})


@guarded
async def revoke_key(request: web.Request) -> web.Response:
    account = await caller(request)
    await charge(request, account)
    ctx = _context(request)
    key = await apikeys.revoke_key(ctx.store, ctx.redis, account, request.match_info["keyId"], by=account)
    return _answer(200, {"id": key.id, "revoked": True})


# --- DBots-compatible paths ---------------------------------------------------------------------
@guarded
async def bot_log(request: web.Request) -> web.Response:
    account = await caller(request)
    store = request.app[STORE]
    bot = await catalog.managed_bot(store, _path_bot(request), account)
    page = _int_param(request, "page", 1, 1, 1_000_000)
    limit = _int_param(request, "limit", 50, 1, LOG_PAGE_MAX)
    changes, total = await audit.bot_log(
        store, bot.id, bot.account_id, bot.created_at, limit=limit, offset=(page - 1) * limit
    )
    response = _answer(200, {"_id": bot.id, "changes": msgspec.to_builtins(changes)})
    response.headers["X-Total-Count"] = str(total)
    return response


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise model.Invalid(f"{name} must be an integer from {low} to {high}", name) from None
    if not low <= value <= high:
        raise model.Invalid(f"{name} must be an integer from {low} to {high}", name)
    return value


@guarded
async def regen_via_bot(request: web.Request) -> web.Response:
    """Rotate this bot's own ingest token; the account key and every other key stay valid."""
    account = await caller(request)
    ctx = _context(request)
    bot = await catalog.managed_bot(ctx.store, _path_bot(request), account)
    await charge(request, account)
    key, token = await apikeys.rotate_bot_token(ctx.store, ctx.redis, account, bot.id, by=account)
    return _answer(200, {"token": token, "id": key.id, "scope": INGEST, "bots": [bot.id]})


async def regen_by_get(request: web.Request) -> web.Response:
    """A GET must not change state, and no client library we know of calls this route (it is a
    dashboard action), so it answers 405 pointing at the POST instead of rotating anything."""
    response = _answer(
        405,
        {
            "message": "Regenerating a token changes state: use POST /bots/{botId}/keys/regen",
            "field": "method",
        },
    )
    response.headers["Allow"] = "POST"
    return response


async def _api_view(request: web.Request, bot: catalog.Bot, account_id: str) -> dict[str, Any]:
    account = await catalog.get_account(request.app[STORE], account_id)
    return {
        "_id": bot.id,
        "voteWebhookURL": bot.vote_webhook_url,
        "keyPrefix": account.key_prefix if account else None,
    }


@guarded
async def get_api(request: web.Request) -> web.Response:
    account = await caller(request)
    bot = await catalog.managed_bot(request.app[STORE], _path_bot(request), account)
    return _answer(200, await _api_view(request, bot, account))


@guarded
async def patch_api(request: web.Request) -> web.Response:
    account = await caller(request)
    bot_id = _path_bot(request)
    fields = model.bot_fields(await _body(request, WebhookPatch))
    await charge(request, account)
    ctx = _context(request)
    bot = await catalog.update_bot(ctx.store, ctx.redis, bot_id, fields, by=account, owner=account)
    return _answer(200, await _api_view(request, bot, account))


# --- operator API -------------------------------------------------------------------------------
def _check_admin(request: web.Request) -> None:
    token = request.app[SETTINGS].admin_token
    if not token:
        raise model.Forbidden("The admin API is disabled: BOTPULSE_ADMIN_TOKEN is not set")
    given = parse_authorization(request.headers.get("Authorization")) or ""
    if not same_secret(given, token):
        raise model.Unauthorized()


def _admin_handler(operation: admin.Operation) -> Handler:
    @guarded
    async def handle(request: web.Request) -> web.Response:
        _check_admin(request)
        params = dict(request.query) | dict(request.match_info)
        status, result = await operation.call(_context(request), params, await request.read())
        return _answer(status, result)

    return handle


# --- the index keeper ---------------------------------------------------------------------------
async def _keep_index(app: web.Application) -> None:
    """Rebuild the index within a second of Redis losing it, and whenever it is stale."""
    settings = app[SETTINGS]
    registry = app[REGISTRY]
    since_check = 0.0
    next_usage_flush = time.monotonic() + settings.key_usage_flush_s
    while True:
        reraise_if_cancelled()  # a cancel swallowed anywhere in the last round
        await asyncio.sleep(1.0)
        since_check += 1.0
        try:
            if not registry.ready:
                await _rebuild_if_missing(app)
            if time.monotonic() >= next_usage_flush:
                next_usage_flush = time.monotonic() + settings.key_usage_flush_s
                await apikeys.flush_usage(app[STORE], app[REDIS])
            if since_check >= settings.registry_check_s:
                since_check = 0.0
                async with app[REBUILD_LOCK]:
                    if await catalog.ensure_index(app[STORE], app[REDIS], settings.stream_partitions):
                        registry.invalidate()
        except Exception as exc:  # Redis or ClickHouse away: try again next round
            reraise_if_cancelled()
            log.warning("registry index check failed", error=str(exc))


async def _keeper(app: web.Application) -> AsyncIterator[None]:
    app[REBUILD_LOCK] = asyncio.Lock()
    app[KEEPER] = asyncio.create_task(_keep_index(app), name="registry-keeper")
    yield
    app[KEEPER].cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await app[KEEPER]


def add_routes(app: web.Application) -> None:
    """Register the account, DBots-compatible and admin routes, and the index keeper (it runs
    after `build_app`'s own start-up, which opens Redis and builds the index)."""
    app.cleanup_ctx.append(_keeper)
    app.router.add_post("/v1/bots", create_bot)
    app.router.add_patch("/v1/bot/{botId}", patch_bot)
    app.router.add_get("/v1/account", get_account)
    app.router.add_post("/v1/account/key/regenerate", regenerate_key)
    app.router.add_get("/v1/account/keys", list_keys)
    app.router.add_post("/v1/account/keys", create_key)
    app.router.add_delete("/v1/account/keys/{keyId}", revoke_key)
    app.router.add_get("/bots/{botId}/log", bot_log)
    app.router.add_post("/bots/{botId}/keys/regen", regen_via_bot)
    app.router.add_get("/bots/{botId}/keys/regen", regen_by_get)
    app.router.add_get("/bots/{botId}/api", get_api)
    app.router.add_patch("/bots/{botId}/api", patch_api)
    for operation in admin.OPERATIONS.values():
        app.router.add_route(operation.method, operation.path, _admin_handler(operation))
