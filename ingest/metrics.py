"""The gateway's Prometheus metrics (reference: docs/operations.md#metrics).

Labels are bounded: a route is its template (`/v1/bot/{botId}`), never the path that was asked
for; a status is its class; a refusal its reason. No bot or account id is ever a label. The
label children of the hot route are bound once, and its posts are tallied in plain integers
that reach those children once per event-loop iteration (`Tally`), so a post costs a few
additions.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left

from prometheus_client import Counter, Histogram

from botpulse.runtime.loop_lag import BUCKETS as LOOP_LAG_BUCKETS
from botpulse.runtime.metrics import HTTP_BUCKETS, method_label, status_class

REQUESTS = Counter(
    "botpulse_gateway_requests_total",
    "HTTP requests answered by the gateway, by route template, method and status class.",
    ["route", "method", "status_class"],
)
DURATION = Histogram(
    "botpulse_gateway_request_duration_seconds",
    "Time from a request's headers to its answer, by route template.",
    ["route"],
    buckets=HTTP_BUCKETS,
)
POSTS = Counter(
    "botpulse_gateway_posts_appended_total",
    "Posts appended to the Redis stream (acknowledged to the client), by route template.",
    ["route"],
)
REFUSALS = Counter(
    "botpulse_gateway_refusals_total",
    "Posts refused, by reason: auth (401/403), not_found (unknown bot), validation (400), "
    "too_large (413), rate_limit (429), backlog (503, stream above the high-water mark), "
    "unavailable (503, Redis or the registry unreachable).",
    ["reason"],
)
REDIS_DURATION = Histogram(
    "botpulse_gateway_redis_duration_seconds",
    "Round trip of one coalesced append write to Redis (one or more posts).",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
# How posts queue in the appender (ingest/append.py), one observation per write, never per post:
# the bench reads both to split the gateway's tail at 70 % of peak (docs/benchmarks.md).
APPEND_POSTS = Histogram(
    "botpulse_gateway_append_posts",
    "Posts carried by one coalesced append write: those of one event-loop tick, or every post "
    "that arrived while the writes in flight held all the slots.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
)
APPEND_WAIT = Histogram(
    "botpulse_gateway_append_wait_seconds",
    "How long the oldest post of an append write waited before the write was sent: the rest of "
    "its event-loop tick, or until a write in flight freed a slot.",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
LOOP_LAG = Histogram(
    "botpulse_gateway_event_loop_lag_seconds",
    "How much later than due the gateway's event loop woke a timer, sampled every 50 ms "
    "(runtime/loop_lag.py): time every request in the process waited too.",
    buckets=LOOP_LAG_BUCKETS,
)
DROPPED_METRICS = Counter(
    "botpulse_gateway_custom_metrics_dropped_total",
    "Custom metric values dropped because the bot had no free custom-graph slot.",
)

REASONS = ("auth", "not_found", "validation", "too_large", "rate_limit", "backlog", "unavailable")
for _reason in REASONS:
    REFUSALS.labels(_reason)  # every reason present from the first scrape (rate() needs a start)

_children: dict[tuple[str, str, int], tuple[object, object]] = {}


def observe(route: str, method: str, status: int, seconds: float) -> None:
    key = (route, method, status)
    bound = _children.get(key)
    if bound is None:
        labels = (route, method_label(method), status_class(status))
        bound = (REQUESTS.labels(*labels), DURATION.labels(route))
        if len(_children) < 1000:  # statuses are few, routes fixed: the bound is never reached
            _children[key] = bound
    bound[0].inc()  # type: ignore[attr-defined]
    bound[1].observe(seconds)  # type: ignore[attr-defined]


_posts: dict[str, object] = {}


def appended(route: str) -> None:
    child = _posts.get(route)
    if child is None:
        child = _posts[route] = POSTS.labels(route)
    child.inc()  # type: ignore[attr-defined]


class Tally:
    """The stats route's answers (`requests_total`, `request_duration_seconds`) and appended posts
    (`posts_appended_total`), counted in plain numbers per post and added to their prometheus
    children in one go at the end of the event-loop iteration (`flush`): a prometheus update takes
    a lock each, and in multiprocess mode writes the value to its file too; four of them per post
    cost more than the rest of the post's bookkeeping. The values are the same; a scrape sees a
    post once the iteration that answered it has ended, before anything else runs (the flush is
    queued with `call_soon` before the answer is written, so a scrape sent after the answer
    arrived always counts it)."""

    def __init__(self, route: str, method: str = "POST") -> None:
        self.route = route
        self.method = method
        self.duration = DURATION.labels(route)
        self.posts = POSTS.labels(route)
        # Bucket i counts observations <= bound i (prometheus's own rule: the first bound not
        # below the value, i.e. `bisect_left`); the last bound is +Inf.
        # prometheus_client's own bucket counters, added to in bulk; a release without them
        # (they are not public API) gets one direct observation per post instead.
        self._direct = not all(hasattr(self.duration, a) for a in ("_upper_bounds", "_buckets", "_sum"))
        self.bounds = () if self._direct else tuple(self.duration._upper_bounds)  # type: ignore[attr-defined]
        self._requests: dict[int, list[object]] = {}  # status -> [child, answers]
        self._buckets = [0] * len(self.bounds)
        self._sum = 0.0
        self._appended = 0
        self._scheduled = False

    def answered(self, status: int, seconds: float) -> None:
        if self._direct:
            observe(self.route, self.method, status, seconds)
            return
        entry = self._requests.get(status)
        if entry is None:
            child = REQUESTS.labels(self.route, method_label(self.method), status_class(status))
            entry = self._requests[status] = [child, 0]
        entry[1] += 1  # type: ignore[operator]
        self._buckets[bisect_left(self.bounds, seconds)] += 1
        self._sum += seconds
        if not self._scheduled:
            self._schedule()

    def appended(self) -> None:
        if self._direct:
            self.posts.inc()
            return
        self._appended += 1
        if not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:  # no loop (a direct call): nothing to wait for
            self.flush()
            return
        self._scheduled = True

    def flush(self) -> None:
        self._scheduled = False
        for entry in self._requests.values():
            if entry[1]:
                entry[0].inc(entry[1])  # type: ignore[attr-defined]
                entry[1] = 0
        buckets = self._buckets
        if any(buckets):
            values = self.duration._buckets  # type: ignore[attr-defined]
            for i, n in enumerate(buckets):
                if n:
                    values[i].inc(n)
                    buckets[i] = 0
            self.duration._sum.inc(self._sum)  # type: ignore[attr-defined]
            self._sum = 0.0
        if self._appended:
            self.posts.inc(self._appended)
            self._appended = 0


def refused(reason: str) -> None:
    REFUSALS.labels(reason).inc()


def write_sent(posts: int, oldest_waited_s: float) -> None:
    """One append write leaves: how many posts it carries, how long the oldest of them waited."""
    APPEND_POSTS.observe(posts)
    APPEND_WAIT.observe(oldest_waited_s)
