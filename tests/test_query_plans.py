"""Every bucket plan of `query/stats.py` gives the raw definition: the hourly roll-up alone (every
edge on an hour), the direct read of the posts (short ranges) and the two-level plan (hourly
roll-up + ragged hours, long ranges). The shared cases and the plain-Python reference live in
`test_query_stats.py`."""

from __future__ import annotations

import random

import pytest
from test_query_stats import (  # noqa: F401 - `world` is a fixture used by name
    MIN,
    T0,
    get,
    reference,
    stat,
    world,
)
from test_query_stats import test_rollup_plan_matches_raw_definition as check_rollup_plan

from botpulse.query import stats as query_stats
from botpulse.workers.rows import STATS_COLUMNS


async def test_two_level_plan_matches_raw_definition(world, monkeypatch):  # noqa: F811
    # The shared cases are a few days long, so the service serves them by the direct read; forced
    # through the two-level plan they must give the very same answers.
    monkeypatch.setattr(query_stats, "RAW_MAX_HOURS", 0)
    await check_rollup_plan(world)


@pytest.mark.parametrize("hours", [0, 2, 10_000])
async def test_plan_threshold_edges(world, monkeypatch, hours):  # noqa: F811
    # Ranges just inside, at and past the threshold: whichever plan serves them, the same answer.
    c, store = world["client"], world["store"]
    monkeypatch.setattr(query_stats, "RAW_MAX_HOURS", hours)
    rows = [stat("100", T0 + k * 7 * MIN + 11, guilds=k, cpu=float(k) / 3) for k in range(60)]
    await store.insert("bot_stats", rows, STATS_COLUMNS)
    for span in (2 * 3_600_000 - 1, 2 * 3_600_000, 2 * 3_600_000 + 1, 7 * 3_600_000):
        start, end = T0 - 13, T0 - 13 + span
        status, body = await get(c, "/v1/bot/100", returnStats="true", start=start, end=end, dataPoints=5)
        assert status == 200
        got = [{k: v for k, v in b.items() if k != "custom"} for b in body["stats"]]
        for g, e in zip(got, reference(rows, start, end, 5), strict=True):
            assert g.keys() == e.keys()
            for k in e:
                assert g[k] == (pytest.approx(e[k], rel=1e-9) if isinstance(e[k], float) else e[k]), (span, k)


async def test_last_seen_and_names_are_the_same_with_or_without_a_start(world):  # noqa: F811
    # With a given start the service reads the last post from the posts copy instead of the daily
    # roll-up: the answer must not change, including a post after `end` and a bot with no post.
    c, store = world["client"], world["store"]
    _, empty = await get(c, "/v1/bot/100", returnStats="true", start=T0, end=T0 + MIN)
    assert empty["lastSeen"] is None and empty["connectionStatus"] == "disconnected"
    rows = [stat("100", T0 + 5, guilds=1), stat("100", T0 + 3 * 86_400_000 + 77, guilds=2)]
    await store.insert("bot_stats", rows, STATS_COLUMNS)
    await store.insert(
        "custom_metric_names", [["100", "votes", rows[0][1]], ["100", "messages", rows[0][1]]],
        ["bot_id", "name", "first_seen"],
    )  # fmt: skip
    _, plain = await get(c, "/v1/bot/100")
    _, ranged = await get(c, "/v1/bot/100", returnStats="true", start=T0, end=T0 + MIN, dataPoints=2)
    assert plain["lastSeen"] == ranged["lastSeen"] == T0 + 3 * 86_400_000 + 77
    assert plain["customGraphs"] == ranged["customGraphs"] == ["messages", "votes"]
    assert [b["custom"] for b in ranged["stats"]] == [{"messages": None, "votes": None}] * 2


async def test_hour_aligned_ranges_are_served_by_the_hourly_rollup_alone(world):  # noqa: F811
    # Every edge on an hour: the plan is the hourly roll-up alone, and its answer (custom means
    # included) is the raw definition's, for ranges that end in an hour still being posted to.
    c, store = world["client"], world["store"]
    hour = 3_600_000
    rng = random.Random(7)
    rows, t = [], T0 - 3 * 86_400_000 + 999
    for _ in range(800):
        t += rng.choice([13_001, 61_007, 179_993, 2_400_017])
        custom = {"votes": float(rng.randrange(50))} if rng.random() < 0.5 else {}
        if rng.random() < 0.2:
            custom["messages"] = rng.random()
        rows.append(
            stat(
                "100", t, guilds=rng.choice([None, rng.randrange(1000)]), users=rng.randrange(10**6),
                api_ping=rng.choice([None, float(rng.randrange(500))]), cpu=rng.random() * 100,
                custom=custom,
            )
        )  # fmt: skip
    await store.insert("bot_stats", rows, STATS_COLUMNS)
    last_hour = int(rows[-1][1].timestamp() * 1000) // hour
    cases = [
        ((last_hour + 1) * hour - 72 * hour, (last_hour + 1) * hour, 72),  # ends with the open hour
        ((last_hour + 1) * hour - 96 * hour, (last_hour + 1) * hour, 12),
        ((last_hour - 30) * hour, (last_hour + 2) * hour, 4),  # past the last post
        (T0 - 2 * 86_400_000, T0 + 86_400_000, 3),
    ]
    for start, end, n in cases:
        sql, _ = query_stats.buckets_statement("100", start, end, n)
        assert sql == query_stats.HOURLY_BUCKETS_SQL, (start, end, n)
        status, body = await get(c, "/v1/bot/100", returnStats="true", start=start, end=end, dataPoints=n)
        assert status == 200
        expected = reference(rows, start, end, n)
        span = end - start
        for i, (g, e) in enumerate(zip(body["stats"], expected, strict=True)):
            lo, hi = start + i * span // n, start + (i + 1) * span // n
            inside = [r for r in rows if lo <= int(r[1].timestamp() * 1000 + 0.5) < hi]
            for name in ("votes", "messages"):
                vals = [r[11][name] for r in inside if name in r[11]]
                want = sum(vals) / len(vals) if vals else None
                assert g["custom"][name] == (pytest.approx(want, rel=1e-9) if vals else None), (i, name)
            for k in e:
                want = pytest.approx(e[k], rel=1e-9) if isinstance(e[k], float) else e[k]
                assert g[k] == want, (start, end, n, g["time"], k)


def test_edges_off_the_hour_are_not_served_by_the_hourly_rollup():
    hour = 3_600_000
    rng = random.Random(3)
    for _ in range(2000):  # the hourly plan exactly when no hour is ragged
        start = T0 + rng.choice([0, rng.randrange(24) * hour, rng.randrange(10 * hour)])
        end = start + rng.choice([rng.randrange(1, 400) * hour, rng.randrange(1, 400 * hour)])
        n = rng.choice([1, 2, 3, 4, 6, 8, 24, 90, rng.randrange(1, 1001)])
        hourly = query_stats.buckets_statement("100", start, end, n)[0] == query_stats.HOURLY_BUCKETS_SQL
        assert hourly == (not query_stats.ragged_hours(start, end, n)), (start, end, n)
    for start, end, n in [(T0, T0 + 30 * hour, 7), (T0 + 1, T0 + 24 * hour + 1, 24), (T0, T0 + hour - 1, 1)]:
        assert query_stats.buckets_statement("100", start, end, n)[0] != query_stats.HOURLY_BUCKETS_SQL
    assert query_stats.buckets_statement("100", T0, T0 + 2000 * hour, 7)[0] == query_stats.BUCKETS_SQL
