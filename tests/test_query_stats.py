"""`GET /v1/bot/{botId}`: bot info, privacy, and `returnStats` bucketing checked against
hand-computed values and against a plain-Python reading of the raw definition."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from botpulse.query.app import build_app
from botpulse.query.stats import ragged_hours
from botpulse.registry.catalog import Bot, create_account, now, write_bot
from botpulse.workers.rows import CUSTOM_COLUMNS, STATS_COLUMNS

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN = 60_000


def ts(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def stat(bot: str, ms: int, **f: Any) -> list[Any]:
    return [
        bot, ts(ms), uuid.uuid4().hex, f.get("guilds"), f.get("users"), f.get("shards"),
        f.get("api_ping"), f.get("ram_usage"), f.get("ram_total"), f.get("cpu"), f.get("bandwidth"),
        f.get("custom", {}),
    ]  # fmt: skip


def entry(bot: str, ms: int, type_: str, value1: str | None) -> list[Any]:
    return [bot, ts(ms), uuid.uuid4().hex, type_, value1, None, None, None, None, None]


@pytest.fixture
async def world(settings, store, redis) -> AsyncIterator[dict[str, Any]]:
    acc1, key1 = await create_account(store, redis, "one")
    _acc2, key2 = await create_account(store, redis, "two")
    created = now()
    await write_bot(store, redis, Bot("100", acc1.id, "Public", "av.png", False, 10, None, created))
    await write_bot(store, redis, Bot("200", acc1.id, "Secret", None, True, 10, None, created))
    client = TestClient(TestServer(build_app(settings, store), host="127.0.0.1"))
    await client.start_server()
    yield {"client": client, "store": store, "key1": key1, "key2": key2, "created": created}
    await client.close()


async def get(client: TestClient, path: str, **params: Any) -> tuple[int, dict[str, Any]]:
    headers = params.pop("headers", {})
    resp = await client.get(path, params={k: str(v) for k, v in params.items()}, headers=headers)
    return resp.status, await resp.json()


async def test_bot_info_fields_and_privacy(world):
    c, store = world["client"], world["store"]
    await store.insert("bot_stats", [stat("100", T0, guilds=1)], STATS_COLUMNS)
    await store.insert(
        "custom_metric_names", [["100", "votes", ts(T0)], ["100", "messages", ts(T0)]],
        ["bot_id", "name", "first_seen"],
    )  # fmt: skip
    status, body = await get(c, "/v1/bot/100")
    assert status == 200
    assert body["id"] == "100" and body["username"] == "Public" and body["avatar"] == "av.png"
    assert body["private"] is False
    assert body["lastSeen"] == T0
    assert body["connectionStatus"] == "disconnected"  # 2026-01-01 is long past the window
    assert body["customGraphs"] == ["messages", "votes"]
    assert body["createdAt"] == int(world["created"].timestamp() * 1000)
    assert "stats" not in body
    # Registered custom graphs are present (null) in every bucket, with or without a given start.
    _, body = await get(c, "/v1/bot/100", returnStats="true", start=T0, end=T0 + MIN, dataPoints=2)
    assert [b["custom"] for b in body["stats"]] == [{"messages": None, "votes": None}] * 2
    _, body = await get(c, "/v1/bot/100", returnStats="true", dataPoints=2)
    assert body["range"]["start"] == T0
    assert [b["custom"] for b in body["stats"]] == [{"messages": None, "votes": None}] * 2

    for headers, params in [
        ({}, {}),
        ({"Authorization": world["key2"]}, {}),
        ({}, {"apikey": world["key2"]}),
    ]:
        status, body = await get(c, "/v1/bot/200", headers=headers, **params)
        assert status == 404 and body["message"]
    status, missing = await get(c, "/v1/bot/999")
    assert status == 404 and missing["message"] == body["message"]  # indistinguishable
    status, body = await get(c, "/v1/bot/200", headers={"Authorization": f"Bearer {world['key1']}"})
    assert status == 200 and body["private"] is True
    status, body = await get(c, "/v1/bot/200", apikey=world["key1"])
    assert status == 200
    # Injection in the id is only ever a lookup that does not match.
    status, body = await get(c, "/v1/bot/100' OR '1'='1")
    assert status == 404


async def test_connected_when_last_post_within_window(world):
    c, store = world["client"], world["store"]
    recent = int(now().timestamp() * 1000) - 60_000
    await store.insert("bot_stats", [stat("100", recent, guilds=1)], STATS_COLUMNS)
    _, body = await get(c, "/v1/bot/100")
    assert body["connectionStatus"] == "connected"
    assert body["lastSeen"] == recent


async def test_buckets_last_vs_average_edges_and_gaps(world):
    c, store = world["client"], world["store"]
    rows = [
        stat("100", T0 - 1, guilds=999, api_ping=999.0),  # before start: excluded
        stat("100", T0, guilds=10, users=100, api_ping=10.0, cpu=1.0, custom={"votes": 2.0}),
        stat("100", T0 + 30_000, guilds=11, api_ping=20.0, custom={"votes": 4.0}),
        stat("100", T0 + 59_999, guilds=12, api_ping=30.0, ram_total=8.0),
        stat("100", T0 + MIN, guilds=20, api_ping=5.0),  # first ms of bucket 1
        stat("100", T0 + 4 * MIN - 1, guilds=40, shards=2),  # last ms of the last bucket
        stat("100", T0 + 4 * MIN, guilds=777),  # == end: excluded
    ]
    await store.insert("bot_stats", rows, STATS_COLUMNS)
    status, body = await get(c, "/v1/bot/100", returnStats="true", start=T0, end=T0 + 4 * MIN, dataPoints=4)
    assert status == 200, body
    stats = body["stats"]
    assert [b["time"] for b in stats] == [T0, T0 + MIN, T0 + 2 * MIN, T0 + 3 * MIN]
    b0, b1, b2, b3 = stats
    # Last non-null value per "last" field; mean of the non-null values per averaged field.
    assert (b0["guilds"], b0["users"], b0["shards"], b0["ramTotal"]) == (12, 100, None, 8.0)
    assert b0["apiPing"] == pytest.approx(20.0) and b0["cpu"] == pytest.approx(1.0)
    assert b0["ramUsage"] is None
    assert b0["custom"] == {"votes": pytest.approx(3.0)}  # mean over the posts that carried it
    assert (b1["guilds"], b1["apiPing"], b1["users"]) == (20, 5.0, None)
    assert b1["custom"] == {"votes": None}
    assert all(b2[k] is None for k in ("guilds", "users", "apiPing", "cpu", "bandwidth"))
    assert (b3["guilds"], b3["shards"]) == (40, 2)
    assert body["range"] == {"start": T0, "end": T0 + 4 * MIN, "dataPoints": 4}


async def test_unaligned_bucket_widths_use_ceil_times(world):
    c, store = world["client"], world["store"]
    # [T0, T0+100) in 3 buckets: a post at t goes to floor((t - T0) * 3 / 100).
    rows = [stat("100", T0 + d, guilds=d) for d in (0, 33, 34, 66, 67, 99)]
    await store.insert("bot_stats", rows, STATS_COLUMNS)
    _, body = await get(c, "/v1/bot/100", returnStats="1", start=T0, end=T0 + 100, dataPoints=3)
    assert [b["time"] for b in body["stats"]] == [T0, T0 + 34, T0 + 67]
    assert [b["guilds"] for b in body["stats"]] == [33, 66, 99]


async def test_timestamp_formats_and_defaults(world):
    c, store = world["client"], world["store"]
    await store.insert(
        "bot_stats",
        [stat("100", T0 + 5 * MIN, guilds=5), stat("100", T0 + 10 * MIN, guilds=6)],
        STATS_COLUMNS,
    )
    _, by_ms = await get(c, "/v1/bot/100", returnStats="True", start=T0, end=T0 + 20 * MIN, dataPoints=2)
    _, by_s = await get(
        c, "/v1/bot/100", returnStats="true", start=T0 // 1000, end=(T0 + 20 * MIN) // 1000, dataPoints=2
    )
    _, by_iso = await get(
        c,
        "/v1/bot/100",
        returnStats="true",
        start="2026-01-01T00:00:00Z",
        end="2026-01-01T00:20:00+00:00",
        dataPoints=2,
    )
    assert by_ms["stats"] == by_s["stats"] == by_iso["stats"]
    assert [b["guilds"] for b in by_ms["stats"]] == [5, 6]
    # start defaults to the first point, end to now; dataPoints to 90.
    _, body = await get(c, "/v1/bot/100", returnStats="true")
    assert body["range"]["start"] == T0 + 5 * MIN and len(body["stats"]) == 90
    assert body["range"]["end"] >= int(now().timestamp() * 1000) - 60_000


BAD_CASES = [
    ({"dataPoints": "0"}, "dataPoints"),
    ({"dataPoints": "1001"}, "dataPoints"),
    ({"dataPoints": "ten"}, "dataPoints"),
    ({"start": "yesterday"}, "start"),
    ({"end": "NaN"}, "end"),
    ({"start": str(T0), "end": str(T0)}, "start"),
    ({"start": str(T0 + 1), "end": str(T0)}, "start"),
    ({"returnStats": "maybe"}, "returnStats"),
]


async def test_bad_parameters_are_400_naming_the_parameter(world):
    for params, field in BAD_CASES:
        status, body = await get(world["client"], "/v1/bot/100", **{"returnStats": "true", **params})
        assert status == 400, params
        assert body["field"] == field and field in body["message"], params


async def test_custom_totals_and_bot_top(world):
    c, store = world["client"], world["store"]
    entries = [
        entry("100", T0 + i, "command", v)
        for i, v in enumerate(["help", "play", "help", "help", "play", "stop"])
    ]
    entries += [entry("100", T0 + 10, "vote", None), entry("100", T0 + 20 * MIN, "command", "late")]
    await store.insert("custom_events", entries, CUSTOM_COLUMNS)
    _, body = await get(c, "/v1/bot/100", returnStats="true", start=T0, end=T0 + MIN, dataPoints=1)
    assert body["customTotals"] == {
        "command": {
            "count": 6,
            "top": [
                {"value": "help", "count": 3},
                {"value": "play", "count": 2},
                {"value": "stop", "count": 1},
            ],
        },
        "vote": {"count": 1, "top": []},
    }
    status, top = await get(c, "/v1/bot/100/top", type="command", limit=2, start=T0, end=T0 + 30 * MIN)
    assert status == 200
    assert top["count"] == 7
    assert top["top"] == [{"value": "help", "count": 3}, {"value": "play", "count": 2}]
    status, top = await get(c, "/v1/bot/200/top", type="command")
    assert status == 404  # private, no key
    status, body = await get(c, "/v1/bot/100/top")
    assert status == 400 and body["field"] == "type"


# --- the roll-up plan equals the raw definition ----------------------------------------------------
def reference(rows: list[list[Any]], start: int, end: int, n: int) -> list[dict[str, Any]]:
    span = end - start
    out = []
    for i in range(n):
        lo = start + -((-i * span) // n)
        hi = start + -((-(i + 1) * span) // n)
        inside = sorted(
            (r for r in rows if lo <= int(r[1].timestamp() * 1000 + 0.5) < hi), key=lambda r: r[1]
        )
        b: dict[str, Any] = {"time": lo}
        for name, col in (("guilds", 3), ("users", 4), ("shards", 5), ("ramTotal", 8)):
            vals = [r[col] for r in inside if r[col] is not None]
            b[name] = vals[-1] if vals else None
        for name, col in (("apiPing", 6), ("ramUsage", 7), ("cpu", 9), ("bandwidth", 10)):
            vals = [r[col] for r in inside if r[col] is not None]
            b[name] = sum(vals) / len(vals) if vals else None
        out.append(b)
    return out


async def test_rollup_plan_matches_raw_definition(world):
    c, store = world["client"], world["store"]
    rng = random.Random(5)
    base = T0 - 2 * 86_400_000 + 1234
    rows = []
    t = base
    for _ in range(1500):  # ~4 days, irregular gaps (some longer than an hour), distinct ms
        t += rng.choice([7_001, 45_013, 61_007, 180_000, 900_011, 4_000_003])
        rows.append(
            stat(
                "100", t,
                guilds=rng.randrange(1000) if rng.random() < 0.9 else None,
                users=rng.randrange(10**6), shards=rng.choice([None, 1, 2]),
                api_ping=rng.choice([None, float(rng.randrange(500))]),
                ram_usage=float(rng.randrange(10**6)), ram_total=float(rng.randrange(10**6)),
                cpu=rng.random() * 100, bandwidth=None,
            )
        )  # fmt: skip
    await store.insert("bot_stats", rows, STATS_COLUMNS)
    first, last = int(rows[0][1].timestamp() * 1000), int(rows[-1][1].timestamp() * 1000)
    cases = [
        (first, last + 1, 90),
        (first - 5, last + 7, 7),  # buckets longer than a day, unaligned
        (T0 - 86_400_000, T0 + 86_400_000, 2),  # day-aligned buckets: served from bot_stats_1d
        (T0 - 3_600_000 + 17, T0 + 5 * 3_600_000 - 3, 13),
        (first + 12_345, first + 12_345 + 3 * 86_400_000, 1000),
    ]
    for start, end, n in cases:
        status, body = await get(c, "/v1/bot/100", returnStats="true", start=start, end=end, dataPoints=n)
        assert status == 200
        expected = reference(rows, start, end, n)
        got = [{k: v for k, v in b.items() if k != "custom"} for b in body["stats"]]
        assert len(got) == n
        for g, e in zip(got, expected, strict=True):
            assert g.keys() == e.keys()
            for k in e:
                if isinstance(e[k], float):
                    assert g[k] == pytest.approx(e[k], rel=1e-9), (start, end, n, g["time"], k)
                else:
                    assert g[k] == e[k], (start, end, n, g["time"], k)


def test_ragged_hours_are_exactly_the_hours_the_hourly_rollup_cannot_serve():
    # Brute force over every hour touching the range: an hour is served by bot_stats_1h only if
    # it lies inside [start, end) and inside one bucket.
    rng = random.Random(11)
    hour = 3_600_000
    for _ in range(300):
        start = T0 + rng.choice([0, rng.randrange(hour), rng.randrange(10 * hour)])
        end = start + rng.choice([1, 59_999, hour, rng.randrange(1, 3 * 86_400_000)])
        n = rng.choice([1, 2, 3, 7, 24, 90, rng.randrange(1, 1001)])
        span = end - start

        def idx(t: int, start: int = start, n: int = n, span: int = span) -> int:
            return (t - start) * n // span

        expected = []
        for h in range(start // hour, (end - 1) // hour + 1):
            lo, hi = h * hour, (h + 1) * hour
            if not (lo >= start and hi <= end and idx(lo) == idx(hi - 1)):
                expected.append(h)
        assert ragged_hours(start, end, n) == expected, (start, end, n)
