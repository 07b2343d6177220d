"""A stat posted to the gateway comes back from the query service: the whole pipeline, on
real parts (Redis stream, consumer group, ClickHouse insert, query)."""

from __future__ import annotations

import asyncio
import time

from aiohttp.test_utils import TestClient, TestServer

from botpulse.embedded_worker import with_embedded_worker
from botpulse.ingest import app as ingest_app
from botpulse.query import app as query_app
from botpulse.registry.catalog import Bot, create_account, now, write_bot


async def test_posted_stat_is_readable_from_query_service(settings, store, redis):
    account, key = await create_account(store, redis, "e2e")
    await write_bot(store, redis, Bot("4242", account.id, "E2E Bot", None, False, 10, None, now()))

    gateway = TestClient(TestServer(ingest_app.build_app(settings), host="127.0.0.1"))
    reader = TestClient(
        TestServer(with_embedded_worker(query_app.build_app(settings, store)), host="127.0.0.1")
    )
    await gateway.start_server()
    await reader.start_server()
    try:
        before = int(time.time() * 1000)
        resp = await gateway.post(
            "/v1/bot/4242", json={"guilds": 7, "users": 70}, headers={"Authorization": key}
        )
        assert resp.status == 204, await resp.text()

        deadline = time.monotonic() + 10
        body = {}
        while time.monotonic() < deadline:
            body = await (await reader.get("/v1/bot/4242")).json()
            if body.get("lastSeen"):
                break
            await asyncio.sleep(0.05)
        assert body["id"] == "4242"
        assert body["username"] == "E2E Bot"
        assert body["lastSeen"] >= before
        assert body["connectionStatus"] == "connected"
        rows = await store.query("SELECT guilds, users, api_ping FROM bot_stats WHERE bot_id = '4242'")
        assert rows == [(7, 70, None)]
    finally:
        await gateway.close()
        await reader.close()
