"""`python -m botpulse.bench.plans`: the statement-level comparisons behind two choices of the
query service, re-runnable (docs/benchmarks.md, "Figures behind choices in the code").

- `query/stats.py` `RAW_MAX_HOURS`: the direct plan (every post of the range) against the
  two-level plan (hourly roll-up + ragged hours), per range length;
- `query/uptime.py` `UPTIME_SQL`: total uptime as one pass over a sorted array against the same
  sum over a window function.

One bot of 1-minute posts is bulk-loaded into a throwaway embedded ClickHouse (this process's
own), then each statement runs `--repeat` times through `Store`; the median is printed. Both
sides of a pair must give the same answer, or the run stops. Nothing here is a test: figures on
a shared machine move with its load, compare only the pairs of one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from typing import Any

from botpulse.bench.seed import _HISTORY_SQL, DAY_MS, MINUTE_MS
from botpulse.query.stats import BUCKETS_SQL, RAW_BUCKETS_SQL, ragged_hours
from botpulse.query.uptime import _POSTS, UPTIME_SQL
from botpulse.runtime.clickhouse import Store
from botpulse.runtime.logs import configure_logging
from botpulse.runtime.migrations import migrate
from botpulse.runtime.settings import load_settings

BOT = "300000000000000000"
HOUR_MS = 3_600_000
WINDOW_MS = 180_000
# The window-function form of UPTIME_SQL's total (what PERIODS_SQL still uses for the gaps).
UPTIME_WINDOW_SQL = (
    "SELECT bot_id, count(), min(t),"
    " sum(greatest(0, least(nxt, t + {w:Int64}, {end:Int64}) - greatest(t, {start:Int64})))"
    f" FROM ({_POSTS}) GROUP BY bot_id"
)


def _median_ms(store: Store, sql: str, params: dict[str, Any], repeat: int) -> tuple[float, Any]:
    rows = store.query_rows(sql, params)  # warm-up, and the answer to compare
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        store.query_rows(sql, params)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), rows


def run(days: int, ranges: list[int], repeat: int, points: int) -> list[str]:
    lines = []
    with tempfile.TemporaryDirectory(prefix="botpulse-plans-") as data_dir:
        settings = load_settings({}, data_dir=data_dir, log_level="warning", query_timeout_s=600.0)
        configure_logging(settings)
        store = Store(settings, threads=1)
        try:
            migrate(store)
            end = int(time.time() * 1000) // HOUR_MS * HOUR_MS
            n = days * DAY_MS // MINUTE_MS
            store.command_sync(
                _HISTORY_SQL, {"bot": BOT, "start": end - n * MINUTE_MS, "n": n, "step": MINUTE_MS}
            )
            lines.append(f"one bot, {days} days of 1-minute posts ({n} rows); median of {repeat} runs")
            lines.append(f"{'range':>8}  {'direct plan':>12}  {'two-level plan':>15}")
            # A range ending on no minute, as a client's "any range": with the end on an hour, a
            # range whose hours divide into the buckets (30 days in 90) would have no ragged hour,
            # and the two-level plan would look cheaper than it is for most ranges.
            odd_end = end - 1_234_567
            for d in ranges:
                start = odd_end - d * DAY_MS
                params: dict[str, Any] = {
                    "id": BOT, "start": start, "end": odd_end, "n": points, "span": odd_end - start
                }  # fmt: skip
                direct, a = _median_ms(store, RAW_BUCKETS_SQL, params, repeat)
                params["hours"] = ragged_hours(start, odd_end, points)
                two_level, b = _median_ms(store, BUCKETS_SQL, params, repeat)
                if [r[:2] for r in a] != [r[:2] for r in b]:
                    raise SystemExit(f"plans disagree over {d} days")
                lines.append(f"{d:>6} d  {direct:>9.1f} ms  {two_level:>12.1f} ms")
            start = end - 14 * DAY_MS
            params = {"ids": [BOT], "start": start, "end": end, "w": WINDOW_MS}
            array, a = _median_ms(store, UPTIME_SQL, params, repeat)
            window, b = _median_ms(store, UPTIME_WINDOW_SQL, params, repeat)
            if a[0][3] != b[0][3]:
                raise SystemExit("uptime forms disagree")
            lines.append(f"uptime over 2 weeks: sorted array {array:.1f} ms, window function {window:.1f} ms")
        finally:
            store.close()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m botpulse.bench.plans", description="query plans compared on one bot's history"
    )
    parser.add_argument("--days", type=int, default=60, help="history loaded (default 60)")
    parser.add_argument("--ranges", default="7,30,45,60", help="range lengths in days (default 7,30,45,60)")
    parser.add_argument("--repeat", type=int, default=20, help="runs per statement (default 20)")
    parser.add_argument("--points", type=int, default=90, help="dataPoints (default 90)")
    args = parser.parse_args(argv)
    ranges = [int(r) for r in args.ranges.split(",")]
    if max(ranges) > args.days or min(ranges) < 1:
        parser.error("--ranges must lie within 1..--days")
    print("\n".join(run(args.days, ranges, args.repeat, args.points)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
