"""Both bucket plans of `query/stats.py` give the raw definition: the direct read of the posts
(short ranges) and the two-level plan (hourly roll-up + ragged hours, long ranges). The shared
cases and the plain-Python reference live in `test_query_stats.py`."""

from __future__ import annotations

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
