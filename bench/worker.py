"""Phase 2: a worker process draining a pre-filled stream of stats entries into ClickHouse.

The stream and the consumer group are created before the worker starts, so its start-up
(imports, chDB, migrations) is not counted: the clock runs from the first entry the group
hands out to the moment nothing is left unread or pending (entries are acked only after
ClickHouse confirmed the insert), and the row count in ClickHouse is read back afterwards.

Beside it, in the same run, the engine's own rate for the same rows (bench/engine_inserts.py: pre-built
10,000-row column blocks, a dedup token each, the writer's insert call and settings, the same
tables and views): the drain/engine ratio says how much of the engine's speed the worker keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import msgspec
import redis.asyncio as aioredis

from botpulse.bench.context import REPO, Bench, Figure
from botpulse.bench.engine_inserts import BLOCK_ROWS, EngineRun
from botpulse.bench.procs import Service, cpu_seconds
from botpulse.ingest.append import APPENDED, SCRIPT, SHA, Limits, Post, replies_of, result_of, script_call
from botpulse.runtime.redis import connect
from botpulse.runtime.settings import load_settings
from botpulse.schemas.stream import (
    GROUP,
    StatsPayload,
    StreamEvent,
    encode_event,
    partition_of,
    stream_key,
)

PHASE = "worker"
TARGET_ROWS_S = 100_000
# The drain against the engine's own insert rate for the same rows (bench/engine_inserts.py).
TARGET_ENGINE_RATIO = 0.8


BOTS = 1000
# Posts per append-script call, so per stream entry, that the pre-fill writes: what the gateway
# writes under load (11.6 to 13.0 posts a call at 2 gateway processes, docs/api/ingest.md, Round 3).
POSTS_PER_ENTRY = 12
# Rate limits and a backlog bound no pre-fill reaches: every post is appended.
_UNLIMITED = 1_000_000_000
_NO_LIMITS = Limits(1, _UNLIMITED, 1, _UNLIMITED)


def drain_event(i: int, base_ms: int, bots: int = BOTS) -> StreamEvent:
    """The `i`-th stats event of the drain (the engine baseline, bench/engine_inserts.py, inserts the
    rows of the same events)."""
    return StreamEvent(
        event_id=f"{i:032x}",
        received_ms=base_ms + i,
        bot_id=str(400_000_000_000_000_000 + i % bots),
        account_id="acc_bench",
        payload=StatsPayload(
            guilds=1000 + i % 977, users=50_000 + i % 10_007, shards=2, api_ping=41.5,
            ram_usage=52_428_800.0, ram_total=1_073_741_824.0, cpu=12.5, bandwidth=1000.0,
        ),
    )  # fmt: skip


class Prefilled(msgspec.Struct, frozen=True):
    events: int  # stats posts, one row each
    entries: int  # stream entries holding them (what the consumer group counts)
    seconds: float


def _fill_calls(events: int, bots: int, partitions: int, per_entry: int) -> Iterator[tuple[int, bytes]]:
    """The drain's events as the gateway's script calls of `per_entry` posts (of one partition
    each, in event order) with their post counts, made as they are sent: a million posts never
    sit in memory at once."""
    base_ms = int(time.time() * 1000) - events
    waiting: list[list[Post]] = [[] for _ in range(partitions)]
    for i in range(events):
        event = drain_event(i, base_ms, bots)
        partition = partition_of(event.bot_id, partitions)
        posts = waiting[partition]
        posts.append(
            Post(partition, event.bot_id, True, 0, (), (encode_event(event),), account_id=event.account_id,
                 account_burst=_UNLIMITED)
        )  # fmt: skip
        if len(posts) == per_entry:
            yield len(posts), script_call("EVALSHA", SHA, posts, _UNLIMITED, _NO_LIMITS)
            waiting[partition] = []
    for posts in waiting:
        if posts:
            yield len(posts), script_call("EVALSHA", SHA, posts, _UNLIMITED, _NO_LIMITS)


async def prefill(
    redis_url: str, events: int, bots: int = BOTS, per_entry: int = POSTS_PER_ENTRY
) -> Prefilled:
    """Append `events` stats posts for `bots` bots, `per_entry` posts to each append-script call:
    the gateway's own script and arguments (`ingest.append.script_call`), so the stream holds
    what a gateway appending that many posts a call writes (its `LUA_ENTRY` gathers them into
    entries; one post a call writes the bare single-event entry). Every post must be appended."""
    settings = load_settings({}, redis_url=redis_url)
    redis = connect(settings)
    started = time.monotonic()
    partitions = settings.stream_partitions
    try:
        sha = await redis.script_load(SCRIPT)
        assert sha == SHA, "the gateway's script hashes differently"
        calls = _fill_calls(events, bots, partitions, per_entry)
        # The calls written in chunks on one connection, the replies read after each chunk.
        connection = await redis.connection_pool.get_connection()
        try:
            while chunk := list(itertools.islice(calls, 500)):
                await connection.send_packed_command(b"".join(packed for _, packed in chunk))
                for posts, _ in chunk:
                    replies = replies_of(await connection.read_response(), posts)
                    refused = [r for r in replies if result_of(r) is not APPENDED]
                    if refused:
                        raise RuntimeError(f"pre-fill: the append script refused posts: {refused[:3]}")
        finally:
            await redis.connection_pool.release(connection)
        entries = 0
        for p in range(partitions):
            entries += await redis.xlen(stream_key(p))
            with contextlib.suppress(aioredis.ResponseError):  # BUSYGROUP
                await redis.xgroup_create(stream_key(p), GROUP, id="0", mkstream=True)
    finally:
        await redis.aclose()
    return Prefilled(events, entries, round(time.monotonic() - started, 2))


async def _group_state(redis: aioredis.Redis, streams: list[str]) -> tuple[int, int, bool]:
    """(entries read, pending, nothing left unread) summed over the streams."""
    read = pending = 0
    caught_up = True
    for stream in streams:
        for group in await redis.xinfo_groups(stream):
            name = group.get("name")
            if name not in (GROUP, GROUP.encode()):
                continue
            read += int(group.get("entries-read") or 0)
            pending += int(group.get("pending") or 0)
            lag = group.get("lag")
            caught_up = caught_up and lag == 0
    return read, pending, caught_up


async def watch_drain(
    redis_url: str, filled: Prefilled, bound_s: float, workers: list[Service], on_first: Callable[[], None]
) -> dict[str, object]:
    """Watch the group until every entry of `filled` is acknowledged (or the bound passes, or
    the workers died). Rows acknowledged are counted from entries (each holds the same number of
    posts but perhaps the last of a partition: the count is exact once drained)."""
    settings = load_settings({}, redis_url=redis_url)
    redis = connect(settings)
    streams = [stream_key(p) for p in range(settings.stream_partitions)]
    deadline = time.monotonic() + bound_s
    first: float | None = None
    read = pending = 0
    done = False
    try:
        while time.monotonic() < deadline:
            read, pending, caught_up = await _group_state(redis, streams)
            now = time.monotonic()
            if first is None and read > 0:
                first = now
                on_first()
            if read >= filled.entries and pending == 0 and caught_up:
                done = True
                break
            if not any(w.alive() for w in workers):
                break
            await asyncio.sleep(0.02)
    finally:
        await redis.aclose()
    elapsed = (time.monotonic() - first) if first is not None else None
    acked = max(0, read - pending)
    rows = filled.events if done else acked * filled.events // max(1, filled.entries)
    return {
        "drained": done,
        "entries": filled.entries,
        "events": filled.events,
        "acked": acked,
        "seconds": round(elapsed, 3) if elapsed else None,
        "rows_per_s": round(rows / elapsed, 1) if elapsed else None,
    }


def drain(
    b: Bench,
    label: str,
    clickhouse_url: str | None,
    processes: int,
    *,
    entries: int | None = None,
    per_entry: int = POSTS_PER_ENTRY,
    bound_s: float | None = None,
    profile: bool = False,
) -> dict[str, object]:
    """Drain `entries` stats posts (default: the sizes' `drain_entries`), pre-filled
    `per_entry` posts to a stream entry."""
    s = b.sizes
    events = entries or s.drain_entries
    phase = f"{PHASE}-{label}"
    redis = b.redis(phase)
    try:
        extra = {}
        if clickhouse_url is not None:
            extra["BOTPULSE_CLICKHOUSE_DATABASE"] = f"botpulse_bench_{os.getpid()}"
        env = b.env(phase, redis.url, clickhouse_url, **extra)
        b.say(f"worker: pre-filling {events:,} posts, {per_entry} a call ({label})")
        filled = asyncio.run(prefill(redis.url, events, per_entry=per_entry))
        workers = [
            b.service(f"worker-{i}", phase, ["-m", "botpulse", "worker"], env) for i in range(processes)
        ]
        sampler = None
        assert redis.proc is not None
        valkey_pid = redis.proc.pid
        cpu_at_first: tuple[float, float] = (0.0, 0.0)

        def started() -> None:
            nonlocal sampler, cpu_at_first
            cpu_at_first = (sum(w.cpu() for w in workers), cpu_seconds(valkey_pid) or 0.0)
            if profile:  # sample the drain, not the start-up
                sampler = b.sample(workers[0], phase, "worker")

        try:
            bound = bound_s or s.drain_timeout_s
            stats = asyncio.run(watch_drain(redis.url, filled, bound, workers, started))
            # The CPU of the drain (from the first entry handed out): the workers' and valkey's.
            worker_cpu = sum(w.cpu() for w in workers) - cpu_at_first[0]
            valkey_cpu = (cpu_seconds(valkey_pid) or 0.0) - cpu_at_first[1]
            for i, w in enumerate(workers):
                b.note_rss(f"worker ({label})" + (f" #{i + 1}" if processes > 1 else ""), w)
            if not stats["drained"]:
                stats["log"] = workers[0].log_tail()
        finally:
            b.end_sample(sampler, workers[0], phase, "worker")
            for w in workers:
                w.stop()
        stats["prefill_s"] = filled.seconds
        stats["posts_per_entry"] = per_entry
        stats["processes"] = processes
        if stats["drained"]:
            per_block = BLOCK_ROWS / filled.events * 1000
            stats["worker_cpu_ms_per_block"] = round(worker_cpu * per_block, 1)
            stats["valkey_cpu_ms_per_block"] = round(valkey_cpu * per_block, 1)
        stats["stored_rows"] = _stored_rows(b, phase, env)
        b.say(f"worker: {label} {processes}p {stats['rows_per_s']} rows/s, stored {stats['stored_rows']}")
        return stats
    finally:
        b.stop_redis(redis, f"redis ({phase})")


def _stored_rows(b: Bench, phase: str, env: dict[str, str]) -> int | None:
    out = b.phase_dir(phase) / "count.txt"
    done = subprocess.run(
        [sys.executable, "-m", "botpulse.bench.seed", "--count", "bot_stats", "--out", str(out)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return int(out.read_text()) if done.returncode == 0 and out.exists() else None


def engine(b: Bench, rows: int) -> dict[str, object]:
    """The engine's own rate for the drain's rows (bench/engine_inserts.py), in a child on a fresh chDB
    path (this process never opens one)."""
    phase = f"{PHASE}-engine"
    # No Redis is used; the settings loader needs a URL all the same.
    env = b.env(phase, "redis://127.0.0.1:1/0")
    out = b.phase_dir(phase) / "engine.json"
    b.say(f"worker: engine baseline, {rows:,} rows in {BLOCK_ROWS:,}-row blocks")
    args = ["--rows", str(rows), "--out", str(out)]
    b.child("engine baseline", env, "botpulse.bench.engine_inserts", args, 600)
    stats = msgspec.to_builtins(msgspec.json.decode(out.read_bytes(), type=EngineRun))
    b.say(f"worker: engine {stats['rows_per_s']} rows/s, stored {stats['stored_rows']}")
    return stats


def _engine_figures(b: Bench, drain: dict[str, object], base: dict[str, object]) -> None:
    rows_s = float(base["rows_per_s"])  # type: ignore[arg-type]
    notes = [
        f"p50 insert {base['insert_ms_p50']} ms a {base['block_rows']:,}-row block, "
        f"CPU {base['cpu_ms_per_block']} ms a block"
    ]
    if base["stored_rows"] != base["rows"]:
        notes.append(f"ClickHouse holds {base['stored_rows']} rows for {base['rows']}")
    posts = base["rollup_posts"]
    wrong = {t: n for t, n in posts.items() if n != base["rows"]}  # type: ignore[union-attr]
    if wrong:
        notes.append(f"roll-ups count {wrong} posts for {base['rows']} rows")
    b.figure(
        Figure(
            "worker_engine_rows_s_embedded",
            f"engine insert, same rows in {base['block_rows']:,}-row blocks, embedded chDB",
            rows_s,
            "rows/s",
            note="; ".join(notes),
        )
    )
    value = drain["rows_per_s"]
    ratio = round(float(value) / rows_s, 3) if value is not None and rows_s else None  # type: ignore[arg-type]
    ok = None if ratio is None else (ratio >= TARGET_ENGINE_RATIO and bool(drain["drained"]) and not wrong)
    b.figure(
        Figure(
            "worker_engine_ratio_embedded",
            "worker drain / engine insert, embedded chDB, 1p",
            ratio,
            "x",
            f"≥ {TARGET_ENGINE_RATIO}",
            ok,
            f"drain {value} rows/s, engine {rows_s} rows/s, same run",
        )
    )


def _figure(b: Bench, key: str, label: str, stats: dict[str, object], target: bool) -> None:
    value = stats["rows_per_s"]
    notes = []
    if not stats["drained"]:
        notes.append(
            f"not drained within the time bound ({stats['acked']} of {stats['entries']} entries acked)"
        )
    if stats["stored_rows"] is not None and stats["stored_rows"] != stats["events"]:
        notes.append(f"ClickHouse holds {stats['stored_rows']} rows for {stats['events']} posts")
    if "worker_cpu_ms_per_block" in stats:
        notes.append(
            f"CPU a {BLOCK_ROWS:,}-row batch: worker {stats['worker_cpu_ms_per_block']} ms, "
            f"valkey {stats['valkey_cpu_ms_per_block']} ms"
        )
    ok = None
    if target and value is not None:
        ok = bool(stats["drained"]) and float(value) >= TARGET_ROWS_S  # type: ignore[arg-type]
    b.figure(
        Figure(key, label, value, "rows/s", f"≥ {TARGET_ROWS_S:,}" if target else "", ok, "; ".join(notes))
    )  # type: ignore[arg-type]


def run(b: Bench) -> None:
    n = f"{b.sizes.drain_entries:,} posts, {POSTS_PER_ENTRY} an entry"
    stats = drain(b, "embedded", None, 1)
    defaults = load_settings({}, redis_url="redis://127.0.0.1:1/0")
    b.raw[PHASE] = {
        "embedded_1p": stats,
        "settings": {"batch_rows": defaults.batch_rows, "batch_ms": defaults.batch_ms},
    }
    _figure(b, "worker_rows_s_embedded", f"worker drain, {n} entries, embedded chDB, 1p", stats, True)
    base = engine(b, b.sizes.drain_entries)
    b.raw[PHASE]["engine"] = base
    _engine_figures(b, stats, base)
    if b.sizes.profile:
        # Profiled separately (pyinstrument slows the process down): where a worker's time goes.
        entries = max(10_000, b.sizes.drain_entries // 5)
        b.raw[PHASE]["embedded_1p_profiled"] = drain(
            b, "embedded-profiled", None, 1, entries=entries, bound_s=90, profile=True
        )
    server = os.environ.get("CLICKHOUSE_URL", "")
    if not server.startswith(("http://", "https://")):
        b.figure(Figure("worker_rows_s_server", "worker drain, ClickHouse server", None, "rows/s",
                        note="not available: CLICKHOUSE_URL does not point at a server"))  # fmt: skip
        return
    for processes in (1, 2, 4):
        stats = drain(b, f"server-{processes}p", server, processes)
        b.raw[PHASE][f"server_{processes}p"] = stats
        _figure(
            b,
            f"worker_rows_s_server_{processes}p",
            f"worker drain, {n} entries, server, {processes}p",
            stats,
            False,
        )
