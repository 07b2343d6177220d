"""Inputs and failures that must never become a hang or a bare 500 in the query service."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from botpulse.query.app import REGISTRY, build_app
from botpulse.registry.catalog import Bot, create_account, now, write_bot
from botpulse.runtime.processes import free_port


async def _client(settings, store) -> TestClient:  # type: ignore[no-untyped-def]
    client = TestClient(TestServer(build_app(settings, store), host="127.0.0.1"))
    await client.start_server()
    return client


async def test_huge_exponent_timestamps_are_400_not_a_stalled_loop(settings, store, redis):
    account, _ = await create_account(store, redis, "a")
    await write_bot(store, redis, Bot("1", account.id, "One", None, False, 10, None, now()))
    client = await _client(settings, store)
    try:
        # Each is a few characters; flooring them exactly would take hours of CPU.
        for param, value in (("start", "1e9999999"), ("end", "-1e999999"), ("start", "1" * 200)):
            resp = await client.get("/v1/bot/1", params={"returnStats": "true", param: value})
            assert resp.status == 400, value
            assert (await resp.json())["field"] == param
        resp = await client.get("/api/v1/uptime", params={"partner_node_id": "1", "started_at": "9e99999999"})
        assert resp.status in (400, 401)  # refused either for the key or the value, never computed
    finally:
        await client.close()


async def test_lone_surrogate_in_listing_query_is_400(settings, store, redis):
    client = await _client(settings, store)
    try:
        resp = await client.get("/v1/bots", params={"query": '{"username": "\\udcff"}'})
        assert resp.status == 400
        body = await resp.json()
        assert body["success"] is False and "query" in body["error"]
    finally:
        await client.close()


async def test_redis_gone_is_503_json_with_cors_not_a_bare_500(settings, store, redis):
    account, key = await create_account(store, redis, "a")
    await write_bot(store, redis, Bot("p", account.id, "Private", None, True, 10, None, now()))
    client = await _client(settings, store)
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    try:
        client.server.app[REGISTRY].redis = dead  # a real refused connection, not a mock
        for path in ("/v1/bot/p", "/v1/bots"):
            resp = await client.get(path, headers={"Authorization": key})
            assert resp.status == 503, path
            assert resp.headers["Retry-After"] == "1"
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            assert (await resp.json())["message"]
    finally:
        await dead.aclose()
        await client.close()
