"""The worker's Prometheus metrics (reference: docs/operations.md#metrics).

Two kinds:
- this process's counts, incremented at the pipeline's stage boundaries (`botpulse_worker_*`):
  entries read, rows inserted per table, batch sizes, insert durations, recoveries, dead letters,
  retries by cause, the last insert of this process. Sum them over the workers.
- the stream's state, read from Redis at scrape time by the same `workers.status.partition_view`
  that `botpulse status` prints (`botpulse_stream_*`): length, pending, lag in entries and in
  seconds, dead letters, and the totals every worker of a partition adds to its stats hash. Every
  worker reports the same values: aggregate them with `max`, not `sum`. The reads are
  XLEN/XINFO/HGETALL and one XRANGE of one entry per partition: no XPENDING over the group.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

import redis.asyncio as aioredis
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from botpulse.workers.status import PartitionView, partition_view

ENTRIES_READ = Counter(
    "botpulse_worker_entries_read_total",
    "Stream entries this worker read (new ones and ones it recovered or claimed).",
    ["source"],  # new | recovered
)
ROWS = Counter(
    "botpulse_worker_rows_inserted_total",
    "Rows this worker inserted into ClickHouse, by table.",
    ["table"],
)
BATCH_ENTRIES = Histogram(
    "botpulse_worker_batch_entries",
    "Events per batch this worker wrote (each event of a stream entry of several counts).",
    buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000),
)
INSERT_SECONDS = Histogram(
    "botpulse_worker_insert_duration_seconds",
    "Time of one batch insert into one table, until ClickHouse confirmed it.",
    ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
RECOVERED = Counter(
    "botpulse_worker_recovered_batches_total",
    "Batches of another (stopped) worker, or of an earlier run, this worker recovered.",
)
DEAD_LETTERS = Counter(
    "botpulse_worker_dead_letters_total",
    "Entries this worker moved to the dead-letter stream (refused rows, undecodable, delivered too often).",
)
RETRIES = Counter(
    "botpulse_worker_retries_total",
    "Backoffs this worker waited before trying again, by cause.",
    ["cause"],  # redis, clickhouse, timeout (a ClickHouse request past BOTPULSE_INSERT_TIMEOUT_S), error
)
for _cause in ("redis", "clickhouse", "timeout", "error"):
    RETRIES.labels(_cause)
for _source in ("new", "recovered"):
    ENTRIES_READ.labels(_source)
LAST_INSERT = Gauge(
    "botpulse_worker_last_insert_timestamp_seconds",
    "Unix time of this worker's last batch that ClickHouse confirmed (0: none yet).",
)


def inserted(table: str, rows: int, seconds: float) -> None:
    ROWS.labels(table).inc(rows)
    INSERT_SECONDS.labels(table).observe(seconds)


def committed(entries: int, *, recovered: bool) -> None:
    BATCH_ENTRIES.observe(entries)
    LAST_INSERT.set(time.time())
    if recovered:
        RECOVERED.inc()


def read(source: str, entries: int) -> None:
    if entries:
        ENTRIES_READ.labels(source).inc(entries)


def retried(cause: str) -> None:
    RETRIES.labels(cause).inc()


class StreamCollector(Collector):
    """`botpulse_stream_*` from the latest `partition_view`s (set by `refresh` before a scrape)."""

    def __init__(self) -> None:
        self.views: list[PartitionView] = []

    def collect(self) -> Iterable[Metric]:
        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["partition"])

        families = {
            "length": gauge("botpulse_stream_length_entries", "Entries in the partition's stream."),
            "pending": gauge(
                "botpulse_stream_pending_entries", "Entries read by a worker and not yet acknowledged."
            ),
            "lag": gauge("botpulse_stream_lag_entries", "Entries no worker has read yet (XINFO GROUPS lag)."),
            "lag_s": gauge("botpulse_stream_lag_seconds", "Age of the oldest entry no worker has read yet."),
            "dead": gauge("botpulse_stream_dead_letter_entries", "Entries in the dead-letter stream."),
            "flight": gauge(
                "botpulse_stream_batches_in_flight", "Batch records of batches not yet committed."
            ),
            "last": gauge(
                "botpulse_stream_last_insert_timestamp_seconds",
                "Unix time of the last batch any worker of the partition inserted (absent: never).",
            ),
        }
        counters = {
            "rows": CounterMetricFamily(
                "botpulse_stream_rows", "Rows all workers of the partition inserted.", labels=["partition"]
            ),
            "recovered": CounterMetricFamily(
                "botpulse_stream_recovered_batches", "Batches recovered by any worker.", labels=["partition"]
            ),
            "dead_total": CounterMetricFamily(
                "botpulse_stream_dead_lettered",
                "Entries ever moved to the dead-letter stream.",
                labels=["partition"],
            ),
            "lost": CounterMetricFamily(
                "botpulse_stream_lost",
                "Entries found trimmed away before they were written.",
                labels=["partition"],
            ),
        }
        for v in self.views:
            p = [str(v.partition)]
            families["length"].add_metric(p, v.length)
            families["pending"].add_metric(p, v.pending)
            families["lag"].add_metric(p, v.lag if v.lag is not None else v.length)
            families["lag_s"].add_metric(p, v.lag_s)
            families["dead"].add_metric(p, v.dead_letters)
            families["flight"].add_metric(p, v.batches_in_flight)
            if v.last_insert_ms is not None:
                families["last"].add_metric(p, v.last_insert_ms / 1000)
            counters["rows"].add_metric(p, v.rows_total)
            counters["recovered"].add_metric(p, v.recovered_batches)
            counters["dead_total"].add_metric(p, v.dead_total)
            counters["lost"].add_metric(p, v.lost_total)
        yield from families.values()
        yield from counters.values()


STREAM = StreamCollector()
REGISTRY.register(STREAM)


def stream_refresher(redis: aioredis.Redis, partitions: int) -> Callable[[], Awaitable[None]]:
    """What an `Exposition` runs before each scrape: read every partition's view."""

    async def refresh() -> None:
        try:
            STREAM.views = [await partition_view(redis, p) for p in range(partitions)]
        except Exception:
            STREAM.views = []  # Redis away: the stream series go absent (an alert's `absent()`)

    return refresh
