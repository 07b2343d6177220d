"""Phase 1: the gateway's full `POST /v1/bot/{id}` path against a bare aiohttp 204 handler,
same process model, same load, same run; 1 and 2 processes; p99 at 70% of the peak rate;
a profile of the hot path (py-spy, else pyinstrument)."""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Any

import msgspec
import redis as redis_sync

from botpulse.bench import scrape, spy
from botpulse.bench.context import PACED_CONNECTIONS, RAISED_LIMITS, Bench, Figure, port
from botpulse.bench.loadgen import Result
from botpulse.bench.procs import Service, cpu_seconds
from botpulse.bench.seed import Spec
from botpulse.runtime.embedded import EmbeddedRedis
from botpulse.runtime.settings import load_settings
from botpulse.schemas.stream import stream_key

PHASE = "gateway"
ROUTE = "/v1/bot/{botId}"
# Read off the gateway's own metrics path around the paced run (ingest/metrics.py): key ->
# (histogram, scale, unit, what one observation is). The appender's are per write, not per post.
INSIDE = {
    "posts_per_write": ("botpulse_gateway_append_posts", 1.0, "", "writes"),
    "oldest_wait_ms": ("botpulse_gateway_append_wait_seconds", 1000.0, " ms", "writes"),
    "redis_round_trip_ms": ("botpulse_gateway_redis_duration_seconds", 1000.0, " ms", "writes"),
    "request_ms": ("botpulse_gateway_request_duration_seconds", 1000.0, " ms", "posts"),
    "loop_lag_ms": ("botpulse_gateway_event_loop_lag_seconds", 1000.0, " ms", "probes"),
}
P99_VS_BARE_TARGET = 3.0


class Run(msgspec.Struct):
    """One load run against one server, with how many of its processes were running."""

    processes_alive: int
    result: Result
    # Cores kept busy during the load (CPU seconds per wall second, warm-up included): where the
    # machine's time went, server against the Redis it appends to.
    server_cores: float | None = None
    redis_cores: float | None = None
    # Inside the gateway during a paced run (`INSIDE`'s keys): each a `scrape.summary`, plus its
    # one-line `text`.
    inside: dict[str, Any] | None = None
    # From the Redis's `INFO commandstats` over the run (warm-up included, like the posts they are
    # divided by): every command it ran per accepted post, and posts per append-script call.
    redis_commands_per_post: float | None = None
    posts_per_call: float | None = None

    @property
    def rejected(self) -> int:
        ok = sum(n for status, n in self.result.statuses.items() if status in ("204", "2xx/3xx"))
        return self.result.requests - ok


def _start(
    b: Bench,
    kind: str,
    workers: int,
    env: dict[str, str],
    profile: bool = False,
    tag: str = "",
    phase: str = PHASE,
) -> tuple[Service, int]:
    p = port()
    if kind == "baseline":
        args = ["-m", "botpulse.bench.baseline", "--port", str(p), "--workers", str(workers)]
    else:
        args = ["-m", "botpulse", "gateway", "--port", str(p), "--workers", str(workers)]
    svc = b.service(f"{kind}-{workers}p{tag}", phase, args, env, profile="gateway" if profile else None)
    svc.wait_http(f"http://127.0.0.1:{p}/healthz", timeout=60)
    time.sleep(0.5 + 0.5 * workers)  # forked processes bind after the first one answers
    return svc, p


def run(b: Bench) -> None:
    s = b.sizes
    redis = b.redis(PHASE)
    try:
        env = b.env(PHASE, redis.url)
        b.say(f"gateway: seeding {s.accounts} accounts, {s.bots} bots")
        seeded = b.seed(PHASE, env, Spec(accounts=s.accounts, bots=s.bots))
        targets = b.write_targets(PHASE, seeded)
        runs: dict[str, Run] = {}
        for workers in s.gateway_processes:
            # Pairs alternate, and the best of each side counts: on a shared machine other
            # tenants only ever slow a run down, so the best run is the least disturbed one.
            for attempt in range(s.repeats):
                for kind in ("baseline", "gateway"):
                    run = _measure(b, kind, workers, env, targets, redis)
                    runs[f"{kind}_{workers}p_try{attempt + 1}"] = run
                    best = runs.get(f"{kind}_{workers}p")
                    if best is None or run.result.rps > best.result.rps:
                        runs[f"{kind}_{workers}p"] = run
        # p99 at 70% of the single-process peak, at a fixed rate. Only the built-in generator
        # paces (wrk cannot), and it shares the machine's cores with the gateway and Redis at a
        # higher CPU cost per request than wrk: the peak it paces against is measured with that
        # same generator, or "70%" of a wrk peak can be more than the machine can serve with it.
        connections = PACED_CONNECTIONS if s.mode != "tiny" else None
        peak = runs["gateway_1p"].result.rps
        if peak > 0 and b.use_wrk(False):
            run = _measure(b, "gateway", 1, env, targets, redis, builtin=True, connections=connections)
            runs["gateway_1p_builtin_peak"] = run
            peak = run.result.rps
        if peak > 0:
            _paced_pairs(b, runs, env, targets, redis, round(0.7 * peak, 1), connections)
        if s.profile:
            profile_gateway(b, env, targets)
        b.raw[PHASE] = {
            "runs": msgspec.to_builtins(runs),
            "raised_limits": RAISED_LIMITS,
            "bots": s.bots,
            "accounts": s.accounts,
        }
        _figures(b, runs)
    finally:
        b.stop_redis(redis, "redis (gateway phase)")


def _paced_pairs(
    b: Bench,
    runs: dict[str, Run],
    env: dict[str, str],
    targets: tuple[Path, Path],
    redis: EmbeddedRedis,
    rate: float,
    connections: int | None,
) -> None:
    """The gateway and the bare handler at the same fixed rate, same generator, alternating
    `repeats` times. The bare handler's tail is what the machine (the generator and the server
    sharing its cores, other tenants) adds to any server's. The lowest p99 of each side counts,
    like the best peak: a disturbance only ever lengthens a tail, and one landing in a single
    run (a p99 of hundreds of ms, on either side, has been seen on a quiet 2-core VM) would
    otherwise decide the ratio. Every try is kept in the raw results."""
    for attempt in range(b.sizes.repeats):
        _empty_streams(redis, env)
        label = "gateway (1p)" if attempt == 0 else None
        paced, inside = _paced(b, "gateway", env, targets, rate, connections, rss_label=label)
        _keep_best(runs, "gateway_1p_70pct", attempt, Run(1, paced, inside=inside))
        b.say(f"gateway: 70% of peak ({rate:.0f}/s) p99 {paced.p99_ms} ms{_lateness(paced)}")
        for key in INSIDE:
            if inside and key in inside:
                b.say(f"gateway: 70% of peak, {key.replace('_', ' ')}: {inside[key]['text']}")
        base, _ = _paced(b, "baseline", env, targets, rate, connections)
        _keep_best(runs, "baseline_1p_70pct", attempt, Run(1, base))
        b.say(f"gateway: bare handler at the same rate p99 {base.p99_ms} ms{_lateness(base)}")


def _keep_best(runs: dict[str, Run], key: str, attempt: int, run: Run) -> None:
    """Keep the try with the lowest p99 among the sound ones: every send answered 204 and, for
    the bare handler, not held back (`baseline_held_back`); an unsound try wins only over
    another unsound one (a fast refusal or a disturbed baseline must not decide the ratio)."""
    runs[f"{key}_try{attempt + 1}"] = run
    best = runs.get(key)
    bare = key.startswith("baseline")
    if best is None or _rank(run, bare) < _rank(best, bare):
        runs[key] = run


def _rank(run: Run, bare: bool) -> tuple[bool, float]:
    r = run.result
    unsound = bool(run.rejected or r.errors or r.missed or (bare and baseline_held_back(r) is not None))
    return unsound, r.p99_ms if r.p99_ms is not None else math.inf


def _lateness(result: Result) -> str:
    if result.send_late_p99_ms is None:
        return ""
    return f" (sends went out late by p99 {result.send_late_p99_ms} ms, max {result.send_late_max_ms} ms)"


def _paced(
    b: Bench,
    kind: str,
    env: dict[str, str],
    targets: tuple[Path, Path],
    rate: float,
    connections: int | None,
    *,
    rss_label: str | None = None,
) -> tuple[Result, dict[str, Any] | None]:
    """One single-process `kind` server under the built-in generator at a fixed rate; for the
    gateway, also what its metrics saw meanwhile (`inside`: warm-up included, paced alike)."""
    svc, p = _start(b, kind, 1, env, tag="-paced")
    metrics_url = f"http://127.0.0.1:{p}{load_settings(env).metrics_path}"
    try:
        before = inside_of(metrics_url) if kind == "gateway" else None
        result = b.load(PHASE, p, targets, rate=rate, connections=connections)
        inside = summarize_inside(inside_of(metrics_url), before) if before is not None else None
        if rss_label:
            b.note_rss(rss_label, svc)
    finally:
        svc.stop()
    return result, inside


def inside_of(metrics_url: str) -> dict[str, scrape.Histogram]:
    """`INSIDE`'s histograms as a gateway's metrics path shows them now (the post route's only)."""
    text = scrape.fetch(metrics_url)
    names = [name for key, (name, *_) in INSIDE.items() if key != "request_ms"]
    found = scrape.parse(text, names)
    found.update(scrape.parse(text, [INSIDE["request_ms"][0]], {"route": ROUTE}))
    return found


def summarize_inside(
    after: dict[str, scrape.Histogram], before: dict[str, scrape.Histogram] | None = None
) -> dict[str, Any]:
    """`INSIDE`'s histograms observed between two scrapes, as distributions (see bench/scrape.py)."""
    out: dict[str, Any] = {}
    for key, (name, scale, unit, what) in INSIDE.items():
        if name in after:
            h = after[name].minus((before or {}).get(name))
            out[key] = {**scrape.summary(h, scale), "text": scrape.describe(h, unit, scale, what)}
    return out


def _measure(
    b: Bench,
    kind: str,
    workers: int,
    env: dict[str, str],
    targets: tuple[Path, Path],
    redis: EmbeddedRedis,
    *,
    builtin: bool = False,
    connections: int | None = None,
    phase: str = PHASE,
) -> Run:
    """One peak run; `phase`: whose directory holds the logs (the peers phase pairs runs too)."""
    _empty_streams(redis, env)
    svc, p = _start(b, kind, workers, env, tag="-builtin" if builtin else "", phase=phase)
    try:
        started, cpu, redis_cpu, calls = time.monotonic(), svc.cpu(), _cpu(redis), _calls(redis)
        result = b.load(phase, p, targets, builtin=builtin, connections=connections)
        wall = time.monotonic() - started
        server_cores = round((svc.cpu() - cpu) / wall, 2)
        redis_cores = round((_cpu(redis) - redis_cpu) / wall, 2)
        commands, scripts = (after - before for after, before in zip(_calls(redis), calls, strict=True))
        alive = len(svc.processes())
        b.note_rss(f"{kind} ({workers}p)", svc)
    finally:
        svc.stop()
    # Warm-up included: the command counts are.
    answers = (*result.statuses.items(), *result.warmup_statuses.items())
    ok = sum(n for status, n in answers if status in ("204", "2xx/3xx"))
    per_post = round(commands / ok, 3) if ok and kind == "gateway" else None
    per_call = round(ok / scripts, 1) if scripts and kind == "gateway" else None
    b.say(
        f"{phase}: {kind} {workers}p{' (built-in generator)' if builtin else ''} {result.rps:.0f} req/s "
        f"p50 {result.p50_ms} ms "
        f"p99 {result.p99_ms} ms statuses {result.statuses} alive {alive}/{workers}, "
        f"cores busy: server {server_cores}, redis {redis_cores}"
        + (f", redis commands per post {per_post}, posts per script call {per_call}" if per_post else "")
    )
    return Run(
        alive, result, server_cores, redis_cores, redis_commands_per_post=per_post, posts_per_call=per_call
    )


def _empty_streams(redis: EmbeddedRedis, env: dict[str, str]) -> None:
    """Start every run on an empty stream. This phase has no worker, so the stream would only
    grow (over a million entries across the runs, hundreds of MiB): Redis would then spend the
    later runs in AOF rewrites of a dataset that workers keep small in service, and those
    runs would measure that. The registry and the rate state are kept."""
    settings = load_settings(env, redis_url=redis.url)
    client = redis_sync.Redis.from_url(redis.url)
    try:
        client.unlink(*(stream_key(p) for p in range(settings.stream_partitions)))
        for _ in range(600):  # a rewrite already under way finishes first
            if not int(client.info("persistence").get("aof_rewrite_in_progress", 0)):
                break
            time.sleep(0.1)
    finally:
        client.close()


def _cpu_us(run: Run, *, with_redis: bool) -> float | None:
    if run.server_cores is None or not run.result.rps:
        return None
    cores = run.server_cores + ((run.redis_cores or 0.0) if with_redis else 0.0)
    return round(cores / run.result.rps * 1e6, 1)


def _cpu(redis: EmbeddedRedis) -> float:
    return (cpu_seconds(redis.proc.pid) or 0.0) if redis.proc else 0.0


def _calls(redis: EmbeddedRedis) -> tuple[int, int]:
    """Commands Redis has run so far, and of them append-script calls (`EVALSHA` and `EVAL`; the
    registry's and admission's own scripts are a few a second)."""
    client = redis_sync.Redis.from_url(redis.url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    calls = {name.removeprefix("cmdstat_"): int(v.get("calls", 0)) for name, v in stats.items()}
    return sum(calls.values()), calls.get("evalsha", 0) + calls.get("eval", 0)


def profile_gateway(b: Bench, env: dict[str, str], targets: tuple[Path, Path]) -> None:
    """Profile one gateway process under the same load (not counted in any figure): sampled by
    py-spy when installed (busy time only, start-up excluded), else run under pyinstrument."""
    if spy.executable() is None:
        svc, p = _start(b, "gateway", 1, env, profile=True, tag="-profiled")
        try:
            b.load(PHASE, p, targets)
        finally:
            # SIGINT: aiohttp shuts down cleanly, so pyinstrument gets to write its report.
            svc.stop(sig=signal.SIGINT, timeout=30)
        return
    svc, p = _start(b, "gateway", 1, env, tag="-profiled")
    sampler = None
    try:
        sampler = b.sample(svc, PHASE, "gateway")
        b.load(PHASE, p, targets)
    finally:
        b.end_sample(sampler, svc, PHASE, "gateway")
        svc.stop()


def _figures(b: Bench, runs: dict[str, Run]) -> None:
    for workers in b.sizes.gateway_processes:
        base, gw = runs[f"baseline_{workers}p"].result, runs[f"gateway_{workers}p"]
        notes = []
        if gw.processes_alive != workers:
            notes.append(f"only {gw.processes_alive} of {workers} gateway processes were running")
        if gw.rejected:
            notes.append(f"{gw.rejected} answers were not 204 (statuses {gw.result.statuses})")
        ratio = round(gw.result.rps / base.rps, 3) if base.rps else None
        ok = None if ratio is None else (ratio >= 0.85 and not notes)
        n = f"{workers} process" + ("es" if workers > 1 else "")
        base_cores = runs[f"baseline_{workers}p"].server_cores
        if base_cores is not None and base_cores < 0.8 * workers:
            # A saturated server keeps its cores busy; less means other work had them.
            notes.append(f"the baseline got only {base_cores} of {workers} core(s): the machine was shared")
        note = "; ".join(notes)
        b.figure(Figure(f"gateway_rps_{workers}p", f"gateway req/s, {n}", gw.result.rps, "req/s", note=note))
        b.figure(Figure(f"baseline_rps_{workers}p", f"bare aiohttp 204 req/s, {n}", base.rps, "req/s"))
        gw_run, base_run = runs[f"gateway_{workers}p"], runs[f"baseline_{workers}p"]
        # CPU per request holds up better than req/s on a shared machine: it is what each request
        # costs, whoever else wanted the cores (steady rate assumed over warm-up and measurement).
        b.figure(
            Figure(
                f"gateway_cpu_us_{workers}p",
                f"CPU per request, gateway + its Redis, {n}",
                _cpu_us(gw_run, with_redis=True),
                "us",
                note=f"baseline {_cpu_us(base_run, with_redis=False)} us; cores busy: gateway "
                f"{gw_run.server_cores}, redis {gw_run.redis_cores}, baseline {base_run.server_cores}; "
                f"redis commands per post {gw_run.redis_commands_per_post}, posts per script call "
                f"{gw_run.posts_per_call}",
            )
        )
        b.figure(
            Figure(f"gateway_ratio_{workers}p", f"gateway / baseline, {n}", ratio, "x", "≥ 0.85", ok, note)
        )
        for q in ("p50", "p99"):
            b.figure(
                Figure(
                    f"gateway_{q}_{workers}p",
                    f"gateway {q} at peak, {n}",
                    getattr(gw.result, f"{q}_ms"),
                    "ms",
                    note=f"baseline {getattr(base, f'{q}_ms')} ms",
                )
            )
    paced = runs.get("gateway_1p_70pct")
    if paced:
        p99 = paced.result.p99_ms
        note = f"achieved {paced.result.rps}/s" + (f"; {paced.rejected} not 204" if paced.rejected else "")
        if paced.result.missed:
            note += f"; {paced.result.missed} due sends never went out (more than a window behind)"
        paced_base = runs.get("baseline_1p_70pct")
        if paced_base:
            note += f"; bare aiohttp 204 at the same rate: p99 {paced_base.result.p99_ms} ms"
        pairs = [
            (runs.get(f"gateway_1p_70pct_try{i}"), runs.get(f"baseline_1p_70pct_try{i}"))
            for i in range(1, b.sizes.repeats + 1)
        ]
        tries = [f"{gw.result.p99_ms}/{bare.result.p99_ms}" for gw, bare in pairs if gw and bare]
        if len(tries) > 1:
            note += f"; lowest of {len(tries)} tries each (gateway/bare p99 ms: {', '.join(tries)})"
        builtin_peak = runs.get("gateway_1p_builtin_peak")
        if builtin_peak:
            note += (
                f"; peak with the built-in generator {builtin_peak.result.rps:.0f}/s"
                f" (wrk: {runs['gateway_1p'].result.rps:.0f}/s)"
            )
        b.figure(
            Figure(
                "gateway_p99_70pct",
                f"gateway p99 at 70% of peak ({paced.result.rate:.0f}/s), 1 process",
                p99,
                "ms",
                "≤ 10 ms",
                None if p99 is None else (p99 <= 10 and not paced.rejected),
                note,
            )
        )
        _tail_figures(b, paced, paced_base)


def baseline_held_back(base: Result) -> str | None:
    """Why the bare handler's paced run cannot serve as the tail's baseline, or None when it can.

    At 70 % of the gateway's peak the bare handler (cheaper per request) answers well inside each
    connection's send interval when it has its core: its sends then go out on time. When the
    p99 send was held back longer than that interval, the bare handler's answers were late by
    more than a whole interval, so the machine (not the gateway) made the baseline's tail: the
    rule that a miss counts only when the baseline got its cores applies (docs/benchmarks.md)."""
    if not base.rate or base.send_late_p99_ms is None:
        return None
    interval_ms = base.connections / base.rate * 1000
    if base.send_late_p99_ms <= interval_ms:
        return None
    return (
        f"the bare handler did not keep up at this rate (its sends were held back {base.send_late_p99_ms} ms "
        f"at p99, more than a connection's {interval_ms:.1f} ms interval)"
    )


def _tail_figures(b: Bench, paced: Run, paced_base: Run | None) -> None:
    """The 70 % tail against the bare handler at the same rate, and where a post waits inside."""
    p99 = paced.result.p99_ms
    base_p99 = paced_base.result.p99_ms if paced_base else None
    ratio = round(p99 / base_p99, 2) if p99 is not None and base_p99 else None
    ok = None if ratio is None else (ratio <= P99_VS_BARE_TARGET and not paced.rejected)
    if paced_base is None:
        note = "not available: the bare handler was not paced"
    else:
        note = (
            f"gateway p99 {p99} ms, bare aiohttp 204 p99 {base_p99} ms, same rate, same generator; "
            f"sends late at p99 (the generator's delay, or an answer that held its connection's next "
            f"send): {paced.result.send_late_p99_ms} ms against {paced_base.result.send_late_p99_ms} ms"
        )
        if (why := baseline_held_back(paced_base.result)) is not None and ok:
            # A held-back baseline only lengthens the bare tail, so it can fake a pass, never a
            # miss: a miss stands, a pass is not judged.
            ok = None
            note = f"not judgeable: {why}; {note}"
        elif why is not None:
            note = f"{note}; the bare handler did not keep up either ({why}), which can only lower the ratio"
    b.figure(
        Figure(
            "gateway_p99_70pct_vs_bare",
            "gateway p99 / bare handler p99 at 70% of peak, 1 process",
            ratio,
            "x",
            f"≤ {P99_VS_BARE_TARGET:g}x",
            ok,
            note,
        )
    )
    inside = paced.inside or {}
    posts, wait = inside.get("posts_per_write"), inside.get("oldest_wait_ms")
    b.figure(
        Figure(
            "gateway_70pct_posts_per_write",
            "posts per append write at 70% of peak (mean)",
            round(posts["mean"], 2) if posts and posts["mean"] is not None else None,
            "posts",
            note=posts["text"] if posts else "not available: no append write was observed",
        )
    )
    rest = "; ".join(
        f"{label} {inside[key]['text']}"
        for key, label in (
            ("redis_round_trip_ms", "Redis round trip per write:"),
            ("request_ms", "whole post:"),
            ("loop_lag_ms", "event-loop lag:"),
        )
        if key in inside
    )
    p99_wait = wait["p99_at_most"] if wait else None
    b.figure(
        Figure(
            "gateway_70pct_oldest_wait_p99",
            "append wait of a write's oldest post at 70% of peak, p99 (bucket bound)",
            p99_wait if isinstance(p99_wait, float | int) else None,
            "ms",
            note=(f"{wait['text']}; {rest}" if wait else "not available: no append write was observed"),
        )
    )
