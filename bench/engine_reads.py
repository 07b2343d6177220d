"""The engine's own time for what a bot's stats answer runs, as a child of the query phase
(`python -m botpulse.bench.engine_reads`, after the query service has stopped: embedded chDB allows
one engine per path, and this needs the phase's data).

For each case it builds the very statements `GET /v1/bot/{id}?returnStats=true&start=…` runs
(query/app.py and query/stats.py build them; nothing is re-written here) and runs them one
after another through the one access layer (`Store.query_rows`: no HTTP, no event loop, no JSON),
`--repeat` times after a warm-up; the median of the per-repetition sums is the case's engine
time. The query phase divides the service's p50 by it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from botpulse.query.app import SEEN_FROM_POSTS_SQL
from botpulse.query.stats import buckets_statement, totals_statement
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
    total_ms: float  # median over repetitions of the statements' summed time
    statements_ms: list[float]  # each statement's median, in the order the answer builds them


def statements(bot_id: str, start: int, end: int, points: int) -> list[tuple[str, dict[str, Any]]]:
    """What the stats answer with a given start runs (query/app.py `get_bot_info`)."""
    return [
        (SEEN_FROM_POSTS_SQL, {"id": bot_id}),
        buckets_statement(bot_id, start, end, points),
        totals_statement(bot_id, start, end),
    ]


def measure(store: Store, case: EngineCase, repeat: int) -> EngineTime:
    per_statement: list[list[float]] = []
    totals: list[float] = []
    for i in range(repeat + 3):  # as the service's figure, the first three warm caches
        bot = case.bots[i % len(case.bots)]
        times = []
        for sql, params in statements(bot, case.start, case.end, case.points):
            started = time.perf_counter()
            store.query_rows(sql, params)
            times.append((time.perf_counter() - started) * 1000)
        if i >= 3:
            per_statement.append(times)
            totals.append(sum(times))
    medians = [round(statistics.median(col), 3) for col in zip(*per_statement, strict=True)]
    return EngineTime(case.key, round(statistics.median(totals), 3), medians)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m botpulse.bench.engine_reads")
    parser.add_argument("--cases", required=True, help="JSON list of EngineCase")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    cases = msgspec.json.decode(args.cases, type=list[EngineCase])
    settings = load_settings()
    configure_logging(settings)
    store = Store(settings, threads=1)
    try:
        results = [measure(store, case, args.repeat) for case in cases]
    finally:
        store.close()
    Path(args.out).write_bytes(msgspec.json.encode(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
