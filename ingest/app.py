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

from botpulse.ingest import metrics, spec
from botpulse.ingest.admission import Admission, error_verdict
from botpulse.ingest.append import APPENDED, Appender, Limits, Outcome, Post, Result
from botpulse.ingest.bodies import (
    BadInput,
    StatsPost,
    parse_custom,
    parse_dbots,
    parse_statcord,
    parse_stats,
)
from botpulse.ingest.shards import SUMMED, ShardAppender, shard_values
from botpulse.registry.index import RegistryCache, is_ready
from botpulse.registry.keys import hash_key, request_key
from botpulse.runtime.http_metrics import measured, route_label
from botpulse.runtime.logs import get_logger
from botpulse.runtime.loop_lag import LoopLagProbe
from botpulse.runtime.metrics import Exposition
from botpulse.runtime.openapi import Route, api_version, document, prefixed
from botpulse.runtime.redis import connect
from botpulse.runtime.settings import Settings
from botpulse.schemas.http import (
    DBotsAccepted,
    Empty,
    ErrorBody,
    Health,
    StatcordAccepted,
    StatcordError,
)
from botpulse.schemas.registry import BOT_ID, INGEST, READ, IndexedAccount, IndexedBot, IndexedKey
from botpulse.schemas.stream import (
    CustomPayload,
    ShardEntry,
    ShardsPayload,
    StatsPayload,
    StreamEvent,
    encode_event,
    partition_of,
)

log = get_logger(__name__)

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", aioredis.Redis)
REGISTRY = web.AppKey("registry", RegistryCache)
APPENDER = web.AppKey("appender", Appender)
ADMISSION = web.AppKey("admission", Admission)
SHARD_APPENDER = web.AppKey("shard_appender", ShardAppender)

DROPPED_HEADER = "X-Dropped-Custom-Metrics"
DROPPED_PROPS_HEADER = "X-Dropped-Properties"
DROPPED_TYPES_HEADER = "X-Dropped-Custom-Types"
_json = msgspec.json.Encoder()


# The refusal reason (a metrics label) of each status, unless the refusal names its own.
_REASONS = {
    400: "validation", 401: "auth", 403: "auth", 404: "not_found", 413: "too_large", 429: "rate_limit",
}  # fmt: skip


NOT_READY = "The registry index is not ready yet"


class Poster(msgspec.Struct, frozen=True):
    """Who posts, with the account's limits as the admission script applies them."""

    account_id: str
    posts_per_min: int
    interval_ms: int
    burst: int
    type_limit: int


def dropped_headers(result: Result) -> dict[str, str] | None:
    """The custom metrics, extra properties and custom-event types of a post that found no free
    slot: each header percent-encoded names, comma-separated."""
    headers = {}
    if result.dropped:
        headers[DROPPED_HEADER] = ",".join(quote(n, safe="") for n in result.dropped)
    if result.dropped_props:
        headers[DROPPED_PROPS_HEADER] = ",".join(quote(n, safe="") for n in result.dropped_props)
    if result.dropped_types:
        headers[DROPPED_TYPES_HEADER] = ",".join(quote(n, safe="") for n in result.dropped_types)
    return headers or None


class Refusal(Exception):
    """An answer other than success (an `ErrorBody`, a `StatcordError` on the Statcord route)."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        *,
        retry_after_s: int | None = None,
        reason: str | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s
        # The metrics label; a reason given here is also said in the body (why a 503).
        self.reason = reason or _REASONS.get(status, "unavailable")
        self.stated_reason = reason
        # More the body says (the scope a key lacks, the limit reached).
        self.extra = extra or {}


def reply(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=_json.encode(body), content_type="application/json", headers=headers
    )


def refusal_response(refusal: Refusal, *, statcord: bool = False) -> web.Response:
    metrics.refused(refusal.reason)
    headers = None
    if refusal.retry_after_s is not None:
        headers = {"Retry-After": str(refusal.retry_after_s)}
    body: ErrorBody
    if statcord:
        wait = refusal.retry_after_s if refusal.status == 429 else None
        body = StatcordError(
            refusal.message,
            refusal.field,
            refusal.retry_after_s,
            refusal.stated_reason,
            error=True,
            timeleft=wait,
            wait=wait,
        )
    else:
        body = ErrorBody(refusal.message, refusal.field, refusal.retry_after_s, refusal.stated_reason)
    response = reply(
        refusal.status, msgspec.to_builtins(body) | refusal.extra if refusal.extra else body, headers
    )
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
NOT_FOUND = "Not found"
STATS_PREFIX = "/v1/bot/"
STATS_ROUTE = "/v1/bot/{botId}"
CUSTOM_ROUTE = "/v1/bot/{botId}/custom"
DBOTS_ROUTE = "/bots/{botId}/stats"
STATCORD_ROUTE = "/v3/stats"


class Gateway:
    """The handlers and what they share; resources are opened in `_resources` at startup."""

    registry: RegistryCache
    appender: Appender
    admission: Admission

    def __init__(self, app: web.Application, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        # Event ids: a random prefix per process and a counter, as unique as 16 random bytes per
        # post (every process draws its own prefix) without a getrandom() call per post.
        self._id_prefix = secrets.token_hex(8)
        self._id_counter = itertools.count()
        self._posters: dict[tuple[str, IndexedAccount], Poster] = {}
        self.stats_prefix = settings.gateway_prefix + STATS_PREFIX
        self._stats_tally = metrics.Tally(STATS_ROUTE)

    def bind(self) -> None:
        """Keep the resources `_resources` opened at hand: a post reads them as attributes, not
        through the app's mapping."""
        self.registry = self.app[REGISTRY]
        self.appender = self.app[APPENDER]
        self.admission = self.app[ADMISSION]

    def next_event_id(self) -> str:
        return f"{self._id_prefix}{next(self._id_counter):016x}"

    # --- the pieces every route uses -------------------------------------------------------

    def check_size(self, request: web.Request) -> None:
        length = request.content_length
        if length is not None and length > self.settings.max_body_bytes:
            raise Refusal(413, f"The body is over {self.settings.max_body_bytes} bytes")

    async def read(self, request: web.BaseRequest) -> bytes:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise Refusal(413, f"The body is over {self.settings.max_body_bytes} bytes") from None

    def read_now(self, request: web.BaseRequest) -> bytes | None:
        """The body when it has all arrived already (a post of the usual size comes in one segment
        with its headers), without the coroutines of `request.read()`; None: `read` waits for it.
        The same bound as `read`'s (a chunked body has no Content-Length to check first)."""
        content = request.content
        if not content.is_eof():
            return None
        body = content.read_nowait()
        if len(body) > self.settings.max_body_bytes:
            raise Refusal(413, f"The body is over {self.settings.max_body_bytes} bytes")
        return body

    def authorized(self, key: str | None, bot_id: str) -> tuple[Poster, IndexedBot] | None:
        """`authorize`'s answer without a coroutine when the registry cache holds the key, the bot
        and the account (the common post: `authorize` would answer the same from its lookups);
        None when `authorize` has to look something up."""
        registry = self.registry
        if key and registry.ready and (found := registry.cached(hash_key(key), bot_id)) is not None:
            return self._permit(*found)
        return None

    async def authorize(self, key: str | None, bot_id: str) -> tuple[Poster, IndexedBot]:
        if (cached := self.authorized(key, bot_id)) is not None:
            return cached
        registry = self.registry
        try:
            if not registry.ready and not await is_ready(self.app[REDIS]):
                raise Refusal(503, NOT_READY, retry_after_s=1, reason="registry_not_ready")
            if not key:
                raise Refusal(401, UNAUTHORIZED)
            credential = await registry.credential(key)
            if credential is None:
                raise self._unknown(registry, 401, UNAUTHORIZED)
            # Ids that cannot exist are refused before a lookup (and never fill the cache).
            bot = await registry.bot(bot_id) if BOT_ID.match(bot_id) else None
            if bot is None:
                raise self._unknown(registry, 404, NOT_FOUND)
            limits = await registry.limits(credential.account_id)
        except Refusal:
            raise
        except Exception as exc:
            verdict = error_verdict(exc)
            log.warning("registry lookup failed", reason=verdict.reason, error=str(exc))
            raise Refusal(
                503, verdict.message, retry_after_s=verdict.retry_after_s, reason=verdict.reason
            ) from None
        return self._permit(credential, bot, limits)

    def _permit(
        self, credential: IndexedKey, bot: IndexedBot, limits: IndexedAccount
    ) -> tuple[Poster, IndexedBot]:
        """What the key may do for this bot: the scope and ownership refusals, else the poster."""
        if credential.scope == READ:
            raise Refusal(
                403,
                "This API key has the read scope; posting needs the ingest scope",
                extra={"scope": READ, "missingScope": INGEST},
            )
        if bot.account_id != credential.account_id:
            raise Refusal(403, "This API key cannot post for this bot")
        if not credential.may_post(bot.id):
            raise Refusal(
                403,
                f"This ingest key is limited to other bots; it cannot post for bot {bot.id}",
                extra={"scope": INGEST, "bots": list(credential.bots)},
            )
        self.registry.used(credential.usage_id)
        return self._poster(credential.account_id, limits), bot

    def _poster(self, account_id: str, limits: IndexedAccount) -> Poster:
        """The account's rate in this partition's share, and its custom-event type slots."""
        cached = self._posters.get((account_id, limits))
        if cached is not None:
            return cached
        if len(self._posters) >= 50_000:
            self._posters.clear()
        poster = self._posters[(account_id, limits)] = self._new_poster(account_id, limits)
        return poster

    def _new_poster(self, account_id: str, limits: IndexedAccount) -> Poster:
        settings = self.settings
        per_min = limits.posts_per_min or settings.account_posts_per_min
        parts = settings.stream_partitions
        return Poster(
            account_id=account_id,
            posts_per_min=per_min,
            interval_ms=max(1, round(60_000 * parts / per_min)),
            burst=max(1, math.ceil(per_min / parts)),
            type_limit=limits.custom_event_types or settings.custom_event_types,
        )

    @staticmethod
    def _unknown(registry: RegistryCache, status: int, message: str) -> Refusal:
        """A miss while the index turned out to be missing (Redis emptied, rebuild pending) is not
        an unknown key or bot: the client should retry, not give up."""
        if not registry.ready:
            return Refusal(503, NOT_READY, retry_after_s=1, reason="registry_not_ready")
        return Refusal(status, message)

    @staticmethod
    def key_of(request: web.Request) -> str | None:
        return request_key(request.headers, request.query)

    def _events(
        self, bot: IndexedBot, poster: Poster, payloads: list[StatsPayload | CustomPayload | ShardsPayload]
    ) -> list[bytes]:
        received = int(time.time() * 1000)
        base = self.next_event_id()
        bot_id, account_id = bot.id, poster.account_id
        if len(payloads) == 1:  # the common post (no custom entries): no comprehension's frame
            return [encode_event(StreamEvent(base, received, bot_id, account_id, payloads[0]))]
        ids = [base, *(f"{base}-{i}" for i in range(1, len(payloads)))]
        return [
            encode_event(StreamEvent(event_id, received, bot_id, account_id, payload))
            for event_id, payload in zip(ids, payloads, strict=True)
        ]

    def _admit(self, partition: int) -> None:
        """Admission before any script runs: what the last sample of Redis says (ingest/admission.py)."""
        if (verdict := self.admission.verdict(partition)) is not None:
            raise Refusal(503, verdict.message, retry_after_s=verdict.retry_after_s, reason=verdict.reason)

    def _failed(self, exc: Exception, what: str) -> Refusal:
        """A post script's Redis fault, as a 503 naming its reason (`error_verdict`)."""
        verdict = error_verdict(exc)
        self.admission.note_error(verdict)
        log.warning(f"{what} failed", reason=verdict.reason, error=repr(exc))
        return Refusal(503, verdict.message, retry_after_s=verdict.retry_after_s, reason=verdict.reason)

    def _checked(self, result: Result, poster: Poster, types: list[str], *, stats: bool) -> Result:
        """The script's refusals as answers (the same for every post script)."""
        if result is APPENDED:  # the common answer: nothing refused, nothing dropped
            return result
        if result.outcome is Outcome.RATE_LIMITED:
            seconds = max(1, math.ceil(result.retry_after_ms / 1000))
            if result.account_limited:
                raise Refusal(
                    429,
                    f"Too many posts for this account: at most {poster.posts_per_min} per minute over all "
                    f"its bots, retry in {seconds} s",
                    retry_after_s=seconds,
                    extra={"limit": "postsPerMin", "max": poster.posts_per_min},
                )
            raise Refusal(429, f"Too many posts for this bot, retry in {seconds} s", retry_after_s=seconds)
        if result.dropped_types and len(result.dropped_types) == len(types) and not stats:
            raise Refusal(
                403,
                f"Custom-event type {result.dropped_types[0]!r} has no free slot: this bot may post "
                f"{poster.type_limit} distinct types",
                "type",
                extra={"limit": "customEventTypes", "max": poster.type_limit},
            )
        if result.outcome is Outcome.BACKLOG_FULL:
            raise Refusal(
                503,
                f"The ingest backlog is full ({self.settings.stream_high_water} entries), try again shortly",
                retry_after_s=5,
                reason="backlog_full",
            )
        if result.dropped:
            metrics.DROPPED_METRICS.inc(len(result.dropped))
        return result

    async def append(
        self,
        bot: IndexedBot,
        poster: Poster,
        payloads: list[StatsPayload | CustomPayload | ShardsPayload],
        *,
        stats: bool,
    ) -> Result:
        """Append the post's events (the first payload carries the custom metrics and the
        properties, if any)."""
        events = self._events(bot, poster, payloads)
        partition = partition_of(bot.id, self.settings.stream_partitions)
        self._admit(partition)
        first = payloads[0]
        names = list(first.custom_metrics) if isinstance(first, StatsPayload) else []
        props = list(first.props) if isinstance(first, StatsPayload) else []
        # Custom entries always come after the stats payload (if any): the script's "last n" events.
        types = (
            [p.type for p in payloads if isinstance(p, CustomPayload)]
            if len(payloads) > 1
            else ([first.type] if isinstance(first, CustomPayload) else [])
        )
        # Positional, in `Post`'s field order (msgspec's keyword path is the slower one).
        post = Post(
            partition, bot.id, stats, bot.custom_slots, names, events, poster.account_id, poster.interval_ms,
            poster.burst, poster.type_limit, types, self.settings.property_slots, props,
        )  # fmt: skip
        try:
            result = await self.appender.append(post)
        except Exception as exc:
            raise self._failed(exc, "append") from None
        return self._checked(result, poster, types, stats=stats)

    async def append_shard(
        self,
        bot: IndexedBot,
        poster: Poster,
        stats: StatsPayload,
        shard: ShardEntry,
        entries: list[CustomPayload],
    ) -> Result:
        """A post made by one shard: its shard event and custom entries, plus the bot's totals
        when they are due (ingest/shards.py). Admitted like every post: the same sample check,
        the same account rate and type slots in the script, the same answers."""
        events = self._events(bot, poster, [ShardsPayload([shard]), *entries])
        totals = self._events(bot, poster, [StatsPayload()])[0]
        partition = partition_of(bot.id, self.settings.stream_partitions)
        self._admit(partition)
        values: dict[str, float | int | None] = {k: getattr(stats, k) for k in SUMMED}
        values["api_ping"], values["shards"] = stats.api_ping, stats.shards
        types = [e.type for e in entries]
        script = self.app[SHARD_APPENDER].append(
            partition=partition,
            bot_id=bot.id,
            shard_id=shard.id,
            values=shard_values(values),
            totals_template=totals,
            events=events,
            account_id=poster.account_id,
            account_interval_ms=poster.interval_ms,
            account_burst=poster.burst,
            type_limit=poster.type_limit,
            types=types,
        )
        try:
            result = await script
        except Exception as exc:
            raise self._failed(exc, "shard append") from None
        return self._checked(result, poster, types, stats=True)

    # --- routes ----------------------------------------------------------------------------

    async def post_stats(self, request: web.Request) -> web.StreamResponse:
        return await self.stats(request, request.match_info["botId"])

    async def append_stats(self, bot: IndexedBot, poster: Poster, post: StatsPost) -> Result:
        if post.shard is not None:
            return await self.append_shard(bot, poster, post.stats, post.shard, post.entries)
        if post.shards is not None:
            return await self.append(bot, poster, [post.stats, post.shards, *post.entries], stats=True)
        return await self.append(bot, poster, [post.stats, *post.entries], stats=True)

    async def stats(self, request: web.BaseRequest, bot_id: str) -> web.StreamResponse:
        """DisStat `POST /v1/bot/{botId}` -> 204; dropped custom metrics, properties and
        custom-event types in headers."""
        try:
            self.check_size(request)
            key = self.key_of(request)
            poster, bot = self.authorized(key, bot_id) or await self.authorize(key, bot_id)
            body = self.read_now(request)
            post = parse_stats(await self.read(request) if body is None else body, self.settings.shard_limit)
            if post.shard is None and post.shards is None:  # the common post: one coroutine less
                result = await self.append(bot, poster, [post.stats, *post.entries], stats=True)
            else:
                result = await self.append_stats(bot, poster, post)
        except Refusal as refusal:
            return refusal_response(refusal)
        except BadInput as bad:
            return refusal_response(Refusal(400, bad.message, bad.field))
        self._stats_tally.appended()
        if result is APPENDED and request.keep_alive and request.version == HttpVersion11:
            return NO_CONTENT  # type: ignore[return-value]
        return web.Response(status=204, content_type="application/json", headers=dropped_headers(result))

    def dispatch(
        self, app_handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
        """The server's request handler: the stats route by hand, the rest through the app.

        Taken by hand only when the router would surely pick `post_stats` and `Application._handle`
        adds nothing: a POST, a path of `/v1/bot/` (under BOTPULSE_GATEWAY_PREFIX) and an id that
        can exist (`BOT_ID`: no `/`, no percent-escape, nothing the route pattern refuses), no
        `Expect` header (the app answers `100 Continue`). Anything else, the app decides as always."""
        stats, prefix = self.stats, self.stats_prefix
        answered = self._stats_tally.answered
        clock = time.perf_counter

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            if request.method == "POST":
                path = request.raw_path  # as sent: a percent-escape in the id goes to the app
                if path.startswith(prefix):
                    bot_id = path[len(prefix) :].partition("?")[0]
                    if BOT_ID.match(bot_id) and hdrs.EXPECT not in request.headers:
                        started = clock()
                        response = await stats(request, bot_id)
                        answered(response.status, clock() - started)
                        return response
            return await app_handler(request)

        return handle

    async def post_custom(self, request: web.Request) -> web.Response:
        """DisStat `POST /v1/bot/{botId}/custom` -> 200 `{}`."""
        try:
            self.check_size(request)
            poster, bot = await self.authorize(self.key_of(request), request.match_info["botId"])
            entry = parse_custom(await self.read(request))
            await self.append(bot, poster, [entry], stats=False)
        except Refusal as refusal:
            return refusal_response(refusal)
        except BadInput as bad:
            return refusal_response(Refusal(400, bad.message, bad.field))
        metrics.appended(CUSTOM_ROUTE)
        return reply(200, Empty())

    async def post_dbots(self, request: web.Request) -> web.Response:
        """DBots-style `POST /bots/{botId}/stats` -> 200 `{guildCount}`."""
        try:
            self.check_size(request)
            poster, bot = await self.authorize(self.key_of(request), request.match_info["botId"])
            post = parse_dbots(await self.read(request), self.settings.shard_limit)
            if post.shard is not None:
                await self.append_shard(bot, poster, post.stats, post.shard, [])
            else:
                await self.append(bot, poster, [post.stats], stats=True)
        except Refusal as refusal:
            return refusal_response(refusal)
        except BadInput as bad:
            return refusal_response(Refusal(400, bad.message, bad.field))
        metrics.appended(route_template(request))
        return reply(200, DBotsAccepted(post.stats.guilds))

    async def post_statcord(self, request: web.Request) -> web.Response:
        """Statcord v3 `POST /v3/stats` (`id` and `key` in the body) -> 200 JSON."""
        try:
            self.check_size(request)
            post = parse_statcord(await self.read(request))
            poster, bot = await self.authorize(post.key, post.bot_id)
            result = await self.append(bot, poster, [post.stats, *post.entries], stats=True)
        except Refusal as refusal:
            return refusal_response(refusal, statcord=True)
        except BadInput as bad:
            return refusal_response(Refusal(400, bad.message, bad.field), statcord=True)
        metrics.appended(STATCORD_ROUTE)
        return reply(200, StatcordAccepted(False, "Stats posted"), dropped_headers(result))

    async def healthz(self, request: web.Request) -> web.Response:
        return reply(200, Health("ok"))

    async def readyz(self, request: web.Request) -> web.Response:
        try:
            await self.app[REDIS].ping()
        except Exception as exc:
            return reply(503, Health("unavailable", str(exc)), {"Retry-After": "1"})
        return reply(200, Health("ready"))

    @staticmethod
    async def not_found(request: web.Request) -> web.Response:
        return reply(404, ErrorBody(NOT_FOUND, "path"))

    @staticmethod
    def not_allowed(allowed: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            return reply(405, ErrorBody(f"Method {request.method} not allowed", "method"), {"Allow": allowed})

        return handler


async def _resources(app: web.Application):  # type: ignore[no-untyped-def]
    settings = app[SETTINGS]
    app[REDIS] = connect(settings)
    app[REGISTRY] = RegistryCache(app[REDIS], settings.registry_refresh_ms, settings.key_usage_flush_s)
    limits = Limits(
        stats_interval_ms=max(1, round(settings.stats_rate_interval_s * 1000)),
        stats_burst=settings.stats_rate_burst,
        custom_interval_ms=max(1, round(60_000 / settings.custom_rate_per_min)),
        custom_burst=settings.custom_rate_per_min,
    )
    app[APPENDER] = Appender(app[REDIS], settings.stream_high_water, limits, settings.redis_timeout_ms / 1000)
    app[ADMISSION] = Admission(app[REDIS], settings)
    app[SHARD_APPENDER] = ShardAppender(
        app[REDIS],
        high_water=settings.stream_high_water,
        interval_ms=limits.stats_interval_ms,
        burst=limits.stats_burst,
        # At most half the heartbeat window, or the bot would look offline between two totals.
        total_interval_ms=min(settings.shard_total_interval_s * 1000, settings.heartbeat_window_ms // 2),
        timeout_s=settings.redis_timeout_ms / 1000,
    )
    app[GATEWAY].bind()
    await app[REGISTRY].start()
    await app[ADMISSION].start()
    lag = LoopLagProbe(metrics.LOOP_LAG.observe)
    lag.start()
    yield
    await lag.stop()
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


OPENAPI_PATH = "/openapi.json"
EXPOSITION = web.AppKey("exposition", Exposition)


def route_template(request: web.Request) -> str:
    """The metrics label of a routed request: its route's template, without
    BOTPULSE_GATEWAY_PREFIX (the same route, whatever it is mounted under)."""
    return route_label(request, request.app[SETTINGS].gateway_prefix, catch_all="/{tail}")


# Requests the router serves (the hot route is measured in `Gateway.dispatch`).
_measured = measured(route_template, metrics.observe)


async def _openapi(request: web.Request) -> web.Response:
    """The gateway's own routes, as mounted (under BOTPULSE_GATEWAY_PREFIX when it is set)."""
    specs = spec.SPECS
    routes = prefixed(specs.routes, request.app[SETTINGS].gateway_prefix)
    return reply(200, document(specs.title, specs.description, api_version(), routes))


def build_app(settings: Settings) -> web.Application:
    # Bodies are capped by the handlers (413 from Content-Length, or while reading).
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[EXPOSITION] = Exposition()
    app.cleanup_ctx.append(_resources)
    gateway = Gateway(app, settings)
    app[GATEWAY] = gateway
    routes: list[tuple[Route, Callable[[web.Request], Awaitable[web.Response]]]] = [
        (spec.STATS, gateway.post_stats),
        (spec.CUSTOM, gateway.post_custom),
        (spec.DBOTS, gateway.post_dbots),
        (spec.DBOTS_BASE, gateway.post_dbots),
        (spec.STATCORD, gateway.post_statcord),
        (spec.HEALTHZ, gateway.healthz),
        (spec.READYZ, gateway.readyz),
    ]
    app.middlewares.append(_measured)
    # Operator routes: the metrics (unless on a port of their own; never under the prefix: an
    # operator's path, not the API's) and the API description (beside the routes it describes).
    prefix = settings.gateway_prefix
    if not settings.gateway_metrics_port:
        app.router.add_get(settings.metrics_path, app[EXPOSITION].handle)  # type: ignore[arg-type]
    app.router.add_get(prefix + OPENAPI_PATH, _openapi)
    for route, handler in routes:
        method, path = route.method, prefix + route.path
        resource = app.router.add_resource(path)
        resource.add_route(method, handler)
        if method == "GET":
            resource.add_route("HEAD", handler)
        resource.add_route("*", Gateway.not_allowed(method if method == "POST" else "GET, HEAD"))
    app.router.add_route("*", "/{tail:.*}", Gateway.not_found)
    return app
