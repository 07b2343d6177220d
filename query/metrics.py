"""The query service's Prometheus metrics (reference: docs/operations.md#metrics). A route is its
template, a status its class; no bot or account id is ever a label."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from botpulse.runtime.loop_lag import BUCKETS as LOOP_LAG_BUCKETS
from botpulse.runtime.metrics import HTTP_BUCKETS, method_label, status_class

REQUESTS = Counter(
    "botpulse_query_requests_total",
    "HTTP requests answered by the query service, by route template, method and status class.",
    ["route", "method", "status_class"],
)
DURATION = Histogram(
    "botpulse_query_request_duration_seconds",
    "Time from a request's headers to its answer, by route template.",
    ["route"],
    buckets=HTTP_BUCKETS,
)
CACHE = Counter(
    "botpulse_query_cache_requests_total",
    "Lookups in the query service's caches (bot_records: bot records per registry version; bot_memory: "
    "a bot answer's statements and buckets from memory, a miss reading the tables), by result.",
    ["cache", "result"],
)
for _cache in ("bot_records", "bot_memory"):
    for _result in ("hit", "miss"):
        CACHE.labels(_cache, _result)
MEMORY_UNITS = Gauge(
    "botpulse_query_memory_units",
    "Units (about 1 KB each) the query service holds of bots' answers (embedded chDB only; the limit is "
    "BOTPULSE_QUERY_MEMORY_HOURS).",
)

LOOP_LAG = Histogram(
    "botpulse_query_event_loop_lag_seconds",
    "How much later than due the query service's event loop woke a timer, sampled every 50 ms "
    "(runtime/loop_lag.py): time every request in the process waited too.",
    buckets=LOOP_LAG_BUCKETS,
)


def observe(route: str, method: str, status: int, seconds: float) -> None:
    REQUESTS.labels(route, method_label(method), status_class(status)).inc()
    DURATION.labels(route).observe(seconds)
