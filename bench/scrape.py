"""A running service's Prometheus histograms, scraped over HTTP and read as distributions: how the
bench reports what happens inside the gateway (posts per append write, how long the oldest post
of a write waited, the write's Redis round trip, the whole request) beside what the load
generator saw from outside. Only the service's public metrics path is read.

A histogram gives counts per bucket, so a percentile is known only as the bucket holding it:
"p99 ≤ 4 ms" means the 99th percentile lies at or below 4 ms and above the bucket before.
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from prometheus_client.parser import text_string_to_metric_families

QUANTILES = (50, 90, 99)


class Histogram(msgspec.Struct):
    """One histogram's cumulative buckets (upper bound, count), ascending, `+Inf` last."""

    buckets: list[tuple[float, float]]
    sum: float
    count: float

    def minus(self, earlier: Histogram | None) -> Histogram:
        """What was observed since `earlier` (a scrape of the same process, same buckets)."""
        if earlier is None:
            return self
        before = dict(earlier.buckets)
        return Histogram(
            [(le, n - before.get(le, 0.0)) for le, n in self.buckets],
            self.sum - earlier.sum,
            self.count - earlier.count,
        )

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the q-th percentile (`inf`: above every bound)."""
        if self.count <= 0:
            return None
        rank = max(1.0, math.ceil(q * self.count / 100))
        for le, n in self.buckets:
            if n >= rank:
                return le
        return math.inf

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None


def parse(text: str, names: Sequence[str], labels: Mapping[str, str] | None = None) -> dict[str, Histogram]:
    """The histograms called `names` in an exposition; with `labels`, only the series with those."""
    wanted = dict(labels or {})
    found: dict[str, Histogram] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in names or family.type != "histogram":
            continue
        buckets: list[tuple[float, float]] = []
        total = count = 0.0
        for s in family.samples:
            if any(s.labels.get(k) != v for k, v in wanted.items()):
                continue
            if s.name.endswith("_bucket"):
                buckets.append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_sum"):
                total = s.value
            elif s.name.endswith("_count"):
                count = s.value
        if buckets:
            found[family.name] = Histogram(sorted(buckets), total, count)
    return found


def fetch(url: str, timeout: float = 5.0) -> str:
    """One scrape's exposition text (parse it once per histogram filter)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


def _bound(value: float | None, scale: float) -> float | str | None:
    if value is None:
        return None
    return "+Inf" if math.isinf(value) else round(value * scale, 6)


def summary(h: Histogram, scale: float = 1.0) -> dict[str, Any]:
    """JSON-ready: count, mean and the percentiles' bucket bounds, multiplied by `scale` (1000: ms),
    and the count of each bucket (not cumulative), so the whole distribution is kept."""
    per_bucket: dict[str, float] = {}
    previous = 0.0
    for le, n in h.buckets:
        per_bucket["+Inf" if math.isinf(le) else f"{le * scale:g}"] = n - previous
        previous = n
    out: dict[str, Any] = {
        "count": h.count,
        "sum": round(h.sum * scale, 6),
        "mean": None if h.mean is None else round(h.mean * scale, 6),
    }
    out.update({f"p{q}_at_most": _bound(h.quantile(q), scale) for q in QUANTILES})
    out["buckets"] = per_bucket
    return out


def describe(h: Histogram, unit: str = "", scale: float = 1.0, what: str = "observations") -> str:
    """One line: `p50 ≤ 2, p90 ≤ 4, p99 ≤ 16 (mean 2.6, over 1,234 writes)`."""
    if h.count <= 0:
        return f"no {what}"
    parts = []
    last = max((le for le, _ in h.buckets if not math.isinf(le)), default=0.0)
    for q in QUANTILES:
        bound = h.quantile(q)
        shown = f"> {last * scale:g}" if bound is None or math.isinf(bound) else f"≤ {bound * scale:g}"
        parts.append(f"p{q} {shown}{unit}")
    mean = h.mean or 0.0
    return f"{', '.join(parts)} (mean {mean * scale:.3g}{unit}, {h.count:,.0f} {what})"
