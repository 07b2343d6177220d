"""The appender's queueing metrics against a real Redis: one observation per write (never per
post) of how many posts it carried and how long its oldest post waited, which is what the bench
reads to split the gateway's tail at 70 % of peak (docs/benchmarks.md)."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from botpulse.ingest.append import Appender, Limits, Outcome, Post
from botpulse.schemas.stream import stream_key

POSTS = "botpulse_gateway_append_posts"
WAIT = "botpulse_gateway_append_wait_seconds"


def _read() -> dict[str, float]:
    """Count and sum of both histograms, and the posts histogram's cumulative buckets."""
    out: dict[str, float] = {}
    for name in (POSTS, WAIT):
        for suffix in ("_count", "_sum"):
            out[name + suffix] = REGISTRY.get_sample_value(name + suffix) or 0.0
    for le in ("1.0", "2.0", "4.0"):
        out[f"le{le}"] = REGISTRY.get_sample_value(POSTS + "_bucket", {"le": le}) or 0.0
    return out


def _post(i: int) -> Post:
    return Post(0, f"30000000000000{i:04d}", True, 0, [], [b"event-%d" % i])


async def test_posts_of_one_tick_are_one_write_and_posts_behind_a_full_appender_wait(redis) -> None:
    appender = Appender(redis, 1_000_000, Limits(1, 1_000_000, 1, 1_000_000), timeout_s=5)
    try:
        before = _read()
        # Ten posts in the same tick: one write of ten, observed once.
        results = await asyncio.gather(*(appender.append(_post(i)) for i in range(10)))
        assert {r.outcome for r in results} == {Outcome.APPENDED}
        one_tick = _read()
        assert one_tick[POSTS + "_count"] - before[POSTS + "_count"] == 1
        assert one_tick[POSTS + "_sum"] - before[POSTS + "_sum"] == 10
        assert one_tick[WAIT + "_count"] - before[WAIT + "_count"] == 1
        # Ten is above the bucket of 4: the histogram saw one write of ten, not ten of one.
        assert one_tick["le4.0"] - before["le4.0"] == 0

        # With every write slot taken, posts queue: the first write goes alone, the next two
        # posts wait for it and leave together, their oldest having waited its round trip.
        appender.MAX_IN_FLIGHT = 1
        first = asyncio.ensure_future(appender.append(_post(10)))
        await asyncio.sleep(0)  # the first write is now in flight
        behind = [asyncio.ensure_future(appender.append(_post(i))) for i in (11, 12)]
        await asyncio.gather(first, *behind)
        queued = _read()
        assert queued[POSTS + "_count"] - one_tick[POSTS + "_count"] == 2
        assert queued[POSTS + "_sum"] - one_tick[POSTS + "_sum"] == 3
        assert queued["le1.0"] - one_tick["le1.0"] == 1  # the lone first write
        assert queued["le2.0"] - one_tick["le2.0"] == 2  # and the write of the two that waited
        waited = queued[WAIT + "_sum"] - one_tick[WAIT + "_sum"]
        assert 0 < waited < 5
    finally:
        await appender.close()
    # Every write is one stream entry holding its posts (docs/architecture.md, the stream entry).
    assert await redis.xlen(stream_key(0)) == 3
