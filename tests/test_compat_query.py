"""Issue 19 on the read side, on rows written straight into ClickHouse: the Rocket.Chat-style
listing (the seed's own `$regex` example, `_id`, `$or`, `$nin`, `_updatedAt`, `version`, the
`statistics.list` alias and its credentials and errors), an evil regex, search by name,
leaderboards on any metric and ratios, per-shard grid and uptime."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from botpulse.query.app import build_app
from botpulse.registry.catalog import Bot, create_account, now, write_bot
from botpulse.workers.rows import NAMES_COLUMNS, PROPS_COLUMNS, SHARDS_COLUMNS, STATS_COLUMNS
from tests.test_query_stats import get, stat, ts

MIN = 60_000
EVIL = "a" * 40 + "!"


@pytest.fixture
async def world(settings, store, redis) -> AsyncIterator[dict[str, Any]]:
    acc1, key1 = await create_account(store, redis, "one")
    acc2, key2 = await create_account(store, redis, "two")
    for bot_id, acc, name, private in (
        ("g1", acc1.id, "Gaming Music", False),
        ("g2", acc1.id, "music box", False),
        ("g3", acc2.id, "Moderator", False),
        ("g4", acc2.id, "Secret Music", True),
        ("evil", acc2.id, EVIL, False),
    ):
        await write_bot(store, redis, Bot(bot_id, acc, name, None, private, 10, None, now()))
    t = int(time.time() * 1000)
    await store.insert(
        "bot_stats",
        [
            stat("g1", t - 30_000, guilds=100, api_ping=50.0, custom={"kills": 10.0, "deaths": 5.0}),
            stat("g2", t - 60_000, guilds=40, api_ping=20.0, custom={"kills": 9.0, "deaths": 0.0}),
            stat("g3", t - 10 * MIN, guilds=70, api_ping=80.0, custom={"kills": 3.0, "deaths": 1.0}),
            stat("g3", t - 9 * MIN, guilds=70, custom={"kills": 5.0, "deaths": 1.0}),
            stat("g4", t - 5_000, guilds=1),
        ],
        STATS_COLUMNS,
    )
    names = [[b, n, ts(t)] for b in ("g1", "g2", "g3") for n in ("kills", "deaths")]
    await store.insert("custom_metric_names", names, NAMES_COLUMNS)
    props = [
        ["g1", "version", ts(t - MIN), "1.0"],
        ["g1", "version", ts(t), "1.1"],
        ["g2", "version", ts(t), "2.0"],
    ]
    await store.insert("bot_props", props, PROPS_COLUMNS)
    client = TestClient(TestServer(build_app(settings, store), host="127.0.0.1"))
    await client.start_server()
    yield {"client": client, "store": store, "key1": key1, "key2": key2, "acc2": acc2.id, "t": t}
    await client.close()


async def listing(
    c: TestClient, path: str = "/v1/bots", headers: dict[str, str] | None = None, **params: Any
):
    encoded = {k: v if isinstance(v, (str, int)) else json.dumps(v) for k, v in params.items()}
    return await get(c, path, headers=headers or {}, **encoded)


STATS_LIST = "/api/v1/statistics.list"


async def test_rocketchat_listing_seed_example_id_or_nin(world) -> None:
    c = world["client"]
    # Rocket.Chat's own example: `query={ "name": { "$regex": "g" } }` (a substring, case-sensitive).
    status, body = await listing(c, STATS_LIST, query={"name": {"$regex": "g"}})
    assert status == 200, body
    assert [r["_id"] for r in body["statistics"]] == ["g1"]
    assert (body["count"], body["offset"], body["total"], body["success"]) == (1, 0, 1, True)
    # `_id` as a field, `$nin`, `$or`, an anchored case-insensitive `$regex`, with credentials.
    headers = {"X-Auth-Token": world["key2"], "X-User-Id": world["acc2"]}
    query = {
        "$or": [
            {"_id": {"$nin": ["g1", "g2", "g3", "evil"]}},
            {"username": {"$regex": "^music", "$options": "i"}},
        ]
    }
    _, body = await listing(c, STATS_LIST, headers, query=query, sort={"_id": 1})
    assert [r["_id"] for r in body["statistics"]] == ["g2", "g4"]
    # Records carry `_updatedAt` (ISO-8601) and `version` (the bot's `version` property).
    g2 = body["statistics"][0]
    assert g2["version"] == "2.0" and "id" not in g2
    assert dt.datetime.fromisoformat(g2["_updatedAt"]).timestamp() * 1000 >= world["t"] - 61_000
    _, body = await listing(
        c, STATS_LIST, query={"version": {"$regex": "^1\\."}}, fields={"_id": 1, "version": 1}
    )
    assert body["statistics"] == [{"_id": "g1", "version": "1.1"}]
    _, body = await listing(c, STATS_LIST, sort={"_updatedAt": -1}, fields={"username": 1}, count=1)
    assert body["statistics"] == [{"_id": "evil", "username": EVIL}]  # the bot written last


async def test_native_listing_keeps_its_shape_and_learns_the_operators(world) -> None:
    c = world["client"]
    status, body = await listing(c, query={"_id": {"$nin": ["g1"]}, "name": {"$regex": "usic"}})
    assert status == 200
    assert [b["id"] for b in body["bots"]] == ["g2"]
    assert set(body["bots"][0]) == {
        "id", "username", "avatar", "private", "createdAt", "lastSeen", "connectionStatus",
        "guilds", "users", "shards",
    }  # fmt: skip
    _, body = await listing(c, query={"_id": "g1"}, fields={"version": 1, "_updatedAt": 1})
    assert set(body["bots"][0]) == {"id", "version", "_updatedAt"}
    status, body = await listing(c, query={"guilds": {"$regex": "1"}})
    assert status == 400 and body["success"] is False and "text fields" in body["message"]


async def test_statistics_list_credentials_and_error_shape(world) -> None:
    c = world["client"]
    _, body = await listing(c, STATS_LIST)
    assert "g4" not in [r["_id"] for r in body["statistics"]]  # private, no credentials
    _, body = await listing(c, STATS_LIST, {"X-Auth-Token": world["key2"], "X-User-Id": world["acc2"]})
    assert "g4" in [r["_id"] for r in body["statistics"]]
    for headers in (
        {"X-Auth-Token": world["key1"], "X-User-Id": world["acc2"]},  # not this token's user
        {"X-Auth-Token": "DS-nope"},
        {"X-User-Id": world["acc2"]},
    ):
        status, body = await listing(c, STATS_LIST, headers)
        assert status == 401 and body["status"] == "error" and body["message"], headers
    status, body = await listing(c, STATS_LIST, query={"_id": {"$where": "1"}})
    assert status == 400 and body["status"] == "error" and "$where" in body["message"]


async def test_evil_regex_answered_in_bounded_time_or_refused(world) -> None:
    c = world["client"]
    # Catastrophic for a backtracking engine on "aaaa…a!"; RE2 (ClickHouse's `match`) is linear.
    # The wait_for is a hang guard, not a speed measurement.
    for pattern, expected in (("(a+)+$", []), ("^(a|aa)+$", []), ("^(a+)+!$", ["evil"])):
        status, body = await asyncio.wait_for(listing(c, query={"username": {"$regex": pattern}}), 10)
        assert status == 200, (pattern, body)
        assert [b["id"] for b in body["bots"]] == expected, pattern
    for pattern in ("(a)\\1", "(?=a)a", "(?<!b)a", "a{1000}", "a" * 65, "(unclosed", "\\p{L}", "a++", "\\Z"):
        status, body = await listing(c, query={"username": {"$regex": pattern}})
        assert status == 400 and "$regex" in body["message"], pattern
    status, body = await listing(c, query={"username": {"$regex": "a", "$options": "x"}})
    assert status == 400 and "$options" in body["message"]


async def test_search_by_name_case_insensitive_by_last_seen(world) -> None:
    c = world["client"]
    _, body = await get(c, "/v1/bots/search", q="MUSIC")
    assert [b["id"] for b in body["bots"]] == ["g1", "g2"]  # newest post first; g4 is private
    _, body = await get(c, "/v1/bots/search", q="music", headers={"Authorization": world["key2"]})
    assert [b["id"] for b in body["bots"]] == ["g4", "g1", "g2"]
    _, body = await get(c, "/v1/bots/search", q="Music", match="prefix")
    assert [b["id"] for b in body["bots"]] == ["g2"]
    _, body = await get(c, "/v1/bots/search", q="%")  # no LIKE wildcards: a plain substring
    assert body["bots"] == []
    for params, field in (({}, "q"), ({"q": "a", "match": "regex"}, "match"), ({"q": "x" * 65}, "q")):
        status, body = await get(c, "/v1/bots/search", **params)
        assert status == 400 and body["field"] == field


async def test_leaderboards_on_any_metric_and_ratios(world) -> None:
    c = world["client"]
    _, body = await get(c, "/v1/top", metric="kills")  # a custom metric: its mean over the day
    assert body["period"] == "day"
    assert [(b["id"], b["value"]) for b in body["bots"]] == [("g1", 10.0), ("g2", 9.0), ("g3", 4.0)]
    # DCSServerBot's topkdr: kills per death where both exist (g2 has no deaths: left out).
    _, body = await get(c, "/v1/top", metric="kills", per="deaths")
    assert [(b["id"], b["value"]) for b in body["bots"]] == [("g3", 4.0), ("g1", 2.0)]
    # `day`, not `hour`: `hour` is the current clock hour, which g3's posts 10 minutes ago miss
    # in the first minutes of an hour.
    _, body = await get(c, "/v1/top", metric="apiPing", order="asc", period="day")
    assert [(b["id"], b["value"]) for b in body["bots"]] == [("g2", 20.0), ("g1", 50.0), ("g3", 80.0)]
    _, body = await get(c, "/v1/top", metric="guilds", per="kills", limit=1)
    assert [(b["id"], b["value"]) for b in body["bots"]] == [("g3", 17.5)]
    for params, field in (
        ({"metric": "nope"}, "metric"),
        ({"metric": "kills", "per": "nope"}, "per"),
        ({"metric": "kills", "period": "year"}, "period"),
        ({"metric": "kills", "order": "up"}, "order"),
    ):
        status, body = await get(c, "/v1/top", **params)
        assert status == 400 and body["field"] == field, params


async def test_per_shard_grid_latest_values_and_uptime(world) -> None:
    c, store = world["client"], world["store"]
    t0 = world["t"] - 3_600_000  # an hour ago: known shards, both down by now

    def shard(s: int, at: int, up: int, guilds: int, status: str | None = None) -> list[Any]:
        return ["g1", s, ts(t0 + at), f"e{s}-{at}", up, status, guilds, None, 10.0 + s]

    rows = [shard(0, 0, 1, 5), shard(0, MIN, 1, 6), shard(0, 2 * MIN, 1, 7), shard(1, 0, 1, 3)]
    rows.append(shard(1, MIN, 0, 4, "disconnected"))
    await store.insert("shard_stats", rows, SHARDS_COLUMNS)
    _, body = await get(c, "/v1/bot/g1/shards/uptime", start=t0, end=t0 + 10 * MIN, shards="0,1")
    # Window 180 s: shard 0 up from its first post to 180 s after its last; shard 1 up until
    # it reported itself disconnected.
    assert [(s["id"], s["uptime"]) for s in body["shards"]] == [(0, 5 * MIN), (1, MIN)]
    assert body["shards"][0]["percentage"] == 50.0
    _, grid = await get(c, "/v1/bot/g1/shards")
    assert [(s["id"], s["status"], s["guilds"], s["latency"]) for s in grid["shards"]] == [
        (0, "down", 7, 10.0), (1, "down", 4, 11.0),
    ]  # fmt: skip
    assert (grid["shardsUp"], grid["shardsTotal"], grid["connectionState"]) == (0, 2, "disconnected")
    _, bot = await get(c, "/v1/bot/g1")
    # The bot itself posted 30 s ago: still "connected" for old clients, its shards all down.
    assert (bot["connectionStatus"], bot["connectionState"], bot["shardsUp"]) == (
        "connected",
        "disconnected",
        0,
    )
    assert bot["properties"] == {"version": "1.1"}
    _, other = await get(c, "/v1/bot/g2")
    assert (other["connectionState"], other["shardsUp"], other["shardsTotal"]) == ("connected", None, None)
    for params in ({"shards": "0,x"}, {"shards": "99999"}):
        status, body = await get(c, "/v1/bot/g1/shards/uptime", **params)
        assert status == 400 and body["field"] == "shards"
