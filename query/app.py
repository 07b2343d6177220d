"""Routes of the query service. (Foundation version: `GET /v1/bot/{botId}` without stats;
the query issue adds bucketing, uptime, listings and leaderboards.)"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time

import redis.asyncio as aioredis
from aiohttp import web

from query import accounts_api
from registry.index import RegistryCache
from registry.keys import parse_authorization
from registry.records import ensure_index, get_bot
from runtime.clickhouse import Store
from runtime.redis import connect
from runtime.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
REDIS = web.AppKey("redis", aioredis.Redis)
REGISTRY = web.AppKey("registry", RegistryCache)


def error(status: int, message: str, field: str | None = None) -> web.Response:
    body = {"message": message} if field is None else {"message": message, "field": field}
    return web.json_response(body, status=status)


def _ms(value: dt.datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1000)


async def caller_account(request: web.Request) -> str | None:
    key = parse_authorization(request.headers.get("Authorization")) or request.query.get("apikey")
    if not key:
        return None
    return await request.app[REGISTRY].account_for_key(key)


async def get_bot_info(request: web.Request) -> web.Response:
    store = request.app[STORE]
    bot_id = request.match_info["botId"]
    bot = await get_bot(store, bot_id)
    if bot is not None and bot.private and await caller_account(request) != bot.account_id:
        bot = None
    if bot is None:
        return error(404, "Bot not found")
    rows = await store.query(
        "SELECT max(ts), count() FROM bot_stats WHERE bot_id = {id:String}", {"id": bot_id}
    )
    last_seen = _ms(rows[0][0]) if rows and rows[0][1] else None
    window_ms = request.app[SETTINGS].heartbeat_window_s * 1000
    connected = last_seen is not None and time.time() * 1000 - last_seen < window_ms
    return web.json_response(
        {
            "id": bot.id,
            "username": bot.username,
            "avatar": bot.avatar,
            "private": bot.private,
            "createdAt": _ms(bot.created_at),
            "lastSeen": last_seen,
            "connectionStatus": "connected" if connected else "disconnected",
        }
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if not await request.app[STORE].ping():
        return web.json_response({"status": "unavailable", "message": "ClickHouse unreachable"}, status=503)
    return web.json_response({"status": "ready"})


def build_app(settings: Settings, store: Store, *, with_worker: bool = False) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app[STORE] = store

    async def resources(app: web.Application):  # type: ignore[no-untyped-def]
        app[REDIS] = connect(settings)
        await ensure_index(store, app[REDIS], settings.stream_partitions)
        app[REGISTRY] = RegistryCache(app[REDIS], settings.registry_refresh_ms)
        await app[REGISTRY].start()
        worker_task = None
        if with_worker:
            from workers.runner import run_worker

            worker_task = asyncio.create_task(run_worker(settings, store), name="worker")
        yield
        if worker_task:
            worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker_task
        await app[REGISTRY].stop()
        await app[REDIS].aclose()

    app.cleanup_ctx.append(resources)
    app.router.add_get("/v1/bot/{botId}", get_bot_info)
    accounts_api.add_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
