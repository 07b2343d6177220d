"""The query service's Prometheus metrics (reference: docs/operations.md#metrics). A route is its
template, a status its class; no bot or account id is ever a label."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
    "Lookups in the query service's caches (bot_records: bot records per registry version), by result.",
    ["cache", "result"],
)
for _result in ("hit", "miss"):
    CACHE.labels("bot_records", _result)


def observe(route: str, method: str, status: int, seconds: float) -> None:
    REQUESTS.labels(route, method_label(method), status_class(status)).inc()
    DURATION.labels(route).observe(seconds)
