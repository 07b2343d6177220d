"""The worker phase's reference: how fast the engine itself stores the drain's rows.

Run as a child (`python -m botpulse.bench.engine_inserts`) on a fresh embedded ClickHouse path,
migrated like the worker's, so the same tables with the same materialized views take the rows.
It builds the rows of the same events the drain's stream holds (`bench.worker.drain_event`),
through the worker's own row builder (`workers.rows.rows_by_table`), as 10,000-row column blocks
(issue 18's definition of the baseline; the worker's own batches fill up to its `batch_rows` on a
backlog) *before* the clock starts; then it inserts the blocks one after the other, each with a
dedup token of its own and the writer's settings (`workers.writer.insert_settings`), through the
same call the writer makes (`Store.insert`, column-oriented). Only the inserts are timed: the
rate is what the worker's drain would reach if reading, decoding, building rows, recording and
acknowledging cost nothing — the bound the drain/engine ratio is judged against.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path

import msgspec

from botpulse.runtime.clickhouse import Store
from botpulse.runtime.logs import configure_logging
from botpulse.runtime.migrations import migrate
from botpulse.runtime.settings import load_settings
from botpulse.schemas.stats import STATS_TABLE
from botpulse.schemas.stream import stream_key
from botpulse.workers import batchlog as rec
from botpulse.workers.rows import COLUMNS, Block, rows_by_table
from botpulse.workers.writer import insert_settings

BLOCK_ROWS = 10_000


class EngineRun(msgspec.Struct):
    rows: int
    blocks: int
    block_rows: int
    seconds: float
    rows_per_s: float
    insert_ms_p50: float
    insert_ms_max: float
    build_s: float  # building the blocks, not timed in the rate
    # The process's CPU (every thread: the inserts' and chDB's) over the timed inserts, a block.
    cpu_ms_per_block: float
    stored_rows: int
    # `sum(posts)` of each roll-up fed from `bot_stats`: each must equal `rows`.
    rollup_posts: dict[str, int]


def build_blocks(rows: int, block_rows: int = BLOCK_ROWS) -> list[tuple[Block, str]]:
    """The drain's events as the writer's blocks, each with its token (`<record token>:<table>`,
    the record token from the block's own synthetic stream ids)."""
    from botpulse.bench.worker import drain_event

    base_ms = int(time.time() * 1000) - rows
    stream = stream_key(0)
    out: list[tuple[Block, str]] = []
    for first in range(0, rows, block_rows):
        pairs = [
            (f"{base_ms + i}-{i}".encode(), drain_event(i, base_ms))
            for i in range(first, min(rows, first + block_rows))
        ]
        block, ids = rows_by_table(pairs)[STATS_TABLE]
        out.append((block, f"{rec.token_for(stream, ids)}:{STATS_TABLE}"))
    return out


async def insert_all(store: Store, blocks: list[tuple[Block, str]]) -> list[float]:
    """Insert the blocks one after the other, as the writer does; each insert's seconds."""
    columns = COLUMNS[STATS_TABLE]
    took: list[float] = []
    for block, token in blocks:
        started = time.perf_counter()
        await store.insert(
            STATS_TABLE,
            block,
            columns,
            insert_settings(token, cluster=bool(store.cluster)),
            column_oriented=True,
        )
        took.append(time.perf_counter() - started)
    return took


def rollups(store: Store) -> list[str]:
    """The roll-ups whose `posts` count rows of `bot_stats` (directly or through another roll-up)."""
    names = store.query_rows(
        "SELECT name FROM system.tables WHERE database = currentDatabase() AND startsWith(name, 'bot_stats_')"
        " AND endsWith(engine, 'AggregatingMergeTree') ORDER BY name"
    )
    return [n for (n,) in names]


def run(rows: int, block_rows: int = BLOCK_ROWS) -> EngineRun:
    settings = load_settings()
    configure_logging(settings)
    store = Store(settings)
    try:
        migrate(store)
        started = time.monotonic()
        blocks = build_blocks(rows, block_rows)
        build_s = time.monotonic() - started
        # The pre-built blocks hold millions of objects: out of the collector's reach, as the
        # worker keeps its start-up objects (`gc.freeze`), so the rate is the engine's.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        started, cpu_started = time.perf_counter(), time.process_time()
        took = asyncio.run(insert_all(store, blocks))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        del blocks
        gc.unfreeze()
        stored = int(store.query_rows(f"SELECT count() FROM {STATS_TABLE}")[0][0])
        posts = {t: int(store.query_rows(f"SELECT sum(posts) FROM {t}")[0][0] or 0) for t in rollups(store)}
        ordered = sorted(took)
        return EngineRun(
            rows=rows,
            blocks=len(took),
            block_rows=block_rows,
            seconds=round(seconds, 3),
            rows_per_s=round(rows / seconds, 1) if seconds else 0.0,
            insert_ms_p50=round(ordered[len(ordered) // 2] * 1000, 1) if ordered else 0.0,
            insert_ms_max=round(ordered[-1] * 1000, 1) if ordered else 0.0,
            build_s=round(build_s, 2),
            cpu_ms_per_block=round(cpu / len(took) * 1000, 1) if took else 0.0,
            stored_rows=stored,
            rollup_posts=posts,
        )
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m botpulse.bench.engine_inserts")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--block-rows", type=int, default=BLOCK_ROWS)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.write_bytes(msgspec.json.encode(run(args.rows, args.block_rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
