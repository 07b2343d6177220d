"""Uptime: union of [t, t + window) intervals, hour rounding, the 2-week limit, Datagram-style
auth and shapes, and the DisStat offline periods."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from botpulse.query.app import build_app
from botpulse.query.uptime import floor_hour
from botpulse.registry.catalog import Bot, create_account, now, write_bot
from botpulse.workers.rows import STATS_COLUMNS
from tests.test_query_stats import get, stat

HOUR = 3_600_000
S = 1000  # one second in ms
W = 180 * S  # the default heartbeat window


@pytest.fixture
async def world(settings, store, redis) -> AsyncIterator[dict[str, Any]]:
    acc1, key1 = await create_account(store, redis, "one")
    acc2, key2 = await create_account(store, redis, "two")
    for bot_id, acc, private in [("1", acc1.id, False), ("2", acc1.id, True), ("3", acc2.id, False)]:
        await write_bot(store, redis, Bot(bot_id, acc, f"Bot {bot_id}", None, private, 10, None, now()))
    # H: an hour boundary five hours ago, inside the 2-week reach.
    h = (int(time.time() * 1000) // HOUR - 5) * HOUR
    rows = [
        # Bot 1: up [H, H+240s) (two overlapping windows) and [H+400s, H+580s): 420 s in [H, H+1h).
        stat("1", h, guilds=1), stat("1", h + 60 * S, guilds=1), stat("1", h + 400 * S, guilds=1),
        # Bot 2: one post 60 s before H reaches 120 s into the hour; one 60 s before H+1h only 60 s.
        stat("2", h - 60 * S, guilds=1), stat("2", h + HOUR - 60 * S, guilds=1),
        # Bot 3 belongs to the other account.
        stat("3", h, guilds=1),
    ]  # fmt: skip
    await store.insert("bot_stats", rows, STATS_COLUMNS)
    client = TestClient(TestServer(build_app(settings, store), host="127.0.0.1"))
    await client.start_server()
    yield {"client": client, "store": store, "key1": key1, "key2": key2, "h": h}
    await client.close()


async def test_uptime_union_with_hour_rounding(world):
    c, h, key = world["client"], world["h"], world["key1"]
    # Both ends rounded down to the hour: [H + 1234 ms, H + 1h + 999 ms) -> [H, H + 1h).
    status, body = await get(
        c, "/api/v1/uptime", headers={"Authorization": key},
        partner_node_id="1", started_at=h + 1234, ended_at=h + HOUR + 999,
    )  # fmt: skip
    assert status == 200
    assert body == {"data": {"uptime": 420 * S, "partner_node_id": "1"}}
    status, body = await get(
        c, "/api/v1/uptime", secret=key, partner_node_id="2", started_at=h, ended_at=h + HOUR
    )
    assert body["data"]["uptime"] == 120 * S + 60 * S  # clipped at both ends of the range


def test_hour_rounding_of_the_issue_example():
    assert floor_hour(1752727252516) == 1752724800000
    assert floor_hour(1752724800000) == 1752724800000


async def test_total_uptime_without_range(world):
    c, key = world["client"], world["key1"]
    _, body = await get(c, "/api/v1/uptime", secret=key, partner_node_id="1")
    assert body["data"]["uptime"] == 420 * S
    _, body = await get(c, "/api/v1/uptime", secret=key, partner_node_id="2")
    assert body["data"]["uptime"] == 2 * W  # two windows that never overlap


BAD_CASES = [
    ({"partner_node_id": "1", "started_at": "soon", "ended_at": "1"}, "started_at"),
    ({"partner_node_id": "1", "started_at": "1", "ended_at": "x"}, "ended_at"),
    ({}, "partner_node_id"),
    # 1752727252516 is July 2025: far beyond the 2-week reach.
    ({"partner_node_id": "1", "started_at": "1752727252516", "ended_at": "1752727252516"}, "started_at"),
]


async def test_parameter_rules(world):
    c, h, key = world["client"], world["h"], world["key1"]
    for params, field in BAD_CASES:
        status, body = await get(c, "/api/v1/uptime", secret=key, **params)
        assert status == 400 and body["field"] == field, params
    now_ms = int(time.time() * 1000)
    too_old = now_ms - 15 * 24 * HOUR
    status, body = await get(
        c, "/api/v1/uptime", secret=key, partner_node_id="1", started_at=too_old, ended_at=now_ms
    )
    assert status == 400 and "2 weeks" in body["message"]
    ok = now_ms - 14 * 24 * HOUR  # exactly two weeks: accepted after hour rounding
    status, body = await get(
        c, "/api/v1/uptime", secret=key, partner_node_id="1", started_at=ok, ended_at=now_ms
    )
    assert status == 200 and body["data"]["uptime"] == 420 * S
    status, body = await get(
        c, "/api/v1/uptime", secret=key, partner_node_id="1", started_at=h + HOUR, ended_at=h
    )
    assert status == 400 and body["field"] == "started_at"
    # Equal after rounding: an empty range has no uptime.
    status, body = await get(
        c, "/api/v1/uptime", secret=key, partner_node_id="1", started_at=h + 5, ended_at=h + 10
    )
    assert status == 200 and body["data"]["uptime"] == 0


async def test_keys_and_ownership(world):
    c = world["client"]
    status, body = await get(c, "/api/v1/uptime", partner_node_id="1")
    assert status == 401 and body["message"]
    status, body = await get(c, "/api/v1/uptime", partner_node_id="1", secret="DS-not-a-key")
    assert status == 401
    # Another account's bot is invisible, the same as a bot that does not exist.
    status, body = await get(c, "/api/v1/uptime", partner_node_id="3", secret=world["key1"])
    assert status == 404 and body["message"]
    status, body = await get(c, "/api/v1/uptime", partner_node_id="1", secret=world["key2"])
    assert status == 404
    status, body = await get(c, "/api/v1/uptime", partner_node_id="1' OR 1=1 --", secret=world["key1"])
    assert status == 404


async def test_many_uptimes_in_request_order(world):
    c, h, key = world["client"], world["h"], world["key1"]
    resp = await c.get(
        "/api/v1/uptimes",
        params=[("partner_node_id[]", "2"), ("partner_node_id[]", "3"), ("partner_node_id[]", "1"),
                ("started_at", str(h)), ("ended_at", str(h + HOUR))],
        headers={"Authorization": key},
    )  # fmt: skip
    assert resp.status == 200
    data = (await resp.json())["data"]
    assert [d["partner_node_id"] for d in data] == ["2", "3", "1"]
    assert data[0]["uptime"] == 180 * S and data[2]["uptime"] == 420 * S
    assert data[1]["uptime"] is None and data[1]["message"]  # not this account's bot
    too_many = [("partner_node_id[]", str(i)) for i in range(101)]
    resp = await c.get("/api/v1/uptimes", params=too_many, headers={"Authorization": key})
    assert resp.status == 400 and (await resp.json())["field"] == "partner_node_id[]"


async def test_partner_detail(world):
    c, key = world["client"], world["key1"]
    status, body = await get(c, "/api/v1/partner/detail", partner_node_id="1", secret=key)
    assert status == 200
    assert body == {
        "data": {"connection_status": "disconnected", "total_uptime": 420 * S, "partner_node_id": "1"}
    }
    recent = int(time.time() * 1000) - 30 * S
    await world["store"].insert("bot_stats", [stat("2", recent, guilds=1)], STATS_COLUMNS)
    resp = await c.get(
        "/api/v1/partner/details",
        params=[("partner_node_id[]", "2"), ("partner_node_id[]", "1")],
        headers={"Authorization": key},
    )
    data = (await resp.json())["data"]
    assert [d["connection_status"] for d in data] == ["connected", "disconnected"]
    assert data[0]["total_uptime"] == 3 * W


async def test_disstat_uptime_with_offline_periods(world):
    c, h = world["client"], world["h"]
    status, body = await get(c, "/v1/bot/1/uptime", start=h, end=h + HOUR)
    assert status == 200
    assert body["uptime"] == 420 * S
    assert body["percentage"] == pytest.approx(420 / 3600 * 100, abs=1e-4)
    assert body["offline"] == [
        {"from": h + 240 * S, "to": h + 400 * S},
        {"from": h + 580 * S, "to": h + HOUR},
    ]
    # A gap before the first window in range, and a range with no post at all.
    _, body = await get(c, "/v1/bot/1/uptime", start=h - HOUR, end=h + 100 * S)
    assert body["uptime"] == 100 * S and body["offline"] == [{"from": h - HOUR, "to": h}]
    _, body = await get(c, "/v1/bot/1/uptime", start=h - 2 * HOUR, end=h - HOUR)
    assert body["uptime"] == 0 and body["offline"] == [{"from": h - 2 * HOUR, "to": h - HOUR}]
    # Private bot: 404 without its account's key.
    status, _ = await get(c, "/v1/bot/2/uptime", start=h, end=h + HOUR)
    assert status == 404
    status, body = await get(c, "/v1/bot/2/uptime", start=h, end=h + HOUR, apikey=world["key1"])
    assert status == 200 and body["uptime"] == 180 * S
    assert body["offline"] == [{"from": h + 120 * S, "to": h + HOUR - 60 * S}]
