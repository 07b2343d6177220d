"""The engine's own time for what a bot's stats answer runs, as a child of the query phase
(`python -m botpulse.bench.engine_reads`, after the query service has stopped: embedded chDB allows
one engine per path, and this needs the phase's data).

For each case it runs the plan `GET /v1/bot/{id}?returnStats=true&start=…` runs, through the
same planning functions (query/bot_reads.py: `head_statement`, beside `buckets_statement` where
the store overlaps reads, then `plan` from the head's row; nothing is re-written here), in the
same rounds as the service (the statements of a round side by side, one thread and engine handle
each) through the one access layer (`Store.query_rows`: no HTTP, no event loop, no JSON),
`--repeat` times after a warm-up; the median of the repetitions' wall times is the case's engine
time. The query phase divides the service's p50 by it. Each statement's own time is kept too
(their sum: the engine's work).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec

from botpulse.query.bot_reads import Known, Range, Statement, head_of, head_statement, plan
from botpulse.query.stats import buckets_statement
from botpulse.runtime.clickhouse import Store
from botpulse.runtime.logs import configure_logging
from botpulse.runtime.settings import load_settings


class EngineCase(msgspec.Struct):
    key: str
    bots: list[str]
    start: int
    end: int
    points: int


class EngineTime(msgspec.Struct):
    key: str
    total_ms: float  # median over repetitions of the answer's wall time, rounds as the service's
    statements_ms: list[float]  # each statement's median, in the order the answer builds them


def run_answer(
    store: Store, pool: ThreadPoolExecutor, bot_id: str, stats: Range, known: Known
) -> list[float]:
    """The statements of the stats answer with a given start (query/app.py `get_bot_info`) in
    its two rounds: the head (with the side reads `known` has for the bot, as the service's),
    beside the buckets where the engine overlaps reads (`head_and_buckets`), then the rest of the
    plan made from the head's row, side by side. Each statement's ms."""

    def timed(statement: Statement) -> tuple[float, list[tuple[Any, ...]]]:
        started = time.perf_counter()
        rows = store.query_rows(*statement)
        return (time.perf_counter() - started) * 1000, rows

    sight = known.sight(bot_id)
    first = [head_statement(bot_id, with_first=False, sight=sight)]
    if store.reads_overlap:  # as `head_and_buckets`
        first.append(buckets_statement(bot_id, stats.start, stats.end, stats.points))
    done = list(pool.map(timed, first))
    head = known.learn(bot_id, head_of(done[0][1][0], with_first=False, sight=sight))
    rest = plan(bot_id, head, stats, buckets_read=store.reads_overlap).statements()
    return [ms for ms, _ in done] + [ms for ms, _ in pool.map(timed, rest)]


def measure(store: Store, case: EngineCase, repeat: int) -> EngineTime:
    per_statement: list[list[float]] = []
    walls: list[float] = []
    known = Known()  # the service's, warmed as its cache is by the first requests
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="engine-read") as pool:
        for i in range(repeat + 3):  # as the service's figure, the first three warm caches
            bot = case.bots[i % len(case.bots)]
            started = time.perf_counter()
            times = run_answer(store, pool, bot, Range(case.start, case.end, case.points), known)
            wall = (time.perf_counter() - started) * 1000
            if i >= 3:
                per_statement.append(times)
                walls.append(wall)
    # The bots of a case are alike (the seeded history), so each repetition runs the same plan.
    medians = [round(statistics.median(col), 3) for col in zip(*per_statement, strict=True)]
    return EngineTime(case.key, round(statistics.median(walls), 3), medians)


class Floor(msgspec.Struct):
    """Two floors, timed like `measure` through `Store`: one statement (`SELECT 1`), and one
    statement reading one table for the bot: the `count()` of its hourly rows over the range
    (less than the hour-aligned answer reads; a table read's fixed cost barely depends on the
    rows it reads, docs/benchmarks.md *The engine's floor*)."""

    key: str
    statement_ms: float
    table_ms: float
    rows: int  # what the count() found (the last bot's): a floor over no rows would mean nothing


FLOOR_SQL = (
    "SELECT count() FROM bot_stats_1h WHERE bot_id = {id:String} "
    "AND bucket >= toDateTime(intDiv({start:Int64}, 1000), 'UTC') "
    "AND bucket < toDateTime(intDiv({end:Int64}, 1000), 'UTC')"
)


def floor(store: Store, case: EngineCase, repeat: int) -> Floor:
    one: list[float] = []
    table: list[float] = []
    rows = 0
    for i in range(repeat + 3):
        params = {"id": case.bots[i % len(case.bots)], "start": case.start, "end": case.end}
        for sql, args, into in (("SELECT 1", None, one), (FLOOR_SQL, params, table)):
            started = time.perf_counter()
            got = store.query_rows(sql, args)
            if i >= 3:
                into.append((time.perf_counter() - started) * 1000)
            if args:
                rows = int(got[0][0])
    return Floor(case.key, round(statistics.median(one), 3), round(statistics.median(table), 3), rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m botpulse.bench.engine_reads")
    parser.add_argument("--cases", required=True, help="JSON list of EngineCase")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--out", required=True)
    parser.add_argument("--floor", action="store_true", help="time the floor (`Floor`) instead")
    args = parser.parse_args(argv)
    cases = msgspec.json.decode(args.cases, type=list[EngineCase])
    settings = load_settings()
    configure_logging(settings)
    store = Store(settings, threads=1)
    try:
        run = floor if args.floor else measure
        results = [run(store, case, args.repeat) for case in cases]
    finally:
        store.close()
    Path(args.out).write_bytes(msgspec.json.encode(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
