"""Phase 4: query latency over HTTP on a bulk-loaded data set (N bots x D days of 1-minute
posts, plus one bot over the long range). Requests run one at a time on a keep-alive
connection, so each latency is one request's own time. A route that does not exist (404 from
the router) is reported as "not available"; no figure is ever made up for it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import msgspec

from botpulse.bench.context import Bench, Figure, port
from botpulse.bench.engine_reads import EngineCase, EngineTime
from botpulse.bench.loadgen import percentile
from botpulse.bench.seed import DAY_MS, History, Spec

PHASE = "query"
HOUR_MS = 3_600_000


@dataclass
class Case:
    key: str
    label: str
    urls: list[str]
    headers: list[dict[str, str]]
    check: str = ""  # a key the JSON answer must hold for the figure to be the one asked for
    # A sample that is several requests in a row (a dashboard page and its data requests): each
    # entry of `steps` is one sample's URLs, timed together; `urls` is then unused.
    steps: list[list[str]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    problem: str = ""


async def _measure(base: str, cases: list[Case], requests: int) -> None:
    async with aiohttp.ClientSession(
        base, connector=aiohttp.TCPConnector(limit=1), timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        for case in cases:
            for i in range(requests + 3):  # the first three warm caches and are not counted
                urls = case.steps[i % len(case.steps)] if case.steps else [case.urls[i % len(case.urls)]]
                headers = case.headers[i % len(case.headers)]
                started = time.perf_counter()
                for url in urls:
                    async with session.get(url, headers=headers) as resp:
                        body = await resp.read()
                        status = resp.status
                    if status != 200:
                        break
                elapsed = time.perf_counter() - started
                if i < 3:
                    if i == 0:
                        _inspect(case, status, body, resp.content_type)
                    continue
                case.statuses[status] += 1
                if status == 200:
                    case.latencies.append(elapsed)


def _inspect(case: Case, status: int, body: bytes, content_type: str) -> None:
    if status == 404 and content_type != "application/json":
        case.problem = "not available (route answers 404)"
    elif status != 200:
        text = " ".join(body[:200].decode(errors="replace").split())
        case.problem = f"answered HTTP {status}: {text}"
    elif case.check and case.check.encode() not in body:
        case.problem = f"answer has no {case.check!r} (returnStats not served yet)"


def run(b: Bench) -> None:
    s = b.sizes
    redis = b.redis(PHASE)
    try:
        # The answer cache off: each request's own cost is measured, not the cache's. The bots'
        # answers from memory off too: this phase measures the reads from the tables (the peers
        # phase measures both).
        env = b.env(PHASE, redis.url, BOTPULSE_QUERY_CACHE_S="0", BOTPULSE_QUERY_MEMORY_HOURS="0")
        spec = Spec(
            accounts=min(5, s.query_bots),
            bots=s.query_bots + 2 + 25,  # 25 more without history fill the listing's first page
            history=[
                History("month", s.query_bots, s.query_days),
                History("year", 1, s.query_long_days),
                History("sharded", 1, s.query_days, shards=s.query_shards),
            ],
        )
        b.say(f"query: loading {s.query_bots} bots x {s.query_days} d + 1 bot x {s.query_long_days} d")
        seeded = b.seed(PHASE, env, spec, timeout=900)
        b.say(f"query: {seeded.rows:,} rows loaded in {seeded.load_s} s")
        keys = {t.bot_id: t.key for t in seeded.targets}
        end = seeded.end_ms
        month, year = seeded.history["month"], seeded.history["year"]
        sharded = seeded.history["sharded"]
        now_ms = int(time.time() * 1000)
        # The uptime range may reach back at most 2 weeks; an hour of margin for the rounding.
        two_weeks_ago = now_ms - 14 * DAY_MS + HOUR_MS
        stats = "/v1/bot/{}?returnStats=true&dataPoints=90&start={}&end={}"
        aligned_end = -(-end // HOUR_MS) * HOUR_MS  # the end of the hour that holds the last post
        engine_cases = [
            EngineCase("query_bot_30d", month, end - s.query_days * DAY_MS, end, 90),
            EngineCase("query_bot_30d_aligned", month, aligned_end - s.query_days * DAY_MS, aligned_end, 90),
        ]
        cases = [
            Case(
                "query_bot_30d",
                f"GET /v1/bot/{{id}} {s.query_days} d, 90 buckets",
                [stats.format(i, end - s.query_days * DAY_MS, end) for i in month],
                [{}],
                check="stats",
            ),
            Case(
                "query_bot_30d_aligned",
                f"GET /v1/bot/{{id}} {s.query_days} d, 90 buckets, hour-aligned (the dashboard's way)",
                [stats.format(i, aligned_end - s.query_days * DAY_MS, aligned_end) for i in month],
                [{}],
                check="stats",
            ),
            Case(
                "query_bot_1y",
                f"GET /v1/bot/{{id}} {s.query_long_days} d, 90 buckets",
                [stats.format(i, end - s.query_long_days * DAY_MS, end) for i in year],
                [{}],
                check="stats",
            ),
            Case(
                "query_bot_30d_sharded",
                f"GET /v1/bot/{{id}} {s.query_days} d, 90 buckets, {s.query_shards} shards posting",
                [stats.format(i, end - s.query_days * DAY_MS, end) for i in sharded],
                [{}],
                check="shardsTotal",
            ),
            Case(
                "query_uptime_2w",
                "GET /api/v1/uptime, 2 weeks",
                [
                    f"/api/v1/uptime?partner_node_id={i}&started_at={two_weeks_ago}&ended_at={now_ms}"
                    for i in month
                ],
                [{"Authorization": keys[i]} for i in month],
                check="uptime",
            ),
            Case("query_bots_page", "GET /v1/bots first page", ["/v1/bots"], [{}], check="bots"),
            Case(
                "query_dashboard_bot_30d",
                f"dashboard bot page, {s.query_days} d (HTML + its 4 data requests)",
                [],
                [{}],
                check="offline",  # the last step's answer: the 1-year uptime
                steps=[_bot_page(i, end, s.query_days) for i in month],
            ),
            Case(
                "query_dashboard_data_30d",
                f"the same {s.query_days} d data requests, API only",
                [],
                [{}],
                check="offline",
                steps=[_bot_page(i, end, s.query_days)[1:] for i in month],
            ),
            Case(
                "query_badge",
                "GET /badge/{id}/uptime-30d.svg",
                [f"/badge/{i}/uptime-30d.svg" for i in month],
                [{}],
                check="<svg",
            ),
        ]
        qport = port()
        svc = b.service("query", PHASE, ["-m", "botpulse", "query", "--port", str(qport)], env)
        try:
            svc.wait_http(f"http://127.0.0.1:{qport}/healthz", timeout=90)
            asyncio.run(_measure(f"http://127.0.0.1:{qport}", cases, s.query_requests))
            b.note_rss("query", svc)
        finally:
            svc.stop()
        engine = _engine_times(b, env, engine_cases, s.query_requests)
        _figures(b, cases, seeded.rows, engine)
        if s.profile:
            _profile(b, env, cases)
    finally:
        b.stop_redis(redis, "redis (query phase)")
    _listing(b)


# The listing sorted by a latest value: every bot's latest row is read, whatever the page.
LISTING_URL = '/v1/bots?sort={"guilds":-1}&count=25'


def _listing(b: Bench) -> None:
    """`GET /v1/bots` on a small and a large registry (bots x days of hourly posts), the answer
    cache off: the large one must cost within 2x of the small one (it reads a per-bot summary,
    not the bot-days)."""
    s = b.sizes
    cases: list[Case] = []
    raw: dict[str, object] = {}
    for label, (bots, days) in (("small", s.listing_small), ("large", s.listing_large)):
        phase = f"{PHASE}-listing-{label}"
        redis = b.redis(phase)
        try:
            env = b.env(phase, redis.url, BOTPULSE_QUERY_CACHE_S="0")
            spec = Spec(accounts=min(5, bots), bots=bots, history=[History("all", bots, days, every_min=60)])
            b.say(f"query: listing, loading {bots} bots x {days} d of hourly posts")
            seeded = b.seed(phase, env, spec, timeout=3600)
            case = Case(f"query_listing_{label}", f"GET /v1/bots by guilds, {bots} bots x {days} d",
                        [LISTING_URL], [{}], check="bots")  # fmt: skip
            qport = port()
            args = ["-m", "botpulse", "query", "--port", str(qport)]
            svc = b.service(f"query-listing-{label}", phase, args, env)
            try:
                svc.wait_http(f"http://127.0.0.1:{qport}/healthz", timeout=90)
                asyncio.run(_measure(f"http://127.0.0.1:{qport}", [case], s.query_requests))
            finally:
                svc.stop()
            cases.append(case)
            raw[f"{label}_rows"] = seeded.rows
        finally:
            b.stop_redis(redis, f"redis (query listing {label})")
    p50s: dict[str, float | None] = {}
    for case in cases:
        case.latencies.sort()
        p50 = percentile(case.latencies, 50)
        p50s[case.key] = round(p50 * 1000, 2) if p50 is not None and not case.problem else None
        raw[case.key] = {"p50_ms": p50s[case.key], "samples": len(case.latencies), "problem": case.problem}
    b.raw[f"{PHASE}_listing"] = raw
    small, large = p50s["query_listing_small"], p50s["query_listing_large"]
    (sb, sd), (lb, ld) = s.listing_small, s.listing_large
    b.figure(Figure("query_listing_small_p50", f"GET /v1/bots {sb} bots x {sd} d p50", small, "ms", "", None,
                    cases[0].problem or f"{cases[0].statuses}"))  # fmt: skip
    ratio = round(large / small, 2) if small and large else None
    b.figure(Figure("query_listing_scale", f"GET /v1/bots {lb} bots x {ld} d vs {sb} x {sd} (p50 ratio)",
                    ratio, "x", "≤ 2x", None if ratio is None else ratio <= 2,
                    cases[1].problem or f"large p50 {large} ms, small p50 {small} ms"))  # fmt: skip


def _bot_page(bot_id: str, end: int, days: int) -> list[str]:
    """What a browser fetches for the bot page at the dashboard's 30-day range (`app.js`): the
    HTML, the 90-day uptime, the stats of the range (720 buckets) and the 1-year uptime. The
    assets are immutable and cached by the browser, so they are not counted."""
    ninety = end // DAY_MS * DAY_MS - 89 * DAY_MS
    # app.js ends a chart's range at the end of the bucket that holds now (here hours).
    chart_end = -(-end // HOUR_MS) * HOUR_MS
    return [
        f"/dashboard/bot/{bot_id}",
        f"/v1/bot/{bot_id}/uptime?start={ninety}&end={end}",
        f"/v1/bot/{bot_id}?returnStats=true&start={chart_end - days * DAY_MS}&end={chart_end}&dataPoints=720",
        f"/v1/bot/{bot_id}/uptime?start={end - 365 * DAY_MS}&end={end}",
    ]


def _profile(b: Bench, env: dict[str, str], cases: list[Case]) -> None:
    """The 30-day and long-range bot queries again, sampled by py-spy (not counted in figures)."""
    qport = port()
    svc = b.service("query-profiled", PHASE, ["-m", "botpulse", "query", "--port", str(qport)], env)
    again = [Case(c.key, c.label, c.urls, c.headers) for c in cases if c.key.startswith("query_bot_")]
    sampler = None
    try:
        svc.wait_http(f"http://127.0.0.1:{qport}/healthz", timeout=90)
        sampler = b.sample(svc, PHASE, "query")
        asyncio.run(_measure(f"http://127.0.0.1:{qport}", again, b.sizes.query_requests))
    finally:
        b.end_sample(sampler, svc, PHASE, "query")
        svc.stop()


def _engine_times(
    b: Bench, env: dict[str, str], cases: list[EngineCase], repeat: int
) -> dict[str, EngineTime]:
    """The engine's own time for the statements of each case (bench/engine_reads.py)."""
    out = b.phase_dir(PHASE) / "engine.json"
    args = ["--cases", msgspec.json.encode(cases).decode(), "--repeat", str(repeat), "--out", str(out)]
    b.child("engine timing (query phase)", env, "botpulse.bench.engine_reads", args, timeout=600)
    times = msgspec.json.decode(out.read_bytes(), type=list[EngineTime])
    for t in times:
        b.say(f"query: {t.key}: engine {t.total_ms} ms for its statements {t.statements_ms}")
    return {t.key: t for t in times}


def _figures(b: Bench, cases: list[Case], rows: int, engine: dict[str, EngineTime]) -> None:
    raw: dict[str, object] = {"rows_loaded": rows}
    raw["engine"] = {k: msgspec.to_builtins(v) for k, v in engine.items()}
    p50s: dict[str, float | None] = {}
    for case in cases:
        case.latencies.sort()
        p50 = percentile(case.latencies, 50)
        p99 = percentile(case.latencies, 99)
        usable = not case.problem and bool(case.latencies)
        p50s[case.key] = round(p50 * 1000, 2) if usable and p50 is not None else None
        raw[case.key] = {
            "p50_ms": None if p50 is None else round(p50 * 1000, 3),
            "p99_ms": None if p99 is None else round(p99 * 1000, 3),
            "samples": len(case.latencies),
            "statuses": {str(k): v for k, v in case.statuses.items()},
            "problem": case.problem,
        }
        b.say(f"query: {case.label}: p50 {raw[case.key]['p50_ms']} ms {case.problem}")  # type: ignore[index]
    b.raw[PHASE] = raw

    def add(key: str, label: str, target_ms: float | None, target_text: str) -> None:
        case = next(c for c in cases if c.key == key)
        info: dict[str, object] = raw[key]  # type: ignore[assignment]
        value = p50s[key]
        note = case.problem or f"p99 {info['p99_ms']} ms, {info['samples']} requests"
        ok = None if value is None or target_ms is None else value <= target_ms
        b.figure(Figure(f"{key}_p50", f"{case.label} p50", value, "ms", target_text, ok, note))

    add("query_bot_30d", "", 15, "≤ 15 ms")
    base = p50s["query_bot_30d"]
    add(
        "query_bot_1y",
        "",
        2 * base if base else None,
        f"≤ 2x 30-day ({2 * base:.1f} ms)" if base else "≤ 2x 30-day",
    )
    add(
        "query_bot_30d_sharded",
        "",
        2 * base if base else None,
        f"≤ 2x unsharded 30-day ({2 * base:.1f} ms)" if base else "≤ 2x unsharded 30-day",
    )
    add("query_bot_30d_aligned", "", None, "figure (against VictoriaMetrics: peers phase)")
    for key in ("query_bot_30d", "query_bot_30d_aligned"):
        service, own = p50s[key], engine.get(key)
        ratio = round(service / own.total_ms, 2) if service and own and own.total_ms else None
        label = next(c.label for c in cases if c.key == key)
        b.figure(Figure(
            f"{key}_engine_ratio", f"{label}: service p50 / engine time of its statements", ratio, "x",
            "≤ 1.15x", None if ratio is None else ratio <= 1.15,
            f"engine {own.total_ms} ms ({len(own.statements_ms)} statements in the service's rounds, a "
            f"round's side by side, each {own.statements_ms} ms: {sum(own.statements_ms):.1f} ms of engine "
            f"work), service p50 {service} ms" if own else "no engine time",
        ))  # fmt: skip
    add("query_uptime_2w", "", 15, "≤ 15 ms")
    add("query_bots_page", "", 20, "≤ 20 ms")
    # The dashboard's figures stand beside the API's own 30-day p50 (no target of their own).
    api_text = f"figure; API 30 d p50 {base} ms" if base else "figure"
    add("query_dashboard_bot_30d", "", None, api_text)
    add("query_dashboard_data_30d", "", None, api_text)
    add("query_badge", "", None, "figure (cached per BOTPULSE_PUBLIC_CACHE_S)")
