"""Phase 5: botpulse beside two time-series databases doing the same work, as ratios taken in the
same phase (so both sides of each ratio share the machine's state).

- Reads: the 30-day, 90-bucket `GET /v1/bot/{id}?returnStats=true` against VictoriaMetrics
  `query_range` (`last_over_time` / `avg_over_time` of the eight stats, step = range / 90) and
  InfluxDB 1.x `SELECT last(…), mean(…) … GROUP BY time(range / 90)`, over the same bots' history:
  botpulse's own rows, exported from its `bot_stats` after seeding, are what the peers load. Two
  ranges: hour-aligned ending now (the end of the current hour) and one aligned to nothing. One
  request at a time on a keep-alive connection, with the query phase's client loop; before the
  timings count, each peer's answer for one bot is compared with botpulse's, bucket by bucket,
  and a ratio is only reported when they agree.
- Ingest: InfluxDB `/write`, one line per request carrying the gateway body's eight numbers,
  at peak with the gateway phase's load generator, paired with `botpulse gateway` run by the
  same code as the gateway phase; 1 and 2 processes (InfluxDB with `GOMAXPROCS` = processes).

The peers are Debian's `victoria-metrics` and `influxdb` packages, found on PATH or in /usr/bin;
never a dependency of botpulse. Each runs on 127.0.0.1 on free ports with its data in the run's
work directory, as a child that dies with the bench (`Service`). A peer that is not installed is
reported as skipped, and its figures carry no value.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from botpulse.bench import gateway
from botpulse.bench.context import REPO, STATS_BODY, Bench, Figure, port
from botpulse.bench.engine_reads import EngineCase, Floor
from botpulse.bench.loadgen import percentile
from botpulse.bench.procs import Service
from botpulse.bench.query import Case, _measure
from botpulse.bench.seed import DAY_MS, History, Seeded, Spec
from botpulse.runtime.embedded import EmbeddedRedis
from botpulse.schemas.stats import AVG_FIELDS, LAST_FIELDS, STATS_FIELDS

PHASE = "peers"
HOUR_MS = 3_600_000
POINTS = 90
VM, INFLUX = "victoria-metrics", "influxd"
NAMES = {VM: "VictoriaMetrics", INFLUX: "InfluxDB"}
SKIPPED = "skipped: install Debian's victoria-metrics / influxdb (apt-get install victoria-metrics influxdb)"
# The same request as the query phase's 30-day read.
STATS_URL = "/v1/bot/{}?returnStats=true&dataPoints={}&start={}&end={}"
# Answers agree when every value is within this relative distance (means summed in another order).
TOLERANCE = 1e-9
MEASUREMENT = "bot_stats"


def locate(search: str | None = None) -> dict[str, str]:
    """The peers' executables that are installed: name -> path (PATH, then /usr/bin)."""
    path = search if search is not None else os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin"])
    return {name: exe for name in (VM, INFLUX) if (exe := shutil.which(name, path=path))}


# --- the data, in each peer's shape ------------------------------------------------------------
_INTEGER = {f.column for f in STATS_FIELDS if "Int" in f.clickhouse_type}


def _fields(values: Iterator[tuple[str, str]]) -> str:
    """Line-protocol fields: the UInt columns as integers (`1234i`), the others as floats."""
    return ",".join(f"{c}={v}i" if c in _INTEGER else f"{c}={v}" for c, v in values if v != "")


# One InfluxDB line per request: the gateway benchmark body's eight numbers, `{bot}` filled in by
# the load generator; no timestamp, so the server stamps it on receipt as the gateway does.
_BODY = json.loads(STATS_BODY)
INGEST_LINE = f"{MEASUREMENT},bot={{bot}} " + _fields((f.column, str(_BODY[f.api])) for f in STATS_FIELDS)
INGEST_PATH = "/write?db=ingest"
VM_CSV_FORMAT = "1:label:bot,2:time:unix_ms," + ",".join(
    f"{i}:metric:{f.column}" for i, f in enumerate(STATS_FIELDS, start=3)
)


def _csv_chunks(path: Path, lines: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    with path.open() as f:
        for line in f:
            chunk.append(line)
            if len(chunk) == lines:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _http(url: str, data: bytes | None = None, timeout: float = 300) -> bytes:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{url[:120]} answered {exc.code}: {exc.read()[:300]!r}") from exc


def _load_vm(base: str, csv_path: Path) -> None:
    # The export has no empty fields: the seeded history gives every stats column a value
    # (seed.py's _SYNTHETIC); VictoriaMetrics' CSV import would skip a whole line with one.
    url = f"{base}/api/v1/import/csv?format={urllib.parse.quote(VM_CSV_FORMAT)}"
    for chunk in _csv_chunks(csv_path, 50_000):
        _http(url, "".join(chunk).encode())
    # Imported rows become searchable about a second later; this makes it now.
    _http(f"{base}/internal/force_flush")


def _influx_command(base: str, statement: str) -> None:
    _http(f"{base}/query", urllib.parse.urlencode({"q": statement}).encode())


def _load_influx(base: str, csv_path: Path) -> None:
    _influx_command(base, "CREATE DATABASE history")
    columns = [f.column for f in STATS_FIELDS]
    for chunk in _csv_chunks(csv_path, 5_000):  # InfluxDB's advised batch size
        lines = []
        for row in chunk:
            bot, ts, *values = row.rstrip("\n").split(",")
            lines.append(f"{MEASUREMENT},bot={bot} {_fields(zip(columns, values, strict=True))} {ts}")
        _http(f"{base}/write?db=history&precision=ms", "\n".join(lines).encode())


# --- servers -----------------------------------------------------------------------------------
def _peer_env(gomaxprocs: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOTPULSE_", "GOMAXPROCS"))}
    if gomaxprocs:
        env["GOMAXPROCS"] = str(gomaxprocs)
    return env


def _start_vm(b: Bench, exe: str, tag: str) -> tuple[Service, int]:
    p = port()
    args = [
        exe, f"-httpListenAddr=127.0.0.1:{p}", f"-storageDataPath={b.phase_dir(PHASE) / f'vm-{tag}'}",
        "-retentionPeriod=100y", "-loggerLevel=WARN",
        # Without this the newest 30 s are held back from query_range, and a range ending now
        # would lose its last bucket's newest posts, which botpulse serves.
        "-search.latencyOffset=0s",
    ]  # fmt: skip
    svc = Service(f"victoria-metrics-{tag}", args, _peer_env(), b.phase_dir(PHASE)).start()
    svc.wait_http(f"http://127.0.0.1:{p}/health", timeout=60)
    return svc, p


def _influx_config(data: Path, http_port: int, rpc_port: int) -> str:
    # Every listener on 127.0.0.1 and a free port; no usage reporting, no self-monitoring
    # database, no continuous queries, no request log: InfluxDB does only the bench's work.
    # The WAL settings stay InfluxDB's defaults (it syncs before answering a write).
    return f"""\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{data / "meta"}"
  logging-enabled = false
[data]
  dir = "{data / "data"}"
  wal-dir = "{data / "wal"}"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
  pprof-enabled = false
[continuous_queries]
  enabled = false
[subscriber]
  enabled = false
[logging]
  level = "warn"
  suppress-logo = true
"""


def _start_influx(b: Bench, exe: str, tag: str, gomaxprocs: int | None = None) -> tuple[Service, int]:
    p = port()
    data = b.phase_dir(PHASE) / f"influxdb-{tag}"
    data.mkdir(parents=True, exist_ok=True)
    config = data / "influxdb.conf"
    config.write_text(_influx_config(data, p, port()))
    args = [exe, "run", "-config", str(config)]
    svc = Service(f"influxdb-{tag}", args, _peer_env(gomaxprocs), b.phase_dir(PHASE)).start()
    svc.wait_http(f"http://127.0.0.1:{p}/ping", timeout=60)
    return svc, p


# --- the reads ---------------------------------------------------------------------------------
class Span(msgspec.Struct, frozen=True):
    key: str
    label: str
    start: int
    end: int

    @property
    def step(self) -> int:
        return (self.end - self.start) // POINTS


# The two ranges every read of the phase asks, by key (figure keys and labels).
SPAN_LABELS = {"aligned": "hour-aligned, ending now", "any": "any range"}


def spans(seeded: Seeded, days: int) -> list[Span]:
    """The two ranges, each `days` long give or take, split into 90 whole-ms buckets."""
    end = -(-seeded.end_ms // HOUR_MS) * HOUR_MS  # the end of the hour that holds now
    odd_end = seeded.end_ms - 1_234_567  # on no minute
    return [
        Span("aligned", SPAN_LABELS["aligned"], end - days * DAY_MS, end),
        # The extra 90 x 8,641 ms keep the bucket width a whole number of ms.
        Span("any", SPAN_LABELS["any"], odd_end - days * DAY_MS - POINTS * 8_641, odd_end),
    ]


def botpulse_url(bot: str, span: Span) -> str:
    return STATS_URL.format(bot, POINTS, span.start, span.end)


def vm_url(bot: str, span: Span) -> str:
    window = f"{span.step}ms"
    selector = '{{__name__=~"{}",bot="{}"}}'
    last = selector.format("|".join(LAST_FIELDS.values()), bot)
    avg = selector.format("|".join(AVG_FIELDS.values()), bot)
    query = (
        f"union(last_over_time({last}[{window}]) keep_metric_names, "
        f"avg_over_time({avg}[{window}]) keep_metric_names)"
    )
    # A point at t aggregates (t - step, t]; a botpulse bucket is [edge, next edge). Points one
    # ms before each next edge make the two the same on ms timestamps. nocache: every request
    # does its own work (botpulse's answer cache is off too) and start/end are not moved to
    # multiples of the step.
    params = {
        "query": query,
        "start": f"{(span.start + span.step - 1) / 1000:.3f}",
        "end": f"{(span.end - 1) / 1000:.3f}",
        "step": window,
        "nocache": "1",
    }
    return "/api/v1/query_range?" + urllib.parse.urlencode(params)


def influx_url(bot: str, span: Span) -> str:
    # Identifiers quoted: `users` is an InfluxQL keyword.
    select = ", ".join(
        [f'last("{c}") AS "{c}"' for c in LAST_FIELDS.values()]
        + [f'mean("{c}") AS "{c}"' for c in AVG_FIELDS.values()]
    )
    # GROUP BY time(step, offset): buckets start at offset + k * step, so one starts at `start`.
    statement = (
        f"SELECT {select} FROM {MEASUREMENT} WHERE bot = '{bot}' "
        f"AND time >= {span.start}ms AND time < {span.end}ms "
        f"GROUP BY time({span.step}ms, {span.start % span.step}ms)"
    )
    return "/query?" + urllib.parse.urlencode({"db": "history", "epoch": "ms", "q": statement})


URLS = {"botpulse": botpulse_url, VM: vm_url, INFLUX: influx_url}
CHECKS = {"botpulse": "stats", VM: "result", INFLUX: "series"}
Buckets = dict[int, dict[str, float | None]]


def buckets_of(system: str, body: bytes, span: Span) -> Buckets:
    """An answer as bucket index -> column -> value (a bucket without posts: absent or None)."""
    doc = json.loads(body)
    out: Buckets = {}
    if system == "botpulse":
        for bucket in doc["stats"]:
            i = round((bucket["time"] - span.start) / span.step)
            out[i] = {f.column: bucket[f.api] for f in STATS_FIELDS}
    elif system == VM:
        first = span.start + span.step - 1
        for series in doc["data"]["result"]:
            column = series["metric"]["__name__"]
            for ts, value in series["values"]:
                i = round((round(ts * 1000) - first) / span.step)
                out.setdefault(i, {})[column] = float(value)
    else:
        for series in doc["results"][0].get("series", []):
            names = series["columns"]
            for row in series["values"]:
                i = round((row[0] - span.start) / span.step)
                out[i] = dict(zip(names[1:], row[1:], strict=True))
    return out


def compare(expected: Buckets, got: Buckets) -> dict[str, Any]:
    """Every bucket and column of botpulse's answer against a peer's."""
    compared, mismatches = 0, []
    for i in range(POINTS):
        for f in STATS_FIELDS:
            a = expected.get(i, {}).get(f.column)
            b = got.get(i, {}).get(f.column)
            if a is None and b is None:
                continue
            if a is None or b is None or abs(a - b) > TOLERANCE * max(1.0, abs(a)):
                mismatches.append({"bucket": i, "column": f.column, "botpulse": a, "peer": b})
            else:
                compared += 1
    sample = next((i for i in range(POINTS) if expected.get(i, {}).get("guilds") is not None), None)
    return {
        "values_agreeing": compared,
        "mismatches": mismatches[:5],
        "mismatch_count": len(mismatches),
        # One bucket from each side, for a reader (and the smoke test) to compare by eye.
        "sample_bucket": sample,
        "botpulse_sample": expected.get(sample) if sample is not None else None,
        "peer_sample": got.get(sample) if sample is not None else None,
    }


def _read(
    b: Bench, system: str, base: str, bots: list[str], all_spans: list[Span]
) -> tuple[dict[str, Case], dict[str, Buckets]]:
    """Time both ranges over every history bot, then fetch the first bot's answers to compare."""
    cases = {
        sp.key: Case(
            f"{system}_{sp.key}",
            sp.label,
            [URLS[system](bot, sp) for bot in bots],
            [{}],
            check=CHECKS[system],
        )
        for sp in all_spans
    }
    asyncio.run(_measure(base, list(cases.values()), b.sizes.query_requests))
    answers = {sp.key: buckets_of(system, _http(base + URLS[system](bots[0], sp)), sp) for sp in all_spans}
    return cases, answers


def _summary(case: Case) -> dict[str, Any]:
    case.latencies.sort()
    p50, p99 = percentile(case.latencies, 50), percentile(case.latencies, 99)
    return {
        "p50_ms": None if p50 is None or case.problem else round(p50 * 1000, 3),
        "p99_ms": None if p99 is None or case.problem else round(p99 * 1000, 3),
        "samples": len(case.latencies),
        "statuses": {str(k): v for k, v in case.statuses.items()},
        "problem": case.problem,
    }


# --- the phase ---------------------------------------------------------------------------------
def run(b: Bench, found: dict[str, str] | None = None) -> None:
    """`found`: the installed peers (default: `locate()`)."""
    found = locate() if found is None else found
    missing = [NAMES[n] for n in (VM, INFLUX) if n not in found]
    if missing:
        b.say(f"peers: {', '.join(missing)} {SKIPPED}")
    reads: dict[str, dict[str, dict[str, Any]]] = {}
    checks: dict[str, dict[str, dict[str, Any]]] = {}
    ingest: dict[str, gateway.Run] = {}
    # A peer that breaks leaves the other's figures standing; the phase still fails at the end.
    errors: dict[str, str] = {}
    s = b.sizes
    all_spans: list[Span] = []
    floors: dict[str, Floor] = {}
    if found:
        redis = b.redis(PHASE)
        try:
            env = b.env(PHASE, redis.url, BOTPULSE_QUERY_CACHE_S="0")
            spec = Spec(
                accounts=s.accounts,
                bots=max(s.bots, s.query_bots),
                history=[History("month", s.query_bots, s.query_days)],
            )
            b.say(f"peers: loading {s.query_bots} bots x {s.query_days} d, {spec.bots} bots in all")
            seeded = b.seed(PHASE, env, spec, timeout=900)
            bots = seeded.history["month"]
            all_spans = spans(seeded, s.query_days)
            csv_path = _export(b, env, bots)
            b.say(f"peers: {seeded.rows:,} rows exported for the peers")
            answers = _botpulse_reads(b, env, bots, all_spans, reads, checks)
            try:
                floors = _engine_floor(b, env, bots, all_spans)
            except Exception as exc:  # reported in its figures, raised below
                errors["floor"] = _failure(b, "engine floor", exc)
            for name in (VM, INFLUX):
                if name in found:
                    try:
                        _peer_reads(b, name, found[name], csv_path, bots, all_spans, reads, checks, answers)
                    except Exception as exc:  # reported in its figures, raised below
                        errors[name] = _failure(b, NAMES[name], exc)
            if INFLUX in found:
                try:
                    _ingest(b, found[INFLUX], env, b.write_targets(PHASE, seeded), redis, ingest)
                except Exception as exc:  # as above
                    errors["ingest"] = _failure(b, "InfluxDB ingest", exc)
        finally:
            b.stop_redis(redis, "redis (peers phase)")
    b.raw[PHASE] = {
        "installed": found,
        "spans": msgspec.to_builtins(all_spans),
        "reads": reads,
        "checks": checks,
        "ingest": msgspec.to_builtins(ingest),
        "influx_line": INGEST_LINE,
        "errors": errors,
        "engine_floor": msgspec.to_builtins(floors),
    }
    _figures(b, found, reads, checks, ingest, errors)
    _floor_figures(b, found, reads, checks, floors, errors)
    if errors:
        raise RuntimeError("; ".join(f"{k}: {v}" for k, v in errors.items()))


def _failure(b: Bench, what: str, exc: Exception) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    b.say(f"peers: {what} FAILED: {text}")
    return text


def _export(b: Bench, env: dict[str, str], bots: list[str]) -> Path:
    out = b.phase_dir(PHASE) / "history.csv"
    args = [sys.executable, "-m", "botpulse.bench.seed", "--export", ",".join(bots), "--out", str(out)]
    done = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"exporting the history failed:\n{done.stderr[-3000:]}")
    return out


# botpulse's reads as it runs by default (bots' answers from memory, query/memory.py), and from
# the tables (the memory off), each by its own service over the same data.
TABLES = "botpulse_tables"


def _botpulse_reads(
    b: Bench,
    env: dict[str, str],
    bots: list[str],
    all_spans: list[Span],
    reads: dict[str, Any],
    checks: dict[str, Any],
) -> dict[str, Buckets]:
    answers: dict[str, dict[str, Buckets]] = {}
    for name, extra in (("botpulse", {}), (TABLES, {"BOTPULSE_QUERY_MEMORY_HOURS": "0"})):
        qport = port()
        svc = b.service("query", PHASE, ["-m", "botpulse", "query", "--port", str(qport)], {**env, **extra})
        try:
            svc.wait_http(f"http://127.0.0.1:{qport}/healthz", timeout=90)
            cases, answers[name] = _read(b, "botpulse", f"http://127.0.0.1:{qport}", bots, all_spans)
        finally:
            svc.stop()
        reads[name] = {k: _summary(c) for k, c in cases.items()}
        b.say(f"peers: {name} {_line(reads[name])}")
    mine, tables = answers["botpulse"], answers[TABLES]
    checks[TABLES] = {sp.key: compare(tables[sp.key], mine[sp.key]) for sp in all_spans}
    return mine


def _engine_floor(b: Bench, env: dict[str, str], bots: list[str], all_spans: list[Span]) -> dict[str, Floor]:
    """The engine's floor on this phase's data (bench/engine_reads.py `Floor`: one statement, and
    one statement reading one table for the bot), after the service has stopped (one engine per
    path)."""
    out = b.phase_dir(PHASE) / "floor.json"
    cases = [EngineCase(sp.key, bots, sp.start, sp.end, POINTS) for sp in all_spans]
    args = ["--floor", "--cases", msgspec.json.encode(cases).decode(), "--out", str(out)]
    b.child("engine floor (peers phase)", env, "botpulse.bench.engine_reads", args, timeout=300)
    floors = {f.key: f for f in msgspec.json.decode(out.read_bytes(), type=list[Floor])}
    for f in floors.values():
        b.say(f"peers: engine floor, {f.key}: one statement {f.statement_ms} ms, one table {f.table_ms} ms")
    return floors


def _floor_figures(
    b: Bench,
    found: dict[str, str],
    reads: dict[str, Any],
    checks: dict[str, Any],
    floors: dict[str, Floor],
    errors: dict[str, str],
) -> None:
    """The engine's floor against VictoriaMetrics' whole answer, same phase (docs/benchmarks.md
    *The engine's floor*); as the read ratios, only when the answers agreed."""
    for key, label in SPAN_LABELS.items():
        f, theirs = floors.get(key), reads.get(VM, {}).get(key)
        check = checks.get(VM, {}).get(key)
        ratio = None
        if VM not in found:
            why = SKIPPED
        elif "floor" in errors or VM in errors:
            why = f"failed: {errors.get('floor') or errors[VM]}"
        elif f is None or theirs is None or not theirs["p50_ms"] or theirs["problem"]:
            why = theirs["problem"] if theirs and theirs["problem"] else "not measured in this run"
        elif not check or check["mismatch_count"] or not check["values_agreeing"]:
            why = "not given: VictoriaMetrics' answer differs from botpulse's"
        else:
            ratio = round(f.table_ms / theirs["p50_ms"], 2)
            target = READ_TARGETS[(VM, key)]
            why = (
                f"one statement reading one table for the bot (the count() of its {f.rows} hourly rows over "
                f"the range) {f.table_ms} ms, SELECT 1 {f.statement_ms} ms, VictoriaMetrics' whole answer "
                f"p50 {theirs['p50_ms']} ms; "
                + (
                    f"above the {target:g}x target: a plan that reads a table of this engine on each answer "
                    "cannot go much below it"
                    if ratio > target
                    else f"within the {target:g}x target"
                )
            )
        b.figure(Figure(f"peer_floor_{VM}_{key}", f"engine floor / VictoriaMetrics read, {label} (p50)",
                        ratio, "x", note=why))  # fmt: skip


def _peer_reads(
    b: Bench,
    name: str,
    exe: str,
    csv_path: Path,
    bots: list[str],
    all_spans: list[Span],
    reads: dict[str, Any],
    checks: dict[str, Any],
    expected: dict[str, Buckets],
) -> None:
    svc, p = (_start_vm if name == VM else _start_influx)(b, exe, "reads")
    base = f"http://127.0.0.1:{p}"
    try:
        started = time.monotonic()
        (_load_vm if name == VM else _load_influx)(base, csv_path)
        b.say(f"peers: {NAMES[name]} loaded in {time.monotonic() - started:.1f} s")
        cases, answers = _read(b, name, base, bots, all_spans)
        b.note_rss(f"{NAMES[name]} (reads)", svc)
    finally:
        svc.stop()
    reads[name] = {k: _summary(c) for k, c in cases.items()}
    checks[name] = {sp.key: compare(expected[sp.key], answers[sp.key]) for sp in all_spans}
    agree = {k: "agree" if not c["mismatch_count"] else "DIFFER" for k, c in checks[name].items()}
    b.say(f"peers: {NAMES[name]} {_line(reads[name])}; answers vs botpulse: {agree}")


def _line(summaries: dict[str, dict[str, Any]]) -> str:
    return ", ".join(
        f"{k} p50 {v['p50_ms']} ms p99 {v['p99_ms']} ms {v['problem']}" for k, v in summaries.items()
    )


def _ingest(
    b: Bench,
    exe: str,
    env: dict[str, str],
    targets: tuple[Path, Path],
    redis: EmbeddedRedis,
    runs: dict[str, gateway.Run],
) -> None:
    """Peak pairs as in the gateway phase: alternating, the best of each side counts."""
    for workers in b.sizes.gateway_processes:
        for attempt in range(b.sizes.repeats):
            for kind in ("influxdb", "gateway"):
                if kind == "gateway":
                    run = gateway._measure(b, "gateway", workers, env, targets, redis, phase=PHASE)
                else:
                    run = _influx_peak(b, exe, workers, targets, f"{workers}p-try{attempt + 1}")
                runs[f"{kind}_{workers}p_try{attempt + 1}"] = run
                best = runs.get(f"{kind}_{workers}p")
                if best is None or run.result.rps > best.result.rps:
                    runs[f"{kind}_{workers}p"] = run


def _influx_peak(b: Bench, exe: str, workers: int, targets: tuple[Path, Path], tag: str) -> gateway.Run:
    # A fresh server each run (as the gateway's stream is emptied before each), GOMAXPROCS as
    # the gateway's process count: the same number of cores to use.
    svc, p = _start_influx(b, exe, f"ingest-{tag}", gomaxprocs=workers)
    try:
        _influx_command(f"http://127.0.0.1:{p}", "CREATE DATABASE ingest")
        started, cpu = time.monotonic(), svc.cpu()
        result = b.load(PHASE, p, targets, path=INGEST_PATH, body=INGEST_LINE)
        cores = round((svc.cpu() - cpu) / (time.monotonic() - started), 2)
        b.note_rss(f"InfluxDB (ingest {workers}p)", svc)
    finally:
        svc.stop()
    b.say(
        f"peers: InfluxDB /write GOMAXPROCS={workers} {result.rps:.0f} req/s p50 {result.p50_ms} ms "
        f"p99 {result.p99_ms} ms statuses {result.statuses}, cores busy {cores}"
    )
    return gateway.Run(1, result, cores)


# --- figures -----------------------------------------------------------------------------------
READ_TARGETS = {(VM, "aligned"): 1.0, (VM, "any"): 2.0}  # botpulse / VictoriaMetrics p50


def _figures(
    b: Bench,
    found: dict[str, str],
    reads: dict[str, Any],
    checks: dict[str, Any],
    ingest: dict[str, gateway.Run],
    errors: dict[str, str],
) -> None:
    s = b.sizes
    for name, what in ((VM, "query_range"), (INFLUX, "SELECT … GROUP BY time")):
        peer = NAMES[name]
        for key, range_label in SPAN_LABELS.items():
            target = READ_TARGETS.get((name, key))
            target_text = f"≤ {target:.1f}x" if target else ""
            if name not in found or name in errors:
                why = SKIPPED if name not in found else f"failed: {errors[name]}"
                b.figure(Figure(f"peer_{name}_{key}_p50", f"{peer} {what} {s.query_days} d, 90 buckets, "
                                f"{range_label} p50", None, "ms", note=why))  # fmt: skip
                b.figure(Figure(f"peer_ratio_{name}_{key}", f"botpulse / {peer} read, {range_label} (p50)",
                                None, "x", target_text, None, why))  # fmt: skip
                continue
            mine, theirs, check = reads["botpulse"][key], reads[name][key], checks[name][key]
            agree = not check["mismatch_count"] and check["values_agreeing"] > 0
            answer = (
                f"answers agree on {check['values_agreeing']} values"
                if agree
                else f"answers DIFFER from botpulse's ({check['mismatch_count']} values, "
                f"e.g. {check['mismatches'][:1]})"
            )
            note = theirs["problem"] or f"p99 {theirs['p99_ms']} ms, {theirs['samples']} requests; {answer}"
            b.figure(Figure(f"peer_{name}_{key}_p50", f"{peer} {what} {s.query_days} d, 90 buckets, "
                            f"{range_label} p50", theirs["p50_ms"], "ms", note=note))  # fmt: skip
            ratio = None
            if agree and mine["p50_ms"] and theirs["p50_ms"]:
                ratio = round(mine["p50_ms"] / theirs["p50_ms"], 2)
            note = (
                f"botpulse p50 {mine['p50_ms']} ms (p99 {mine['p99_ms']}), {peer} p50 {theirs['p50_ms']} ms "
                f"(p99 {theirs['p99_ms']}), same phase" + ("" if agree else f"; {answer}")
            )
            tables = reads.get(TABLES, {}).get(key)
            if tables and tables["p50_ms"] and theirs["p50_ms"]:
                same = checks.get(TABLES, {}).get(key) or {}
                alike = same.get("values_agreeing") and not same.get("mismatch_count")
                note += (
                    f"; from the tables (BOTPULSE_QUERY_MEMORY_HOURS=0) p50 {tables['p50_ms']} ms, "
                    f"{tables['p50_ms'] / theirs['p50_ms']:.2f}x, answers "
                    + ("the same" if alike else "DIFFER")
                )
            ok = None if ratio is None or target is None else ratio <= target
            b.figure(Figure(f"peer_ratio_{name}_{key}", f"botpulse / {peer} read, {range_label} (p50)",
                            ratio, "x", target_text, ok, mine["problem"] or note))  # fmt: skip
    for workers in s.gateway_processes:
        n = f"{workers} process" + ("es" if workers > 1 else "")
        influx, gw = ingest.get(f"influxdb_{workers}p"), ingest.get(f"gateway_{workers}p")
        if influx is None or gw is None:
            why = f"failed: {errors['ingest']}" if "ingest" in errors else SKIPPED
            b.figure(Figure(f"peer_influx_writes_{workers}p", f"InfluxDB /write req/s, one line each, {n}",
                            None, "req/s", note=why))  # fmt: skip
            b.figure(Figure(f"peer_ratio_ingest_{workers}p", f"gateway / InfluxDB writes per s, {n}",
                            None, "x", note=why))  # fmt: skip
            continue
        notes = [
            f"p50 {influx.result.p50_ms} ms, p99 {influx.result.p99_ms} ms; cores busy {influx.server_cores}"
        ]
        if influx.rejected:
            notes.append(f"{influx.rejected} answers were not 204 (statuses {influx.result.statuses})")
        if influx.server_cores is not None and influx.server_cores < 0.8 * workers:
            notes.append(
                f"InfluxDB got only {influx.server_cores} of {workers} core(s): the machine was shared"
            )
        b.figure(Figure(f"peer_influx_writes_{workers}p", f"InfluxDB /write req/s, one line each, {n}",
                        influx.result.rps, "req/s", note="; ".join(notes)))  # fmt: skip
        ratio = (
            round(gw.result.rps / influx.result.rps, 3) if influx.result.rps and not influx.rejected else None
        )
        note = (
            f"gateway {gw.result.rps:.0f}/s (p99 {gw.result.p99_ms} ms), InfluxDB {influx.result.rps:.0f}/s "
            f"(p99 {influx.result.p99_ms} ms); cores busy: gateway {gw.server_cores}, its redis "
            f"{gw.redis_cores}, InfluxDB {influx.server_cores}"
        )
        if gw.rejected:
            note += f"; {gw.rejected} gateway answers were not 204"
        b.figure(Figure(f"peer_ratio_ingest_{workers}p", f"gateway / InfluxDB writes per s, {n}",
                        ratio, "x", note=note))  # fmt: skip
