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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from botpulse.query.resources import REDIS, REGISTRY, SETTINGS, STORE, UNAVAILABLE
from botpulse.registry import admin, audit, catalog, index, model
from botpulse.registry.keys import parse_authorization, request_key, same_secret
from botpulse.runtime.logs import get_logger

log = get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.Response]]
KEEPER = web.AppKey("registry_keeper", asyncio.Task)
REBUILD_LOCK = web.AppKey("registry_rebuild_lock", asyncio.Lock)
LOG_PAGE_MAX = 100


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
        except web.HTTPRequestEntityTooLarge:
            response = _answer(413, {"message": "Request body too large"})
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


async def _body(request: web.Request) -> dict[str, Any]:
    return model.decode_object(await request.read())


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


async def caller(request: web.Request) -> str:
    """The account whose key the request carries (`Authorization` or `?apikey=`)."""
    key = request_key(request.headers, request.query)
    if not key:
        raise model.Unauthorized()
    registry = request.app[REGISTRY]
    account = await registry.account_for_key(key)
    if account is None and await _rebuild_if_missing(request.app):
        account = await registry.account_for_key(key)
    if account is None:
        raise model.Unauthorized()
    return account


def _path_bot(request: web.Request) -> str:
    bot_id = request.match_info["botId"]
    if not model.BOT_ID.match(bot_id):
        raise model.NotFound("Not found")
    return bot_id


# --- account API --------------------------------------------------------------------------------
@guarded
async def create_bot(request: web.Request) -> web.Response:
    account = await caller(request)
    bot_id, fields = model.new_bot(await _body(request), model.OWNER_CREATE)
    ctx = _context(request)
    bot = await catalog.create_bot(
        ctx.store,
        ctx.redis,
        bot_id,
        fields,
        account_id=account,
        default_slots=ctx.settings.default_custom_slots,
        by=account,
    )
    return _answer(201, await admin.bot_view(ctx.store, bot))


@guarded
async def patch_bot(request: web.Request) -> web.Response:
    account = await caller(request)
    bot_id = _path_bot(request)
    fields = model.bot_changes(await _body(request), model.OWNER_PATCH)
    ctx = _context(request)
    bot = await catalog.update_bot(ctx.store, ctx.redis, bot_id, fields, by=account, owner=account)
    return _answer(200, await admin.bot_view(ctx.store, bot))


@guarded
async def get_account(request: web.Request) -> web.Response:
    account_id = await caller(request)
    store = request.app[STORE]
    account = await catalog.get_account(store, account_id)
    if account is None:  # the index still knew a key ClickHouse no longer has
        raise model.Unauthorized()
    bots = await catalog.list_bots(store, account_id)
    return _answer(
        200, admin.account_view(account) | {"bots": [await admin.bot_view(store, b) for b in bots]}
    )


@guarded
async def regenerate_key(request: web.Request) -> web.Response:
    account = await caller(request)
    ctx = _context(request)
    _, key = await catalog.regenerate_key(ctx.store, ctx.redis, account, by=account)
    return _answer(200, {"token": key})


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
    account = await caller(request)
    ctx = _context(request)
    await catalog.managed_bot(ctx.store, _path_bot(request), account)
    _, key = await catalog.regenerate_key(ctx.store, ctx.redis, account, by=account)
    return _answer(200, {"token": key})


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
    body = await _body(request)
    fields = model.bot_fields(body, model.WEBHOOK_PATCH, required=model.WEBHOOK_PATCH)
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
        raw = await request.read()
        body = model.decode_object(raw) if raw.strip() else {}
        params = dict(request.query) | dict(request.match_info)
        status, result = await operation.run(_context(request), params, body)
        return _answer(status, result)

    return handle


# --- the index keeper ---------------------------------------------------------------------------
async def _keep_index(app: web.Application) -> None:
    """Rebuild the index within a second of Redis losing it, and whenever it is stale."""
    settings = app[SETTINGS]
    registry = app[REGISTRY]
    since_check = 0.0
    while True:
        await asyncio.sleep(1.0)
        since_check += 1.0
        try:
            if not registry.ready:
                await _rebuild_if_missing(app)
            if since_check >= settings.registry_check_s:
                since_check = 0.0
                async with app[REBUILD_LOCK]:
                    if await catalog.ensure_index(app[STORE], app[REDIS], settings.stream_partitions):
                        registry.invalidate()
        except Exception as exc:  # Redis or ClickHouse away: try again next round
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
    app.router.add_get("/bots/{botId}/log", bot_log)
    app.router.add_get("/bots/{botId}/keys/regen", regen_via_bot)
    app.router.add_get("/bots/{botId}/api", get_api)
    app.router.add_patch("/bots/{botId}/api", patch_api)
    for operation in admin.OPERATIONS.values():
        app.router.add_route(operation.method, operation.path, _admin_handler(operation))
