"""Routes of the query service: DisStat bot data with `dataPoints` bucketing and uptime, the
`GET /v1/bots` listing and leaderboards, health checks; `build_app` also mounts the Datagram-style
uptime routes (`query.datagram`) and the account routes (`query.accounts_api`). Every route is
mounted under `BOTPULSE_QUERY_PREFIX`; GET answers carry CORS headers; every error body has
`message`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec
import redis.asyncio as aioredis
from aiohttp import web

from botpulse.query import accounts_api, alerts_api, dashboard, datagram, metrics, params, shapes
from botpulse.query.bot_reads import Known, Range, first_post, head_and_buckets, plan, read_head, run
from botpulse.query.cache import AnswerCache
from botpulse.query.dashboard.sessions import session_account
from botpulse.query.leaderboard import PERIODS, BadMetric, default_period, leaderboard
from botpulse.query.listing import (
    ALL_FIELDS,
    BadListing,
    compile_fields,
    compile_filter,
    compile_sort,
    list_bots,
)
from botpulse.query.memory import BotMemory
from botpulse.query.params import BadParam
from botpulse.query.resources import ANSWERS, READINESS, REDIS, REGISTRY, SETTINGS, STORE, UNAVAILABLE
from botpulse.query.responses import error, json_response
from botpulse.query.shards import (
    ShardSummary,
    connection_state,
    shard_grid,
    shard_uptimes,
)
from botpulse.query.spec import SPECS
from botpulse.query.stats import custom_totals
from botpulse.query.uptime import EPOCH_MS, HOUR_MS, connection_status, now_ms, uptime_with_periods
from botpulse.registry.catalog import Bot, ensure_index, get_bot
from botpulse.registry.index import VERSION_KEY, RegistryCache
from botpulse.registry.keys import request_key
from botpulse.registry.model import MissingScope, RegistryError
from botpulse.runtime.clickhouse import ReadRefused, Store, is_timeout
from botpulse.runtime.http_metrics import measured, route_label
from botpulse.runtime.logs import get_logger
from botpulse.runtime.loop_lag import LoopLagProbe
from botpulse.runtime.metrics import Exposition, start_listener
from botpulse.runtime.openapi import api_version, document, prefixed
from botpulse.runtime.redis import connect
from botpulse.runtime.settings import Settings
from botpulse.schemas.http import Health
from botpulse.schemas.registry import INGEST, READ

log = get_logger(__name__)


def _listing_error(message: str) -> web.Response:
    return json_response({"success": False, "error": message, "message": message}, status=400)


async def caller_account(request: web.Request) -> str | None:
    """The account of the request's key, for reading its private bots; None without a key or for
    an unknown one (then only public bots are visible). An ingest key may not read: 403."""
    key = request_key(request.headers, request.query)
    if not key:  # a signed-in dashboard session reads like the key it was opened with (GET only)
        return await session_account(request)
    return await account_of_key(request, key)


async def account_of_key(request: web.Request, key: str) -> str | None:
    """`caller_account` for a key however it came (e.g. Rocket.Chat's `X-Auth-Token`)."""
    registry = request.app[REGISTRY]
    found = await registry.credential(key)
    if found is None:
        return None
    if found.scope == INGEST:
        raise MissingScope(INGEST, READ, "reading")
    registry.used(found.usage_id)
    return found.account_id


class BotRecords:
    """Bot records cached per registry version. Every change to a bot goes through
    `registry.catalog.write_bot`, which bumps `bp:reg:version`, so a change is seen by the next
    request; meanwhile a read costs one Redis GET instead of a `bots FINAL` query."""

    MAX_ENTRIES = 100_000

    def __init__(self) -> None:
        self._version: bytes | None = None
        self._bots: dict[str, Bot | None] = {}

    async def get(self, store: Store, redis: aioredis.Redis, bot_id: str) -> Bot | None:
        try:
            version = await redis.get(VERSION_KEY)
        except Exception:
            return await get_bot(store, bot_id)  # no version to trust: read the record itself
        if version is None or version != self._version or len(self._bots) > self.MAX_ENTRIES:
            self._bots.clear()
            self._version = version
        if bot_id not in self._bots:
            _MISS.inc()
            bot = await get_bot(store, bot_id)
            if version is None:
                return bot
            self._bots[bot_id] = bot
        else:
            _HIT.inc()
        return self._bots[bot_id]


BOT_RECORDS = web.AppKey("bot_records", BotRecords)
KNOWN_SIDES = web.AppKey("known_sides", Known)
# Where this process holds the only writer: bots' answers from memory (query/memory.py).
BOT_MEMORY = web.AppKey("bot_memory", BotMemory | None)
_HIT, _MISS = metrics.CACHE.labels("bot_records", "hit"), metrics.CACHE.labels("bot_records", "miss")


async def visible_bot(request: web.Request, bot_id: str) -> Bot | None:
    """The bot, or None when it does not exist or is private to another account (both 404). The
    key is checked first, public bot or not: an ingest key never reads (403)."""
    account = await caller_account(request)
    bot = await request.app[BOT_RECORDS].get(request.app[STORE], request.app[REDIS], bot_id)
    if bot is not None and bot.private and account != bot.account_id:
        return None
    return bot


def _range(request: web.Request, default_start: int | None) -> tuple[int, int]:
    q = request.query
    end = params.timestamp_ms("end", q["end"]) if q.get("end") else now_ms()
    if q.get("start"):
        start = params.timestamp_ms("start", q["start"])
    elif default_start is not None and default_start < end:
        start = default_start
    else:
        start = end - HOUR_MS
    if start >= end:
        raise BadParam("start", "start must be before end")
    return start, end


# --- DisStat ----------------------------------------------------------------------------------
async def get_bot_info(request: web.Request) -> web.Response:
    store = request.app[STORE]
    bot_id = request.match_info["botId"]
    q = request.query
    try:
        params.bot_id("botId", bot_id)
        want_stats = params.boolean("returnStats", q.get("returnStats"))
        points = params.integer("dataPoints", q.get("dataPoints"), default=90, lo=1, hi=1000)
        for name in ("start", "end"):  # checked before any lookup, so bad input is always a 400
            if q.get(name):
                params.timestamp_ms(name, q[name])
    except BadParam as exc:
        return error(400, exc.message, exc.field)
    bot = await visible_bot(request, bot_id)
    if bot is None:
        return error(404, "Bot not found")
    window_ms = request.app[SETTINGS].heartbeat_window_ms
    now = now_ms()
    # Two rounds (query/bot_reads.py): the bot's last post and what it has (with the buckets
    # beside it when the range does not start at the first post and the engine overlaps reads),
    # then side by side the buckets if still due and only the reads the bot has rows for.
    known, created = request.app[KNOWN_SIDES], int(bot.created_at.timestamp() * 1000)
    memory = request.app[BOT_MEMORY]
    rng, bucket_rows = None, None
    try:
        if want_stats and q.get("start"):
            rng = Range(*_range(request, None), points)
            head, bucket_rows = await head_and_buckets(store, bot_id, rng, known, memory)
        else:
            head = await read_head(store, bot_id, with_first=want_stats, known=known, memory=memory)
            if want_stats:
                rng = Range(*_range(request, head.first if head.first is not None else created), points)
    except BadParam as exc:
        return error(400, exc.message, exc.field)
    p = plan(bot_id, head, rng, buckets_read=bucket_rows is not None)
    more = await run(store, head, p, rng, now, window_ms, bucket_rows, memory)
    last, names, extras = head.last, more.names, more.extras
    status = connection_status(last, window_ms)
    body: dict[str, Any] = {
        "id": bot.id,
        "username": bot.username,
        "avatar": bot.avatar,
        "private": bot.private,
        "createdAt": created,
        "lastSeen": last,
        "connectionStatus": status,
        # Added fields: clients that know only connected/disconnected keep reading the above.
        "connectionState": connection_state(status, extras.shards),
        "shardsUp": extras.shards.up if extras.shards else None,
        "shardsTotal": extras.shards.total if extras.shards else None,
        "customGraphs": names,
        "properties": extras.properties,
    }
    if rng is not None:
        body["range"] = {"start": rng.start, "end": rng.end, "dataPoints": points}
        body["stats"] = more.stats
        body["customTotals"] = more.totals
    return json_response(body)


async def get_bot_top(request: web.Request) -> web.Response:
    bot_id = request.match_info["botId"]
    q = request.query
    try:
        params.bot_id("botId", bot_id)
        type_ = q.get("type")
        if not type_:
            raise BadParam("type", "type is required (e.g. type=command)")
        if len(type_) > 64:
            raise BadParam("type", "type is longer than 64 characters")
        limit = params.integer("limit", q.get("limit"), default=10, lo=1, hi=100)
        start, end = _range(request, EPOCH_MS)
    except BadParam as exc:
        return error(400, exc.message, exc.field)
    if await visible_bot(request, bot_id) is None:
        return error(404, "Bot not found")
    totals = await custom_totals(request.app[STORE], bot_id, start, end, limit=limit, type_=type_)
    entry = totals.get(type_, {"count": 0, "top": []})
    top = [shapes.TopValue(t["value"], t["count"]) for t in entry["top"]]
    return json_response(shapes.BotTop(bot_id, type_, start, end, entry["count"], top))


async def get_bot_uptime(request: web.Request) -> web.Response:
    store = request.app[STORE]
    bot_id = request.match_info["botId"]
    try:
        params.bot_id("botId", bot_id)
        for name in ("start", "end"):
            if request.query.get(name):
                params.timestamp_ms(name, request.query[name])
    except BadParam as exc:
        return error(400, exc.message, exc.field)
    bot = await visible_bot(request, bot_id)
    if bot is None:
        return error(404, "Bot not found")
    first = await first_post(store, bot_id)
    try:
        start, end = _range(request, first if first is not None else int(bot.created_at.timestamp() * 1000))
    except BadParam as exc:
        return error(400, exc.message, exc.field)
    window_ms = request.app[SETTINGS].heartbeat_window_ms
    if request.query.get("start") or request.query.get("end"):
        result = await uptime_with_periods(store, bot_id, start, end, window_ms)
    else:  # the whole history: the most expensive read of all, and the same for everyone
        start, end, result = await request.app[ANSWERS].get(
            ("uptime", bot_id),
            lambda: _whole_uptime(store, bot_id, start, end, window_ms),
        )
    return json_response(
        shapes.BotUptime(
            id=bot_id,
            start=start,
            end=end,
            uptime=result.uptime_ms,
            percentage=round(result.uptime_ms * 100 / (end - start), 4),
            offline=[shapes.Period(a, b) for a, b in result.offline],
            offlineTruncated=result.offline_truncated,
        )
    )


async def _whole_uptime(
    store: Store, bot_id: str, start: int, end: int, window_ms: int
) -> tuple[int, int, Any]:
    return start, end, await uptime_with_periods(store, bot_id, start, end, window_ms)


# --- shards ---------------------------------------------------------------------------------
DAY_MS = 24 * HOUR_MS


async def get_bot_shards(request: web.Request) -> web.Response:
    """Each shard's latest values, last post and up/down status (the shard grid)."""
    bot_id = request.match_info["botId"]
    try:
        params.bot_id("botId", bot_id)
    except BadParam as exc:
        return error(400, exc.message, exc.field)
    if await visible_bot(request, bot_id) is None:
        return error(404, "Bot not found")
    window_ms = request.app[SETTINGS].heartbeat_window_ms
    rows = await shard_grid(request.app[STORE], bot_id, now_ms(), window_ms)
    grid = [shapes.ShardRow(**row) for row in rows]
    summary = ShardSummary(sum(s.status == "up" for s in grid), len(grid))
    state = connection_state("", summary) if grid else None
    return json_response(shapes.ShardGrid(bot_id, state, summary.up, summary.total, grid))  # type: ignore[arg-type]


def _shard_ids(raw: str | None, limit: int) -> list[int] | None:
    if raw is None or raw.strip() == "":
        return None
    ids = []
    for part in raw.split(",")[: limit + 1]:
        text = part.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 6 or int(text) >= limit:
            raise BadParam("shards", f"shards must be shard ids from 0 to {limit - 1}, comma-separated")
        ids.append(int(text))
    if len(ids) > limit:
        raise BadParam("shards", f"at most {limit} shard ids")
    return sorted(set(ids))


async def get_bot_shards_uptime(request: web.Request) -> web.Response:
    """Per-shard uptime over `[start, end)` (default: the last 24 hours); `shards=0,3` narrows it."""
    bot_id = request.match_info["botId"]
    settings = request.app[SETTINGS]
    try:
        params.bot_id("botId", bot_id)
        wanted = _shard_ids(request.query.get("shards"), settings.shard_limit)
        end = params.timestamp_ms("end", request.query["end"]) if request.query.get("end") else now_ms()
        start, end = _range(request, end - DAY_MS)
    except BadParam as exc:
        return error(400, exc.message, exc.field)
    if await visible_bot(request, bot_id) is None:
        return error(404, "Bot not found")
    store, window_ms = request.app[STORE], settings.heartbeat_window_ms
    if wanted is None:
        wanted = [s["id"] for s in await shard_grid(store, bot_id, now_ms(), window_ms)]
    up = await shard_uptimes(store, bot_id, wanted, start, end, window_ms)
    span = end - start
    shards = [shapes.ShardUptime(s, ms, round(ms * 100 / span, 4)) for s, ms in up.items()]
    return json_response(shapes.ShardUptimes(bot_id, start, end, shards))


# --- listing and leaderboards ---------------------------------------------------------------
OUTPUT_DEFAULTS = [f for f in ALL_FIELDS if not f.startswith("_") and f != "version"]
STATISTICS_DEFAULTS = ALL_FIELDS


async def _listing(
    request: web.Request,
    account: str | None,
    *,
    defaults: list[str],
    where: str | None = None,
    where_params: dict[str, Any] | None = None,
    order: str | None = None,
    count_names: tuple[str, ...] = ("count",),
) -> tuple[list[dict[str, Any]], int, int]:
    """A page of the bots `account` may see (the answer cache's), its total and offset. The
    listing's own `query` / `sort` apply unless the route gives `where` / `order`; BadListing /
    BadParam on bad input."""
    q = request.query
    if where is None:
        where, where_params = compile_filter(q.get("query"))
    if order is None:
        order = compile_sort(q.get("sort"))
    fields = compile_fields(q.get("fields"), defaults)
    offset = params.integer("offset", q.get("offset"), default=0, lo=0, hi=10_000_000)
    raw_count = next((q[n] for n in count_names if n in q), None)
    count = params.integer("count", raw_count, default=25, lo=1, hi=100)
    bound = where_params or {}
    window_ms = request.app[SETTINGS].heartbeat_window_ms
    key = ("bots", account, where, tuple(sorted(bound.items())), order, tuple(fields), offset, count)
    bots, total = await request.app[ANSWERS].get(
        key,
        lambda: list_bots(
            request.app[STORE],
            account=account,
            cutoff_ms=now_ms() - window_ms + 1,
            where=where,
            where_params=bound,
            order=order,
            fields=fields,
            offset=offset,
            count=count,
        ),
    )
    return bots, total, offset


async def get_bots(request: web.Request) -> web.Response:
    try:
        bots, total, offset = await _listing(request, await caller_account(request), defaults=OUTPUT_DEFAULTS)
    except BadListing as exc:
        return _listing_error(str(exc))
    except BadParam as exc:
        return _listing_error(exc.message)
    listed = [msgspec.convert(bot, shapes.ListedBot) for bot in bots]
    return json_response(shapes.Listing(listed, len(listed), offset, total, True))


_NOT_LOGGED_IN = "You must be logged in to do this."


def _rc_error(status: int, message: str) -> web.Response:
    """Rocket.Chat's error body."""
    return json_response(shapes.RocketChatError("error", message, False), status=status)


async def get_statistics_list(request: web.Request) -> web.Response:
    """`GET /api/v1/statistics.list`, for clients written against Rocket.Chat: the records under
    `statistics` with `_id`; `X-Auth-Token` (an API key) and `X-User-Id` (its account id) are
    credentials next to `Authorization`, with the same scopes; errors are `{status: "error",
    message}`."""
    token, user = request.headers.get("X-Auth-Token"), request.headers.get("X-User-Id")
    if token or user:
        account = await account_of_key(request, token) if token else None
        if account is None or (user is not None and user != account):
            return _rc_error(401, _NOT_LOGGED_IN)
    else:
        account = await caller_account(request)
    try:
        bots, total, offset = await _listing(request, account, defaults=STATISTICS_DEFAULTS)
    except BadListing as exc:
        return _rc_error(400, str(exc))
    except BadParam as exc:
        return _rc_error(400, exc.message)
    records = [
        msgspec.convert({("_id" if k == "id" else k): v for k, v in b.items()}, shapes.StatisticsRecord)
        for b in bots
    ]
    return json_response(shapes.StatisticsList(records, len(records), offset, total, True))


MAX_SEARCH = 64
SEARCH_MODES = ("substring", "prefix")


async def get_bots_search(request: web.Request) -> web.Response:
    """Bots whose username contains (`match=substring`, the default) or starts with
    (`match=prefix`) `q`, case-insensitive, most recently seen first (DCSServerBot's `getuser`)."""
    q = request.query
    text = q.get("q", q.get("name", q.get("nick", "")))
    mode = q.get("match", "substring")
    if not text.strip():
        return error(400, "q is required (the text to look for in bot names)", "q")
    if len(text) > MAX_SEARCH:
        return error(400, f"q is longer than {MAX_SEARCH} characters", "q")
    if mode not in SEARCH_MODES:
        return error(400, "match must be substring or prefix", "match")
    where = (
        "startsWith(lowerUTF8(username), lowerUTF8({q:String}))"
        if mode == "prefix"
        else "positionCaseInsensitiveUTF8(username, {q:String}) > 0"
    )
    try:
        bots, total, offset = await _listing(
            request,
            await caller_account(request),
            defaults=OUTPUT_DEFAULTS,
            where=where,
            where_params={"q": text},
            order="last_seen DESC NULLS LAST, id ASC",
            count_names=("count", "limit"),
        )
    except BadListing as exc:
        return error(400, str(exc), "fields")
    except BadParam as exc:
        return error(400, exc.message, exc.field)
    listed = [msgspec.convert(bot, shapes.ListedBot) for bot in bots]
    return json_response(shapes.Listing(listed, len(listed), offset, total, True))


async def get_top(request: web.Request) -> web.Response:
    q = request.query
    metric = q.get("metric", "guilds")
    per = q.get("per") or None
    period = q.get("period") or default_period(metric, per)
    if period not in PERIODS:
        return error(400, f"period must be one of {', '.join(PERIODS)}", "period")
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        return error(400, "order must be asc or desc", "order")
    try:
        limit = params.integer("limit", q.get("limit"), default=10, lo=1, hi=100)
        entries = await request.app[ANSWERS].get(
            ("top", metric, per, period, limit, order),
            lambda: leaderboard(request.app[STORE], metric, per, period, limit, order == "asc"),
        )
    except BadParam as exc:
        return error(400, exc.message, exc.field)
    except BadMetric as exc:
        return error(400, exc.message, exc.field)
    ranked = [shapes.Ranked(**entry) for entry in entries]
    board = shapes.Leaderboard(metric, period, ranked)  # type: ignore[arg-type]
    if per is not None:
        board.per = per
    return json_response(board)


# --- serving ----------------------------------------------------------------------------------
async def healthz(request: web.Request) -> web.Response:
    return json_response(Health("ok"))


async def readyz(request: web.Request) -> web.Response:
    problems = [p for check in request.app[READINESS] if (p := check()) is not None]
    if not await request.app[STORE].ping():
        problems.insert(0, "ClickHouse unreachable")
    if problems:
        return json_response(
            Health("unavailable", "; ".join(problems), problems), status=503, headers={"Retry-After": "1"}
        )
    return json_response(Health("ready"))


_CORS = {"Access-Control-Allow-Origin": "*", "Vary": "Origin"}
_PREFLIGHT = {
    **_CORS,
    "Access-Control-Allow-Methods": "GET, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, X-Auth-Token, X-User-Id",
    "Access-Control-Max-Age": "600",
}


@web.middleware
async def cors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Dashboards on other origins read every GET; a preflight for a GET is answered here."""
    if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method") == "GET":
        return web.Response(status=204, headers=_PREFLIGHT)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if request.method in ("GET", "HEAD"):
            _add_cors(exc.headers)
        raise
    if request.method in ("GET", "HEAD"):
        _add_cors(response.headers)
    return response


def _add_cors(headers: MutableMapping[str, str]) -> None:
    """The CORS headers, with `Origin` added to any `Vary` the handler set (the dashboard's
    pages vary by `Cookie`: replacing it would let a shared cache hand one session's page to
    another)."""
    headers["Access-Control-Allow-Origin"] = "*"
    vary = [v.strip() for v in headers.get("Vary", "").split(",") if v.strip()]
    if "origin" not in {v.lower() for v in vary}:
        vary.append("Origin")
    headers["Vary"] = ", ".join(vary)


# Requests by route template and status class (outermost: it sees the final status).
_measured = measured(
    lambda request: route_label(request, request.app[SETTINGS].query_prefix), metrics.observe
)


@web.middleware
async def backend_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every answer is JSON with a `message`, even when Redis or ClickHouse fails underneath."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except RegistryError as exc:  # a key outside its scope
        return json_response(exc.body(), status=exc.status)
    except ReadRefused as exc:  # the read slots are full, or the read hit its time or memory limit
        log.warning("read refused", path=request.path, limit=exc.limit)
        return json_response(
            {"message": exc.message, "limit": exc.limit}, status=503, headers={"Retry-After": "1"}
        )
    except UNAVAILABLE as exc:
        log.warning("backend unavailable", path=request.path, error=str(exc))
        return json_response(
            {"message": "Storage is unavailable, try again shortly"}, status=503, headers={"Retry-After": "1"}
        )
    except Exception as exc:
        if is_timeout(exc):  # past BOTPULSE_QUERY_TIMEOUT_S: as unavailable as no answer at all
            log.warning("query timed out", path=request.path, error=str(exc).splitlines()[0][:300])
            return json_response(
                {"message": "Storage did not answer in time, try again shortly"},
                status=503,
                headers={"Retry-After": "1"},
            )
        log.exception("request failed", path=request.path)
        return json_response({"message": "Internal error"}, status=500)


def build_app(settings: Settings, store: Store) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app[STORE] = store
    app[BOT_RECORDS] = BotRecords()
    app[KNOWN_SIDES] = Known()
    memory = None
    if store.sole_writer and settings.query_memory_hours:
        memory = BotMemory(store, settings.query_memory_hours)
        store.watch(memory)
        log.info("bot answers from memory", limit_units=settings.query_memory_hours)

        async def forget(app: web.Application) -> None:
            store.unwatch(memory)

        app.on_cleanup.append(forget)
    app[BOT_MEMORY] = memory
    app[ANSWERS] = AnswerCache(settings.query_cache_s)
    app[READINESS] = readiness = []

    async def resources(app: web.Application):  # type: ignore[no-untyped-def]
        app[REDIS] = connect(settings)
        await ensure_index(store, app[REDIS], settings.stream_partitions)
        app[REGISTRY] = RegistryCache(app[REDIS], settings.registry_refresh_ms, settings.key_usage_flush_s)
        await app[REGISTRY].start()
        lag = LoopLagProbe(metrics.LOOP_LAG.observe)
        lag.start()
        yield
        await lag.stop()
        await app[REGISTRY].stop()
        await app[REDIS].aclose()

    app.cleanup_ctx.append(resources)
    app.router.add_get("/v1/bot/{botId}", get_bot_info)
    app.router.add_get("/v1/bot/{botId}/uptime", get_bot_uptime)
    app.router.add_get("/v1/bot/{botId}/top", get_bot_top)
    app.router.add_get("/v1/bot/{botId}/shards", get_bot_shards)
    app.router.add_get("/v1/bot/{botId}/shards/uptime", get_bot_shards_uptime)
    app.router.add_get("/v1/bots", get_bots)
    app.router.add_get("/v1/bots/search", get_bots_search)
    app.router.add_get("/api/v1/statistics.list", get_statistics_list)
    app.router.add_get("/v1/top", get_top)
    datagram.add_routes(app)
    accounts_api.add_routes(app)
    alerts_api.add_routes(app)
    dashboard.add_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get(OPENAPI_PATH, openapi)
    if not settings.query_prefix:
        root = app
        app.middlewares.extend([_measured, cors, backend_errors])
    else:
        # Mounted as a sub-application so the accounts routes land under the prefix too; the keys
        # are also set on the root so code holding the returned app still finds them.
        root = web.Application(middlewares=[_measured, cors, backend_errors])
        root[SETTINGS] = settings
        root[STORE] = store
        root[READINESS] = readiness
        root.add_subapp(settings.query_prefix, app)
    exposition = root[EXPOSITION] = app[EXPOSITION] = Exposition()
    if settings.query_metrics_port:
        root.cleanup_ctx.append(_metrics_listener)
    else:
        # At the root, never under the prefix: an operator's path, not the API's.
        root.router.add_get(settings.metrics_path, exposition.handle)  # type: ignore[arg-type]
    return root


OPENAPI_PATH = "/openapi.json"
EXPOSITION = web.AppKey("exposition", Exposition)


async def openapi(request: web.Request) -> web.Response:
    prefix = request.app[SETTINGS].query_prefix
    return json_response(
        document(SPECS.title, SPECS.description, api_version(), prefixed(SPECS.routes, prefix))
    )


async def _metrics_listener(app: web.Application):  # type: ignore[no-untyped-def]
    """The metrics on a port of their own (BOTPULSE_QUERY_METRICS_PORT), not on the API's."""
    settings = app[SETTINGS]
    stop = await start_listener(
        app[EXPOSITION], settings.metrics_listen, settings.query_metrics_port, settings.metrics_path
    )
    yield
    await stop()
