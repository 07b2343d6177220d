"""`GET /v1/bots` filters, projection, sort and paging; leaderboards; CORS; the path prefix."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from botpulse.query.app import build_app
from botpulse.registry.catalog import Bot, create_account, now, write_bot
from botpulse.workers.rows import STATS_COLUMNS
from tests.test_query_stats import T0, get, stat


@pytest.fixture
async def world(settings, store, redis) -> AsyncIterator[dict[str, Any]]:
    acc1, key1 = await create_account(store, redis, "one")
    acc2, key2 = await create_account(store, redis, "two")
    bots = [
        ("a", acc1.id, False),
        ("b", acc2.id, False),
        ("c", acc1.id, True),
        ("d", acc2.id, True),
        ("e", acc2.id, False),
    ]
    for bot_id, acc, private in bots:
        await write_bot(
            store, redis, Bot(bot_id, acc, f"Bot {bot_id.upper()}", None, private, 10, None, now())
        )
    recent = int(time.time() * 1000) - 10_000
    rows = [
        stat("a", T0, guilds=90, users=1),
        stat("a", T0 + 86_400_000, guilds=100, users=None, shards=4),
        stat("b", recent, guilds=50, users=500, shards=1),
        stat("c", T0, guilds=70, users=700),
        stat("d", T0, guilds=1000, users=1),
    ]  # fmt: skip  (e has never posted)
    await store.insert("bot_stats", rows, STATS_COLUMNS)
    client = TestClient(TestServer(build_app(settings, store), host="127.0.0.1"))
    await client.start_server()
    yield {"client": client, "key1": key1, "key2": key2, "recent": recent}
    await client.close()


async def listing(c: TestClient, key: str | None = None, **params: Any) -> tuple[int, dict[str, Any]]:
    encoded = {k: v if isinstance(v, (str, int)) else json.dumps(v) for k, v in params.items()}
    headers = {"Authorization": key} if key else {}
    return await get(c, "/v1/bots", headers=headers, **encoded)


async def test_public_bots_plus_own_private(world):
    c = world["client"]
    status, body = await listing(c)
    assert status == 200
    assert [b["id"] for b in body["bots"]] == ["a", "b", "e"]
    assert (body["count"], body["offset"], body["total"], body["success"]) == (3, 0, 3, True)
    a, b, e = body["bots"]
    # Latest non-null values: a's users comes from its older post.
    assert (a["guilds"], a["users"], a["shards"], a["lastSeen"]) == (100, 1, 4, T0 + 86_400_000)
    assert a["connectionStatus"] == "disconnected" and b["connectionStatus"] == "connected"
    assert (e["guilds"], e["lastSeen"], e["connectionStatus"]) == (None, None, "disconnected")
    assert set(a) == {
        "id",
        "username",
        "avatar",
        "private",
        "createdAt",
        "lastSeen",
        "connectionStatus",
        "guilds",
        "users",
        "shards",
    }
    _, body = await listing(c, world["key1"])
    assert [b["id"] for b in body["bots"]] == ["a", "b", "c", "e"]
    _, body = await listing(c, world["key2"])
    assert [b["id"] for b in body["bots"]] == ["a", "b", "d", "e"]


FILTER_CASES = [
    ({"guilds": {"$gt": 60}}, ["a", "c"]),
    ({"guilds": {"$gte": 50, "$lt": 100}}, ["b", "c"]),
    ({"guilds": {"$lte": 70}}, ["b", "c"]),
    ({"guilds": 100}, ["a"]),
    ({"guilds": None}, ["e"]),
    ({"guilds": {"$ne": 100}}, ["b", "c", "e"]),
    ({"id": {"$in": ["a", "c", "zzz"]}}, ["a", "c"]),
    ({"id": {"$in": []}}, []),
    ({"username": "Bot B"}, ["b"]),
    ({"private": True}, ["c"]),
    ({"private": False, "shards": {"$gte": 1}}, ["a", "b"]),
    ({"connectionStatus": "connected"}, ["b"]),
    ({"connectionStatus": {"$ne": "connected"}}, ["a", "c", "e"]),
    ({"lastSeen": {"$lt": T0 + 1}}, ["c"]),
    # Injection attempts in values are just values that match nothing.
    ({"username": "x' OR '1'='1"}, []),
    ({"id": {"$in": ["a') OR 1=1 --"]}}, []),
]


async def test_filters(world):
    # One world for every case: each case is a separate request against the same bots.
    for query, expected in FILTER_CASES:
        status, body = await listing(world["client"], world["key1"], query=query)
        assert status == 200, (query, body)
        assert [b["id"] for b in body["bots"]] == expected, query
        assert body["total"] == len(expected), query


BAD_CASES = [
    {"query": "{not json"},
    {"query": "[1, 2]"},
    {"query": {"account_id": "x"}},
    {"query": {"guilds": {"$where": "1"}}},
    {"query": {"guilds": {"$gt": "1) OR 1=1 --"}}},
    {"query": {"private": "yes"}},
    {"query": {"id": {"$in": "a"}}},
    {"query": {"guilds; DROP TABLE bots": 1}},
    {"query": {"guilds": {"$gt": 2**70}}},
    {"sort": {"guilds": 2}},
    {"sort": {"guilds DESC, (SELECT 1)": 1}},
    {"sort": "guilds"},
    {"fields": {"id": 1, "guilds": 0}},
    {"fields": {"key_hash": 1}},
    {"count": "0"},
    {"count": "101"},
    {"offset": "-1"},
    {"offset": "x"},
]


async def test_bad_listing_parameters(world):
    for params in BAD_CASES:
        status, body = await listing(world["client"], **params)
        assert status == 400, params
        assert body["success"] is False and body["error"] and body["message"] == body["error"]


async def test_sort_fields_and_paging(world):
    c, key = world["client"], world["key1"]
    _, body = await listing(c, key, sort={"guilds": -1})
    assert [b["id"] for b in body["bots"]] == ["a", "c", "b", "e"]  # no value sorts last
    _, body = await listing(c, key, sort={"private": -1, "id": -1})
    assert [b["id"] for b in body["bots"]] == ["c", "e", "b", "a"]
    _, body = await listing(c, key, fields={"guilds": 1})
    assert body["bots"][0] == {"id": "a", "guilds": 100}
    _, body = await listing(c, key, fields={"guilds": 1, "id": 0})
    assert body["bots"][0] == {"guilds": 100}
    _, body = await listing(c, key, fields={"avatar": 0, "createdAt": 0, "users": 0})
    assert set(body["bots"][0]) == {
        "id",
        "username",
        "private",
        "lastSeen",
        "connectionStatus",
        "guilds",
        "shards",
    }
    _, page = await listing(c, key, count=2, offset=1)
    assert [b["id"] for b in page["bots"]] == ["b", "c"]
    assert (page["count"], page["offset"], page["total"]) == (2, 1, 4)
    _, page = await listing(c, key, count=2, offset=10)
    assert (page["bots"], page["count"], page["total"]) == ([], 0, 4)


async def test_leaderboard(world):
    c = world["client"]
    status, body = await get(c, "/v1/top", metric="guilds", limit=2)
    assert status == 200
    # Public bots only, by latest value (d's 1000 is private; a's latest is 100, not 90).
    assert [(b["rank"], b["id"], b["value"]) for b in body["bots"]] == [(1, "a", 100), (2, "b", 50)]
    _, body = await get(c, "/v1/top", metric="users")
    assert [(b["id"], b["value"]) for b in body["bots"]] == [("b", 500), ("a", 1)]
    status, body = await get(c, "/v1/top", metric="guilds; DROP TABLE bots")
    assert status == 400 and body["field"] == "metric"
    status, body = await get(c, "/v1/top", limit="0")
    assert status == 400 and body["field"] == "limit"


async def test_cors_on_get_and_preflight(world):
    c = world["client"]
    resp = await c.get("/v1/bots", headers={"Origin": "https://dash.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    resp = await c.get("/v1/bot/nope")
    assert resp.status == 404 and resp.headers["Access-Control-Allow-Origin"] == "*"
    resp = await c.options(
        "/v1/bot/a", headers={"Origin": "https://dash.example", "Access-Control-Request-Method": "GET",
                              "Access-Control-Request-Headers": "authorization"}
    )  # fmt: skip
    assert resp.status == 204
    assert "GET" in resp.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]


async def test_routes_live_under_the_prefix(make_settings, store, redis):
    settings = make_settings(query_prefix="/stats")
    acc, _ = await create_account(store, redis, "p")
    await write_bot(store, redis, Bot("p1", acc.id, "Prefixed", None, False, 10, None, now()))
    async with TestClient(TestServer(build_app(settings, store), host="127.0.0.1")) as c:
        resp = await c.get("/stats/v1/bot/p1")
        assert resp.status == 200 and (await resp.json())["username"] == "Prefixed"
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert (await c.get("/stats/healthz")).status == 200
        assert (await c.get("/stats/readyz")).status == 200
        assert (await c.get("/stats/v1/bots")).status == 200
        assert (await c.get("/v1/bot/p1")).status == 404
