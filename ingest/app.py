"""Routes of the gateway. Handlers translate HTTP to an append and back; nothing else.

(Foundation version: DisStat stats posting only. The ingest issue extends it.)
"""

from __future__ import annotations

import time
import uuid

import msgspec
import redis.asyncio as aioredis
from aiohttp import web

from registry.index import RegistryCache
from registry.keys import parse_authorization
from runtime.redis import connect
from runtime.settings import Settings
from runtime.streams import partition_of, stream_key
from schemas.stream import FIELD, StatsPayload, StreamEvent, encode_event

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", aioredis.Redis)
REGISTRY = web.AppKey("registry", RegistryCache)


class StatsBody(msgspec.Struct, forbid_unknown_fields=False):
    guilds: int
    users: int | None = None
    shards: int | None = None
    apiPing: float | None = None
    ramUsage: float | None = None
    ramTotal: float | None = None
    cpu: float | None = None
    bandwidth: float | None = None


_stats_decoder = msgspec.json.Decoder(StatsBody)


def error(status: int, message: str, field: str | None = None) -> web.Response:
    body = {"message": message} if field is None else {"message": message, "field": field}
    return web.json_response(body, status=status)


async def post_stats(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    registry = request.app[REGISTRY]
    bot_id = request.match_info["botId"]
    key = parse_authorization(request.headers.get("Authorization")) or request.query.get("apikey")
    if not key:
        return error(401, "Unauthorized")
    account = await registry.account_for_key(key)
    if account is None:
        return error(401, "Unauthorized")
    bot = await registry.bot(bot_id)
    if bot is None:
        return error(404, "Not found")
    if bot.account_id != account:
        return error(403, "This key cannot post for this bot")
    try:
        body = _stats_decoder.decode(await request.read())
    except msgspec.ValidationError as exc:
        return error(400, str(exc))
    except msgspec.DecodeError as exc:
        return error(400, f"Invalid JSON: {exc}")
    event = StreamEvent(
        event_id=uuid.uuid4().hex,
        received_ms=int(time.time() * 1000),
        bot_id=bot_id,
        account_id=account,
        payload=StatsPayload(
            guilds=body.guilds,
            users=body.users,
            shards=body.shards,
            api_ping=body.apiPing,
            ram_usage=body.ramUsage,
            ram_total=body.ramTotal,
            cpu=body.cpu,
            bandwidth=body.bandwidth,
        ),
    )
    partition = partition_of(bot_id, settings.stream_partitions)
    await request.app[REDIS].xadd(stream_key(partition), {FIELD: encode_event(event)})
    return web.Response(status=204, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        await request.app[REDIS].ping()
    except Exception as exc:
        return web.json_response({"status": "unavailable", "message": str(exc)}, status=503)
    return web.json_response({"status": "ready"})


async def _resources(app: web.Application):  # type: ignore[no-untyped-def]
    settings = app[SETTINGS]
    app[REDIS] = connect(settings)
    app[REGISTRY] = RegistryCache(app[REDIS], settings.registry_refresh_ms)
    await app[REGISTRY].start()
    yield
    await app[REGISTRY].stop()
    await app[REDIS].aclose()


def build_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_resources)
    app.router.add_post("/v1/bot/{botId}", post_stats)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
