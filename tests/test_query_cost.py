"""Query cost control on real chDB: every read carries its time and memory limit, a cancelled
read is killed in ClickHouse, the read slots are bounded (503 naming the limit, inserts unaffected)
and the expensive anonymous answers are cached for a few seconds."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer
from clickhouse_connect.driver.exceptions import DatabaseError

from botpulse.query import app as query_app
from botpulse.runtime.clickhouse import QueryLimit, Saturated, Store, is_timeout
from botpulse.runtime.migrations import migrate

ADMIN = "cost-admin-Rt5Yu7Io9Pa2Sd4Fg6Hj8Kl1Zx3Cv0Bn"
ENDLESS = "SELECT count() FROM numbers(100000000000) WHERE number % 7 = 3"
WAIT_S = 10.0


@contextlib.contextmanager
def _store(make_settings, **overrides):  # type: ignore[no-untyped-def]
    store = Store(make_settings(**overrides))
    migrate(store)
    try:
        yield store
    finally:
        store.close()


async def test_a_read_past_its_time_or_memory_limit_is_stopped_and_named(make_settings):
    with _store(make_settings, query_timeout_s=1.0, query_max_memory_bytes=10_000_000) as store:
        with pytest.raises(DatabaseError) as timed_out:
            await store.query(ENDLESS)
        assert is_timeout(timed_out.value)  # the query service answers 503 for it (test_query_timeouts)
        with pytest.raises(QueryLimit) as info:
            await store.query("SELECT groupArray(number) FROM numbers(100000000)")
        assert "BOTPULSE_QUERY_MAX_MEMORY_BYTES" in info.value.message
        assert await store.query("SELECT 1") == [(1,)]


async def _running(store: Store) -> int:
    rows = store.query_rows(
        "SELECT count() FROM system.processes WHERE position(query, 'number % 7 = 3') > 0"
        " AND position(query, 'system.processes') = 0"
    )
    return int(rows[0][0])


async def test_a_cancelled_read_is_killed_in_clickhouse(make_settings):
    with _store(make_settings, query_timeout_s=600.0) as store:
        task = asyncio.create_task(store.query(ENDLESS))
        deadline = time.monotonic() + WAIT_S
        while await _running(store) == 0:
            assert time.monotonic() < deadline, "the read never started"
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while await _running(store):
            assert time.monotonic() < deadline, "the cancelled read still runs in ClickHouse"
            await asyncio.sleep(0.05)


async def test_saturated_reads_are_refused_at_once_and_inserts_keep_their_capacity(make_settings, redis):
    with _store(make_settings, query_max_concurrent=1, query_max_queued=1, admin_token=ADMIN) as store:
        client = TestClient(TestServer(query_app.build_app(store.settings, store), host="127.0.0.1"))
        await client.start_server()
        busy = asyncio.create_task(store.query(ENDLESS))
        waiting = asyncio.create_task(store.query("SELECT 1"))
        try:
            await asyncio.sleep(0.2)
            with pytest.raises(Saturated):
                await store.query("SELECT 2")
            resp = await client.get("/v1/bots")
            assert resp.status == 503 and resp.headers["Retry-After"] == "1"
            body = await resp.json()
            assert (
                body["limit"] == "queryMaxConcurrent" and "BOTPULSE_QUERY_MAX_CONCURRENT" in body["message"]
            )
            resp = await client.get("/v1/account", headers={"Authorization": "DS-x"})
            assert resp.status in (401, 503)  # never a 500, whichever check runs first
            # The worker's inserts do not wait for a read slot.
            await asyncio.wait_for(
                store.insert(
                    "custom_metric_names",
                    [["b", "m", datetime.datetime.now(datetime.UTC)]],
                    ["bot_id", "name", "first_seen"],
                ),
                WAIT_S,
            )
        finally:
            busy.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await busy
            assert await asyncio.wait_for(waiting, WAIT_S) == [(1,)]  # the queued read got the slot
            await client.close()
        assert await store.query("SELECT count() FROM custom_metric_names") == [(1,)]


@pytest.mark.parametrize("ttl", [0.0, 30.0])
async def test_listing_and_leaderboard_answers_are_cached_for_the_ttl(make_settings, store, redis, ttl):
    client = TestClient(
        TestServer(
            query_app.build_app(make_settings(admin_token=ADMIN, query_cache_s=ttl), store), host="127.0.0.1"
        )
    )
    await client.start_server()
    try:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        account = (await (await client.post("/v1/admin/accounts", json={"name": "a"}, headers=admin)).json())[
            "id"
        ]
        first = await (await client.get("/v1/bots")).json()
        top = await (await client.get("/v1/top")).json()
        body = {"id": "31", "account": account, "username": "new"}
        assert (await client.post("/v1/admin/bots", json=body, headers=admin)).status == 201
        second = await (await client.get("/v1/bots")).json()
        assert (await (await client.get("/v1/top")).json()) == top
        if ttl:
            assert second == first  # the same answer until the TTL runs out
        else:
            assert [b["id"] for b in second["bots"]] == ["31"]
    finally:
        await client.close()


async def test_a_stats_answer_holds_at_most_the_type_bound(make_settings, store, redis):
    """Types posted before they took slots (or by the operator's store) cannot grow the answer."""
    from botpulse.schemas.account import MAX_EVENT_TYPES

    client = TestClient(
        TestServer(query_app.build_app(make_settings(admin_token=ADMIN), store), host="127.0.0.1")
    )
    await client.start_server()
    try:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        account = (await (await client.post("/v1/admin/accounts", json={"name": "a"}, headers=admin)).json())[
            "id"
        ]
        await client.post(
            "/v1/admin/bots", json={"id": "77", "account": account, "username": "b"}, headers=admin
        )
        now = datetime.datetime.now(datetime.UTC)
        rows = [["77", now, f"e{i}", f"t{i:05d}", "v"] for i in range(MAX_EVENT_TYPES + 50)]
        rows += [["77", now, "busy", "t99999", "v"]] * 3  # the most used type is always kept
        await store.insert("custom_events", rows, ["bot_id", "ts", "event_id", "type", "value1"])
        resp = await client.get("/v1/bot/77", params={"returnStats": "true", "start": "0"})
        assert resp.status == 200
        totals = (await resp.json())["customTotals"]
        assert len(totals) == MAX_EVENT_TYPES and totals["t99999"]["count"] == 3
    finally:
        await client.close()
