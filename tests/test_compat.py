"""Issue 19 through the whole pipeline (gateway -> stream -> embedded worker -> ClickHouse ->
query): extra properties, the DBots base path, the gateway prefix, and shard-aware stats from
two client shapes, with degraded status appearing and clearing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from ingest_server import GatewayServer

from botpulse.embedded_worker import with_embedded_worker
from botpulse.ingest.app import DROPPED_PROPS_HEADER
from botpulse.query import app as query_app
from botpulse.registry.catalog import Bot, create_account, now, write_bot
from botpulse.schemas.stream import SHARD_FORGET_MS, decode_event, partition_of, shard_state_key

BOT = "19019"


class Pipeline:
    def __init__(self, gateway: TestClient, reader: TestClient, key: str, store: Any) -> None:
        self.gateway, self.reader, self.key, self.store = gateway, reader, key, store

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        return await self.gateway.post(path, json=body, headers={"Authorization": self.key})

    async def bot(self, **params: str) -> dict[str, Any]:
        return await (await self.reader.get(f"/v1/bot/{BOT}", params=params)).json()

    async def until(self, check: Callable[[], Awaitable[bool]], what: str) -> None:
        """Waits for the embedded worker to write (a hang guard, not a speed measurement)."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if await check():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"never saw {what}")

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return await self.store.query(sql, {"id": BOT})


@pytest.fixture
async def make_pipeline(make_settings, store, redis) -> AsyncIterator[Callable[..., Awaitable[Pipeline]]]:
    clients: list[TestClient] = []

    async def make(**overrides: Any) -> Pipeline:
        settings = make_settings(**overrides)
        account, key = await create_account(store, redis, "compat")
        await write_bot(store, redis, Bot(BOT, account.id, "Compat Bot", None, False, 10, None, now()))
        gateway = TestClient(GatewayServer(settings))
        reader = TestClient(
            TestServer(with_embedded_worker(query_app.build_app(settings, store)), host="127.0.0.1")
        )
        for c in (gateway, reader):
            await c.start_server()
            clients.append(c)
        return Pipeline(gateway, reader, key, store)

    yield make
    for c in reversed(clients):
        await c.close()


# --- extra properties -------------------------------------------------------------------------


async def test_extra_properties_latest_value_bounded_and_dropped_reported(make_pipeline) -> None:
    p = await make_pipeline(property_slots=2)
    # DisStat stores any extra property of a post: here a version string and a flag.
    resp = await p.post(f"/v1/bot/{BOT}", {"guilds": 5, "version": "2.4.1", "beta": True})
    assert resp.status == 204 and DROPPED_PROPS_HEADER not in resp.headers
    await p.until(lambda: _has_props(p, {"version": "2.4.1", "beta": "true"}), "the first properties")
    # A later value replaces the earlier one; a third name is over the bot's 2 slots: dropped
    # and reported, the post itself accepted.
    resp = await p.post(f"/v1/bot/{BOT}", {"guilds": 6, "version": "2.5.0", "region": "eu west"})
    assert resp.status == 204
    assert resp.headers[DROPPED_PROPS_HEADER] == "region"
    await p.until(lambda: _has_props(p, {"version": "2.5.0", "beta": "true"}), "the newer version")
    assert (await p.bot())["properties"] == {"beta": "true", "version": "2.5.0"}
    assert await p.rows("SELECT guilds FROM bot_stats WHERE bot_id = {id:String} ORDER BY ts") == [(5,), (6,)]
    # Bounds: a value over 128 characters is refused, naming the property.
    resp = await p.post(f"/v1/bot/{BOT}", {"guilds": 7, "version": "x" * 129})
    assert resp.status == 400 and (await resp.json())["field"] == "version"


async def _has_props(p: Pipeline, expected: dict[str, str]) -> bool:
    return (await p.bot())["properties"] == expected


# --- paths and prefixes -------------------------------------------------------------------------


async def test_dbots_route_under_its_documented_base_and_gateway_prefix(make_pipeline) -> None:
    p = await make_pipeline(gateway_prefix="/stats")
    # DBots' documented base: POST /api/v1/bots/{id}/stats, here under the gateway prefix.
    resp = await p.post(f"/stats/api/v1/bots/{BOT}/stats", {"guildCount": 42, "shardCount": 1})
    assert resp.status == 200 and await resp.json() == {"guildCount": 42}
    resp = await p.post(f"/stats/bots/{BOT}/stats", {"guildCount": 43})
    assert resp.status == 200
    resp = await p.post(f"/stats/v1/bot/{BOT}", {"guilds": 44})  # the hot route honours it too
    assert resp.status == 204
    for path in (f"/v1/bot/{BOT}", f"/api/v1/bots/{BOT}/stats"):
        resp = await p.post(path, {"guilds": 1, "guildCount": 1})
        assert resp.status == 404, path
    await p.until(lambda: _guilds(p, [42, 43, 44]), "three posts")


async def _guilds(p: Pipeline, expected: list[int]) -> bool:
    rows = await p.rows("SELECT guilds FROM bot_stats WHERE bot_id = {id:String} ORDER BY ts")
    return [r[0] for r in rows] == expected


# --- shards -------------------------------------------------------------------------------------


async def test_per_shard_posts_dbots_shape_sum_into_totals_and_degrade(make_pipeline, redis) -> None:
    p = await make_pipeline(shard_total_interval_s=1, shard_limit=16)
    # discord.bots.gg clients post once per shard: guildCount is that shard's.
    for shard, guilds in ((0, 100), (1, 50), (2, 25)):
        resp = await p.post(
            f"/api/v1/bots/{BOT}/stats", {"guildCount": guilds, "shardCount": 3, "shardId": shard}
        )
        assert resp.status == 200, await resp.text()
    await p.until(lambda: _shard_ids(p, [0, 1, 2]), "three shards")
    await p.until(lambda: _shards_total(p, 3), "three shards in the bot's answer")
    body = await p.bot()
    assert (body["connectionStatus"], body["connectionState"]) == ("connected", "connected")
    assert (body["shardsUp"], body["shardsTotal"]) == (3, 3)
    # The first shard post wrote the totals then (one shard known, 3 reported); after the
    # interval the next shard post writes them again: the sum over every shard's latest value.
    await asyncio.sleep(1.1)
    resp = await p.post(f"/v1/bot/{BOT}", {"guilds": 30, "shardId": 2, "shards": 3, "status": "disconnected"})
    assert resp.status == 204, await resp.text()
    await p.until(lambda: _latest_total(p, (180, 3)), "the summed totals")
    # The bot's buckets read those totals by the usual rules (one bucket: the newest value).
    body = await p.bot(returnStats="true", dataPoints="1", start=str(int(time.time() * 1000) - 600_000))
    assert [(b["guilds"], b["shards"]) for b in body["stats"]] == [(180, 3)]
    # Shard 2 reported itself disconnected: the bot is degraded, still "connected" for clients
    # that know only the two old values.
    await p.until(lambda: _state(p, ("connected", "degraded", 2, 3)), "degraded")
    grid = await (await p.reader.get(f"/v1/bot/{BOT}/shards")).json()
    assert [(s["id"], s["status"], s["guilds"]) for s in grid["shards"]] == [
        (0, "up", 100), (1, "up", 50), (2, "down", 30),
    ]  # fmt: skip
    assert grid["shards"][2]["reportedStatus"] == "disconnected"
    # It comes back: the degradation clears.
    resp = await p.post(f"/v1/bot/{BOT}", {"guilds": 31, "shardId": 2, "status": "ready"})
    assert resp.status == 204
    await p.until(lambda: _state(p, ("connected", "connected", 3, 3)), "the degradation cleared")
    # Bounds: ids are validated against the operator's limit and the shard count.
    for body, field in (
        ({"guilds": 1, "shardId": 16}, "shardId"),
        ({"guilds": 1, "shardId": -1}, "shardId"),
        ({"guilds": 1, "shardId": "x"}, "shardId"),
        ({"guilds": 1, "shardId": 3, "shards": 3}, "shardId"),
    ):
        resp = await p.post(f"/v1/bot/{BOT}", body)
        assert resp.status == 400 and (await resp.json())["field"] == field, body
    # Each shard has its own rate limit (shard 2 posted three times, the others once), kept in
    # the bot's shard hash, which expires with the shards.
    state = shard_state_key(partition_of(BOT, 1), BOT)
    assert {await redis.hexists(state, f"r:{i}") for i in range(3)} == {True}
    assert 0 < await redis.pttl(state) <= SHARD_FORGET_MS
    for _ in range(3):  # a burst of 3 per shard (shard 0 posted once): the fourth is refused
        resp = await p.post(f"/v1/bot/{BOT}", {"guilds": 100, "shardId": 0})
    assert resp.status == 429
    resp = await p.post(f"/v1/bot/{BOT}", {"guilds": 26, "shardId": 1})
    assert resp.status == 204


async def _shard_ids(p: Pipeline, expected: list[int]) -> bool:
    rows = await p.rows(
        "SELECT DISTINCT shard_id FROM shard_stats WHERE bot_id = {id:String} ORDER BY shard_id"
    )
    return [r[0] for r in rows] == expected


async def _shards_total(p: Pipeline, expected: int) -> bool:
    """The bot's answer reads `shard_latest`, which its view fills a moment after `shard_stats`
    shows the rows (ClickHouse commits a table and its views' targets one after the other): a
    wait on `shard_stats` alone is not enough."""
    return (await p.bot())["shardsTotal"] == expected


async def _latest_total(p: Pipeline, expected: tuple[int, int]) -> bool:
    rows = await p.rows(
        "SELECT guilds, shards FROM bot_stats WHERE bot_id = {id:String} ORDER BY ts DESC LIMIT 1"
    )
    return rows == [expected]


async def _state(p: Pipeline, expected: tuple[str, str, int, int]) -> bool:
    b = await p.bot()
    return (b["connectionStatus"], b["connectionState"], b["shardsUp"], b["shardsTotal"]) == expected


async def test_shards_array_in_one_post_keeps_totals_and_fills_the_grid(make_pipeline, redis) -> None:
    p = await make_pipeline()
    # One post for every shard, with per-shard entries (ids, statuses as words or discord.js
    # numbers, guild counts and latencies under the names clients use); no top-level guilds:
    # the totals are the shards' sums.
    shards = [
        {"id": 0, "status": "ready", "guilds": 10, "latency": 40},
        {"shardId": 1, "status": 0, "guildCount": 20, "ping": 60},
        {"shard_id": 2, "status": 5, "server_count": 5},
    ]
    resp = await p.post(f"/v1/bot/{BOT}", {"users": 900, "shards": shards})
    assert resp.status == 204, await resp.text()
    await p.until(lambda: _shard_ids(p, [0, 1, 2]), "three shards")
    await p.until(lambda: _shards_total(p, 3), "three shards in the bot's answer")
    assert await p.rows(
        "SELECT guilds, users, shards, api_ping FROM bot_stats WHERE bot_id = {id:String}"
    ) == [(35, 900, 3, 50.0)]
    body = await p.bot()
    assert (body["connectionState"], body["shardsUp"], body["shardsTotal"]) == ("degraded", 2, 3)
    grid = await (await p.reader.get(f"/v1/bot/{BOT}/shards")).json()
    assert [(s["id"], s["reportedStatus"], s["latency"]) for s in grid["shards"]] == [
        (0, "ready", 40.0), (1, "ready", 60.0), (2, "disconnected", None),
    ]  # fmt: skip
    # top.gg's shape: an array of guild counts, by shard index. A post for all shards is an
    # ordinary stats post (the bot's rate limit, no per-shard state).
    resp = await p.post(f"/v1/bot/{BOT}", {"shards": [7, 8]})
    assert resp.status == 204
    await p.until(lambda: _latest_total(p, (15, 2)), "the array of counts")
    state_keys = [k async for k in redis.scan_iter(match=f"bp:*:shards:{BOT}")]
    assert state_keys == []
    for body, field in (
        ({"shards": [{"id": 0}, {"id": 0}]}, "shards[1].id"),
        ({"shards": [{"id": 0, "status": 99}]}, "shards[0].status"),
        ({"shards": ["x"]}, "shards[0]"),
        ({"shards": [{"id": 1, "guilds": -1}]}, "shards[0].guilds"),
        ({"shards": [{"id": 99999}]}, "shards[0].id"),
    ):
        resp = await p.post(f"/v1/bot/{BOT}", body)
        assert resp.status == 400 and (await resp.json())["field"] == field, body


async def test_old_stream_entries_still_decode() -> None:
    # An entry written before properties and shards existed: the msgpack of the old message.
    import msgspec

    old = msgspec.msgpack.encode(
        {"event_id": "e1", "received_ms": 1, "bot_id": "1", "account_id": "a",
         "payload": {"kind": "stats", "guilds": 3, "custom_metrics": {"m": 1.0}}}
    )  # fmt: skip
    event = decode_event(old)
    assert event.payload.guilds == 3 and event.payload.props == {}
    assert event.payload.custom_metrics == {"m": 1.0}


async def test_drop_props_in_redis_gives_what_the_decoder_expects(redis) -> None:
    # The append script drops properties over the bot's slots inside Redis, beside the metrics.
    import msgspec

    from botpulse.schemas.stream import LUA_DROP_METRICS, StatsPayload, StreamEvent, encode_event

    call = LUA_DROP_METRICS + "return drop_props(ARGV[1], {unpack(ARGV, 2)})"
    payload = StatsPayload(guilds=1, custom_metrics={"m": 2.0}, props={"version": "1", "lang": "en"})
    event = StreamEvent("e", 1, "b", "a", payload)
    edited = decode_event(await redis.eval(call, 0, encode_event(event), "lang"))
    assert edited.payload == msgspec.structs.replace(payload, props={"version": "1"})
    edited = decode_event(await redis.eval(call, 0, encode_event(event), "lang", "version"))
    assert edited.payload == msgspec.structs.replace(payload, props={})
