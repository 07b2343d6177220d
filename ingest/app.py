"""Routes of the gateway. Handlers translate HTTP to an append and back; nothing else.

Request path: size check (Content-Length, before reading) -> authentication from the in-process
registry cache -> body parsing -> one coalesced Lua call (backlog, rate limit, custom-metric
slots, XADD) -> answer. The gateway never queries ClickHouse.

The hot route, `POST /v1/bot/{botId}`, is taken before aiohttp's router (`GatewayRunner`) and
answers success with prebuilt bytes (`NoContent`): the router, `Application._handle` and the
`Response` machinery were about half of the gateway's CPU per post. Every other route, and any
stats request the shortcut is not sure about, goes through the `web.Application` as usual.
"""

from __future__ import annotations

import itertools
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from urllib.parse import quote

import msgspec
import redis.asyncio as aioredis
from aiohttp import HttpVersion11, hdrs, web

from botpulse.ingest.admission import Admission, error_verdict
from botpulse.ingest.append import Appender, Limits, Outcome, Post, Result
from botpulse.ingest.bodies import BadInput, parse_custom, parse_dbots, parse_statcord, parse_stats
from botpulse.registry.index import RegistryCache, is_ready
from botpulse.registry.keys import request_key
from botpulse.runtime.logs import get_logger
from botpulse.runtime.redis import connect
from botpulse.runtime.settings import Settings
from botpulse.schemas.registry import BOT_ID, IndexedBot
from botpulse.schemas.stream import CustomPayload, StatsPayload, StreamEvent, encode_event, partition_of

log = get_logger(__name__)

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", aioredis.Redis)
REGISTRY = web.AppKey("registry", RegistryCache)
APPENDER = web.AppKey("appender", Appender)
ADMISSION = web.AppKey("admission", Admission)

DROPPED_HEADER = "X-Dropped-Custom-Metrics"
_json = msgspec.json.Encoder()


class Refusal(Exception):
    """An answer other than success; `extra` goes into the JSON body, `headers` onto the reply."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        *,
        retry_after_s: int | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s
        self.extra = extra or {}


def reply(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=_json.encode(body), content_type="application/json", headers=headers
    )


def refusal_response(refusal: Refusal, *, statcord: bool = False) -> web.Response:
    body: dict[str, object] = {"message": refusal.message}
    if refusal.field is not None:
        body["field"] = refusal.field
    headers = None
    if refusal.retry_after_s is not None:
        headers = {"Retry-After": str(refusal.retry_after_s)}
        body["retryAfter"] = refusal.retry_after_s
    if statcord:
        # statcord.js reads `error`; statcord.py reads `timeleft` from a 429.
        body["error"] = True
        if refusal.status == 429:
            body["wait"] = body["timeleft"] = refusal.retry_after_s
    body.update(refusal.extra)
    response = reply(refusal.status, body, headers)
    if refusal.status == 413:
        response.force_close()  # the unread body stays on the connection otherwise
    return response


class NoContent:
    """The stats route's success: `204` with `Content-Type: application/json` and no body, written
    as one prebuilt block of bytes. aiohttp's request handler only calls `prepare` and
    `write_eof` on what a handler returns and reads `keep_alive`; a `web.Response` would build
    headers, a writer and a status line per post. Only for HTTP/1.1 keep-alive requests (see
    `Gateway.success`); the others get an ordinary `web.Response`."""

    __slots__ = ()
    status = 204
    reason = "No Content"
    keep_alive = True
    body_length = 0
    headers: dict[str, str] = {}  # what aiohttp's access logger may read

    _second = -1
    _head = b""

    @classmethod
    def head(cls) -> bytes:
        now = int(time.time())
        if now != cls._second:  # the Date header changes once a second
            cls._second = now
            cls._head = (
                b"HTTP/1.1 204 No Content\r\nContent-Type: application/json\r\nDate: "
                + formatdate(now, usegmt=True).encode()
                + b"\r\n\r\n"
            )
        return cls._head

    async def prepare(self, request: web.BaseRequest) -> None:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")  # aiohttp's premature-close path
        transport.write(self.head())

    async def write_eof(self, data: bytes = b"") -> None:
        return None


NO_CONTENT = NoContent()


UNAUTHORIZED = "Unauthorized"
NOT_READY: dict[str, object] = {"reason": "registry_not_ready"}
NOT_FOUND = "Not found"
STATS_PREFIX = "/v1/bot/"


class Gateway:
    """The handlers and what they share; resources are opened in `_resources` at startup."""

    def __init__(self, app: web.Application, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        # Event ids: a random prefix per process and a counter, as unique as 16 random bytes per
        # post (every process draws its own prefix) without a getrandom() call per post.
        self._id_prefix = secrets.token_hex(8)
        self._id_counter = itertools.count()

    def next_event_id(self) -> str:
        return f"{self._id_prefix}{next(self._id_counter):016x}"

    # --- the pieces every route uses -------------------------------------------------------

    def check_size(self, request: web.Request) -> None:
        length = request.content_length
        if length is not None and length > self.settings.max_body_bytes:
            raise Refusal(413, f"The body is over {self.settings.max_body_bytes} bytes")

    async def read(self, request: web.Request) -> bytes:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise Refusal(413, f"The body is over {self.settings.max_body_bytes} bytes") from None

    async def authorize(self, key: str | None, bot_id: str) -> tuple[str, IndexedBot]:
        registry = self.app[REGISTRY]
        try:
            if not registry.ready and not await is_ready(self.app[REDIS]):
                raise Refusal(503, "The registry index is not ready yet", retry_after_s=1, extra=NOT_READY)
            if not key:
                raise Refusal(401, UNAUTHORIZED)
            account = await registry.account_for_key(key)
            if account is None:
                raise self._unknown(registry, 401, UNAUTHORIZED)
            # Ids that cannot exist are refused before a lookup (and never fill the cache).
            bot = await registry.bot(bot_id) if BOT_ID.match(bot_id) else None
            if bot is None:
                raise self._unknown(registry, 404, NOT_FOUND)
        except Refusal:
            raise
        except Exception as exc:
            verdict = error_verdict(exc)
            log.warning("registry lookup failed", reason=verdict.reason, error=str(exc))
            raise Refusal(
                503, verdict.message, retry_after_s=verdict.retry_after_s, extra={"reason": verdict.reason}
            ) from None
        if bot.account_id != account:
            raise Refusal(403, "This API key cannot post for this bot")
        return account, bot

    @staticmethod
    def _unknown(registry: RegistryCache, status: int, message: str) -> Refusal:
        """A miss while the index turned out to be missing (Redis emptied, rebuild pending) is not
        an unknown key or bot: the client should retry, not give up."""
        if not registry.ready:
            return Refusal(503, "The registry index is not ready yet", retry_after_s=1, extra=NOT_READY)
        return Refusal(status, message)

    @staticmethod
    def key_of(request: web.Request) -> str | None:
        return request_key(request.headers, request.query)

    async def append(
        self,
        bot: IndexedBot,
        account: str,
        payloads: list[StatsPayload | CustomPayload],
        *,
        stats: bool,
    ) -> Result:
        """Append the post's events (the first payload carries the custom metrics, if any)."""
        received = int(time.time() * 1000)
        base = self.next_event_id()
        events = [
            encode_event(
                StreamEvent(
                    event_id=base if i == 0 else f"{base}-{i}",
                    received_ms=received,
                    bot_id=bot.id,
                    account_id=account,
                    payload=payload,
                )
            )
            for i, payload in enumerate(payloads)
        ]
        partition = partition_of(bot.id, self.settings.stream_partitions)
        admission = self.app[ADMISSION]
        if (verdict := admission.verdict(partition)) is not None:
            raise Refusal(
                503, verdict.message, retry_after_s=verdict.retry_after_s, extra={"reason": verdict.reason}
            )
        first = payloads[0]
        names = list(first.custom_metrics) if isinstance(first, StatsPayload) else []
        post = Post(
            partition=partition,
            bot_id=bot.id,
            stats=stats,
            slot_limit=bot.custom_slots,
            metric_names=names,
            events=events,
        )
        try:
            result = await self.app[APPENDER].append(post)
        except Exception as exc:
            verdict = error_verdict(exc)
            admission.note_error(verdict)
            log.warning("append failed", reason=verdict.reason, error=repr(exc))
            raise Refusal(
                503, verdict.message, retry_after_s=verdict.retry_after_s, extra={"reason": verdict.reason}
            ) from None
        if result.outcome is Outcome.RATE_LIMITED:
            seconds = max(1, math.ceil(result.retry_after_ms / 1000))
            raise Refusal(429, f"Too many posts for this bot, retry in {seconds} s", retry_after_s=seconds)
        if result.outcome is Outcome.BACKLOG_FULL:
            raise Refusal(
                503,
                f"The ingest backlog is full ({self.settings.stream_high_water} entries), try again shortly",
                retry_after_s=5,
                extra={"reason": "backlog_full"},
            )
        return result

    # --- routes ----------------------------------------------------------------------------

    async def post_stats(self, request: web.Request) -> web.StreamResponse:
        return await self.stats(request, request.match_info["botId"])

    async def stats(self, request: web.BaseRequest, bot_id: str) -> web.StreamResponse:
        """DisStat `POST /v1/bot/{botId}` -> 204, dropped custom metrics in a header."""
        try:
            self.check_size(request)
            account, bot = await self.authorize(self.key_of(request), bot_id)
            stats, entries = parse_stats(await self.read(request))
            result = await self.append(bot, account, [stats, *entries], stats=True)
        except Refusal as refusal:
            return refusal_response(refusal)
        except BadInput as bad:
            return refusal_response(Refusal(400, bad.message, bad.field))
        if not result.dropped and request.keep_alive and request.version == HttpVersion11:
            return NO_CONTENT  # type: ignore[return-value]
        response = web.Response(status=204, content_type="application/json")
        if result.dropped:
            response.headers[DROPPED_HEADER] = ",".join(quote(n, safe="") for n in result.dropped)
        return response

    def dispatch(
        self, app_handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
        """The server's request handler: the stats route by hand, the rest through the app.

        Taken by hand only when the router would surely pick `post_stats` and `Application._handle`
        adds nothing: a POST, a path of `/v1/bot/` and an id that can exist (`BOT_ID`: no `/`,
        no percent-escape, nothing the route pattern refuses), no `Expect` header (the app answers
        `100 Continue`). Anything else, the app decides as always."""
        stats = self.stats

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            if request.method == "POST":
                path = request.raw_path  # as sent: a percent-escape in the id goes to the app
                if path.startswith(STATS_PREFIX):
                    bot_id = path[len(STATS_PREFIX) :].partition("?")[0]
                    if BOT_ID.match(bot_id) and hdrs.EXPECT not in request.headers:
                        return await stats(request, bot_id)
            return await app_handler(request)

        return handle

    async def post_custom(self, request: web.Request) -> web.Response:
        """DisStat `POST /v1/bot/{botId}/custom` -> 200 `{}`."""
        try:
            self.check_size(request)
            account, bot = await self.authorize(self.key_of(request), request.match_info["botId"])
            entry = parse_custom(await self.read(request))
            await self.append(bot, account, [entry], stats=False)
        except Refusal as refusal:
            return refusal_response(refusal)
        except BadInput as bad:
            return refusal_response(Refusal(400, bad.message, bad.field))
        return reply(200, {})

    async def post_dbots(self, request: web.Request) -> web.Response:
        """DBots-style `POST /bots/{botId}/stats` -> 200 `{guildCount}`."""
        try:
            self.check_size(request)
            account, bot = await self.authorize(self.key_of(request), request.match_info["botId"])
            stats = parse_dbots(await self.read(request))
            await self.append(bot, account, [stats], stats=True)
        except Refusal as refusal:
            return refusal_response(refusal)
        except BadInput as bad:
            return refusal_response(Refusal(400, bad.message, bad.field))
        return reply(200, {"guildCount": stats.guilds})

    async def post_statcord(self, request: web.Request) -> web.Response:
        """Statcord v3 `POST /v3/stats` (`id` and `key` in the body) -> 200 JSON."""
        try:
            self.check_size(request)
            post = parse_statcord(await self.read(request))
            account, bot = await self.authorize(post.key, post.bot_id)
            result = await self.append(bot, account, [post.stats, *post.entries], stats=True)
        except Refusal as refusal:
            return refusal_response(refusal, statcord=True)
        except BadInput as bad:
            return refusal_response(Refusal(400, bad.message, bad.field), statcord=True)
        headers = None
        if result.dropped:
            headers = {DROPPED_HEADER: ",".join(quote(n, safe="") for n in result.dropped)}
        return reply(200, {"error": False, "message": "Stats posted"}, headers)

    async def healthz(self, request: web.Request) -> web.Response:
        return reply(200, {"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        try:
            await self.app[REDIS].ping()
        except Exception as exc:
            return reply(503, {"status": "unavailable", "message": str(exc)}, {"Retry-After": "1"})
        return reply(200, {"status": "ready"})

    @staticmethod
    async def not_found(request: web.Request) -> web.Response:
        return reply(404, {"message": NOT_FOUND, "field": "path"})

    @staticmethod
    def not_allowed(allowed: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            return reply(
                405,
                {"message": f"Method {request.method} not allowed", "field": "method"},
                {"Allow": allowed},
            )

        return handler


async def _resources(app: web.Application):  # type: ignore[no-untyped-def]
    settings = app[SETTINGS]
    app[REDIS] = connect(settings)
    app[REGISTRY] = RegistryCache(app[REDIS], settings.registry_refresh_ms)
    limits = Limits(
        stats_interval_ms=max(1, round(settings.stats_rate_interval_s * 1000)),
        stats_burst=settings.stats_rate_burst,
        custom_interval_ms=max(1, round(60_000 / settings.custom_rate_per_min)),
        custom_burst=settings.custom_rate_per_min,
    )
    app[APPENDER] = Appender(app[REDIS], settings.stream_high_water, limits, settings.redis_timeout_ms / 1000)
    app[ADMISSION] = Admission(app[REDIS], settings)
    await app[REGISTRY].start()
    await app[ADMISSION].start()
    yield
    await app[ADMISSION].stop()
    await app[APPENDER].close()
    await app[REGISTRY].stop()
    await app[REDIS].aclose()


GATEWAY = web.AppKey("gateway", Gateway)


class GatewayRunner(web.AppRunner):
    """Runs the gateway app with `Gateway.dispatch` in front of it (serve it with this runner, not
    a plain `AppRunner`, or the hot route goes through the router like every other)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.request_handler = self.app[GATEWAY].dispatch(server.request_handler)
        return server


def build_app(settings: Settings) -> web.Application:
    # Bodies are capped by the handlers (413 from Content-Length, or while reading).
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_resources)
    gateway = Gateway(app, settings)
    app[GATEWAY] = gateway
    routes: list[tuple[str, str, Callable[[web.Request], Awaitable[web.Response]]]] = [
        ("POST", "/v1/bot/{botId}", gateway.post_stats),
        ("POST", "/v1/bot/{botId}/custom", gateway.post_custom),
        ("POST", "/bots/{botId}/stats", gateway.post_dbots),
        ("POST", "/v3/stats", gateway.post_statcord),
        ("GET", "/healthz", gateway.healthz),
        ("GET", "/readyz", gateway.readyz),
    ]
    for method, path, handler in routes:
        resource = app.router.add_resource(path)
        resource.add_route(method, handler)
        if method == "GET":
            resource.add_route("HEAD", handler)
        resource.add_route("*", Gateway.not_allowed(method if method == "POST" else "GET, HEAD"))
    app.router.add_route("*", "/{tail:.*}", Gateway.not_found)
    return app
