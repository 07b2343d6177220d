"""Where a worker's drain time goes, stage by stage, beside the engine's insert of the same rows.

A measurement script, not a bench phase (`botpulse bench --only worker` gives the figures of
record): `python -m botpulse.bench.stages [--entries N] [--per-entry K] [--minute-rollup]
[--no-overlap] [--no-engine]`. In this one process: a fresh bundled valkey-server and chDB under
`$TMPDIR` (`TMPDIR=/dev/shm` keeps the disk out of it), `--entries` drain posts pre-filled as the
bench does (`bench.worker.prefill`: the gateway's append script, `--per-entry` posts a call and so
a stream entry; 1 gives the single-event entries of older gateways), then the real `Worker` drains
them with a timer around each stage (intake read and decode, batch record, columns, insert,
commit). Printed: rows/s, each stage's total and share of the wall time, CPU seconds by thread
(the event loop, the insert thread, chDB's merges) and valkey's, and per 10,000-row batch,
valkey's busiest commands; then, unless `--no-engine`, the engine baseline
(`bench.engine_inserts`: the same rows, pre-built blocks, the writer's call) into another database
of the same engine, and the drain/engine ratio.

`--minute-rollup` puts back the minute roll-up dropped by 0037 (the layout before issue 18);
`--no-overlap` turns off the worker's read-ahead and its next insert before the commit
(`workers.pipeline.READ_AHEAD`, `CHAIN`). Alternate runs with and without a flag: on a shared
machine only pairs taken minutes apart compare.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botpulse.bench import engine_inserts as engine
from botpulse.bench.worker import POSTS_PER_ENTRY, prefill
from botpulse.runtime.clickhouse import Store
from botpulse.runtime.embedded import EmbeddedRedis
from botpulse.runtime.logs import configure_logging
from botpulse.runtime.migrations import available, migrate, render
from botpulse.runtime.settings import Settings, load_settings
from botpulse.schemas.stream import GROUP, stream_key
from botpulse.workers import batch as batch_module
from botpulse.workers import intake as intake_module
from botpulse.workers import pipeline
from botpulse.workers import writer as writer_module
from botpulse.workers.context import worker_redis

TICK = os.sysconf("SC_CLK_TCK")
Timers = dict[str, list[float]]  # stage -> [seconds, calls]


def _timed(timers: Timers, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    if asyncio.iscoroutinefunction(fn):

        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                timers[name][0] += time.perf_counter() - started
                timers[name][1] += 1

        return timed_async

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timers[name][0] += time.perf_counter() - started
            timers[name][1] += 1

    return timed


def minute_rollup(store: Store) -> None:
    """The minute roll-up and its view as 0002 created them (dropped by 0037)."""
    (rollups,) = [m for m in available() if m.version == "0002_rollups"]
    for statement in render(rollups.sql, cluster=None, database=store.database, ttl_days=400):
        if "bot_stats_1m" in statement:
            store.command_sync(statement)


def threads_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads: the event loop, the insert thread, the rest by name."""
    out: dict[str, float] = collections.defaultdict(float)
    for tid in os.listdir("/proc/self/task"):
        try:
            comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(tid) == os.getpid():
            name = "event loop"
        elif comm == "Unknown" or comm.startswith("clickhouse-wri"):  # chDB renames the thread
            name = "insert thread"
        else:
            name = comm.rstrip("0123456789_-") or comm
        out[name] += (int(fields[11]) + int(fields[12])) / TICK
    return out


def pid_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def cpu_line(
    before: dict[str, float], after: dict[str, float], valkey_s: float, wall: float, rows: int
) -> str:
    parts = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    shown = sorted(((k, v) for k, v in parts.items() if v >= 0.01), key=lambda kv: -kv[1])
    total = sum(parts.values()) + valkey_s
    per_batch = total / rows * engine.BLOCK_ROWS * 1000
    return (
        "CPU s: " + ", ".join(f"{k} {v:.2f}" for k, v in shown) + f", valkey {valkey_s:.2f}; "
        f"{total:.2f} over {wall:.2f} s wall = {total / wall:.2f} cores; "
        f"{per_batch:.0f} ms a {engine.BLOCK_ROWS:,}-row batch"
    )


async def drain(settings: Settings, store: Store, entries: int, timers: Timers) -> float:
    """`entries`: the stream entries to acknowledge."""
    """Run the real worker until every entry is acknowledged; seconds from the first read."""
    redis = worker_redis(settings)
    worker = pipeline.Worker(settings, store, redis)
    worker.intake.read = _timed(timers, "read + decode", worker.intake.read)  # type: ignore[method-assign]
    worker.recovery.open_batch = _timed(timers, "batch record", worker.recovery.open_batch)  # type: ignore[method-assign]
    worker.writer.write = _timed(timers, "columns + insert", worker.writer.write)  # type: ignore[method-assign]
    worker.committer.commit = _timed(timers, "commit (XACK)", worker.committer.commit)  # type: ignore[method-assign]
    store.insert = _timed(timers, "  insert", store.insert)  # type: ignore[method-assign]
    writer_module.rows_by_table = _timed(timers, "  columns", writer_module.rows_by_table)
    intake_module.decode_entry = _timed(timers, "  decode", batch_module.decode_entry)
    await redis.config_resetstat()
    gc.freeze()  # as `botpulse worker` does
    gc.set_threshold(50_000, 20, 100)
    task = asyncio.create_task(worker.run())
    first: float | None = None
    try:
        while True:
            await asyncio.sleep(0.01)
            groups = [
                g for g in await redis.xinfo_groups(stream_key(0)) if g["name"] in (GROUP, GROUP.encode())
            ]
            read = int(groups[0].get("entries-read") or 0)
            if first is None and read:
                first = time.perf_counter()
            if read >= entries and groups[0]["pending"] == 0 and groups[0]["lag"] == 0:
                break
            if task.done():
                raise RuntimeError("the worker stopped before the drain ended")
        wall = time.perf_counter() - (first or time.perf_counter())
    finally:
        worker.stop()
        await task
    stats = await redis.info("commandstats")
    busiest = sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:4]
    print(
        "  valkey: "
        + ", ".join(f"{k.removeprefix('cmdstat_')} {v['usec'] / 1000:.0f} ms" for k, v in busiest)
    )
    await redis.aclose()
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m botpulse.bench.stages")
    parser.add_argument("--entries", type=int, default=200_000, help="posts (rows) to drain")
    parser.add_argument("--per-entry", type=int, default=POSTS_PER_ENTRY, help="posts a stream entry")
    parser.add_argument("--minute-rollup", action="store_true", help="the roll-ups as before 0037")
    parser.add_argument("--no-overlap", action="store_true", help="no read-ahead, no insert before commit")
    parser.add_argument("--no-engine", action="store_true", help="skip the engine baseline")
    args = parser.parse_args(argv)
    if args.no_overlap:
        pipeline.READ_AHEAD = pipeline.CHAIN = False
    root = Path(tempfile.mkdtemp(prefix="botpulse-stages-"))
    valkey = EmbeddedRedis(root / "redis").start()
    try:

        def settings_for(database: str) -> Settings:
            return load_settings(
                {}, redis_url=valkey.url, clickhouse_url=f"chdb://{root / 'clickhouse'}",
                clickhouse_database=database, log_level="warning", log_format="json",
            )  # fmt: skip

        settings = settings_for("drain")
        configure_logging(settings)
        store = Store(settings)
        migrate(store)
        if args.minute_rollup:
            minute_rollup(store)
        filled = asyncio.run(prefill(valkey.url, args.entries, per_entry=args.per_entry))
        timers: Timers = collections.defaultdict(lambda: [0.0, 0])
        assert valkey.proc is not None
        threads, valkey_s = threads_cpu(), pid_cpu(valkey.proc.pid)
        wall = asyncio.run(drain(settings, store, filled.entries, timers))
        cpu = cpu_line(threads, threads_cpu(), pid_cpu(valkey.proc.pid) - valkey_s, wall, args.entries)
        stored = store.query_rows("SELECT count() FROM bot_stats")[0][0]
        drain_rate = args.entries / wall
        print(
            f"drain: {args.entries:,} posts in {filled.entries:,} entries in {wall:.2f} s = "
            f"{drain_rate:,.0f} rows/s, stored {stored:,}"
        )
        print(f"  {cpu}")
        for name, (seconds, calls) in timers.items():
            share = seconds / wall * 100
            print(f"  {name:18s} {seconds * 1000:8.0f} ms in {calls:6d} calls, {share:5.1f} % of wall")
        store.close()
        if args.no_engine:
            return 0
        store = Store(settings_for("engine"))
        migrate(store)
        if args.minute_rollup:
            minute_rollup(store)
        blocks = engine.build_blocks(args.entries)
        gc.collect()
        threads = threads_cpu()
        started = time.perf_counter()
        took = asyncio.run(engine.insert_all(store, blocks))
        seconds = time.perf_counter() - started
        engine_rate = args.entries / seconds
        p50 = sorted(took)[len(took) // 2] * 1000
        print(f"engine: {engine_rate:,.0f} rows/s, insert p50 {p50:.1f} ms a block")
        print(f"  {cpu_line(threads, threads_cpu(), 0.0, seconds, args.entries)}")
        print(f"drain / engine: {drain_rate / engine_rate:.3f}")
        store.close()
    finally:
        valkey.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
