"""BOTPULSE_QUERY_TIMEOUT_S bounds every read through the one ClickHouse access layer, apart from
BOTPULSE_INSERT_TIMEOUT_S; a read past it is a 503 from the query service, never a hang or a 500."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from clickhouse_connect.driver.exceptions import DatabaseError

from botpulse.query.app import backend_errors
from botpulse.runtime.clickhouse import Store, is_timeout

# About 2 s of engine time in 10 ms steps (blocks of 10 rows), so the limit is checked often.
SLOW_READ = "SELECT sum(sleepEachRow(0.01)) FROM numbers(200)"
SMALL_BLOCKS = {"max_block_size": 10}


@pytest.fixture
def quick_store(make_settings) -> Iterator[Store]:  # type: ignore[no-untyped-def]
    settings = make_settings(query_timeout_s=0.3, insert_timeout_s=30.0)
    store = Store(settings)
    yield store
    with contextlib.suppress(Exception):
        store.command_sync(f"DROP DATABASE IF EXISTS `{settings.clickhouse_database}`")
    store.close()


async def test_a_read_past_the_query_timeout_is_stopped(quick_store):
    # Finishing would return a row; the engine's TIMEOUT_EXCEEDED is what stopped it.
    with pytest.raises(DatabaseError) as info:
        await quick_store.query(SLOW_READ, settings=SMALL_BLOCKS)
    assert is_timeout(info.value)
    assert await quick_store.query("SELECT 1") == [(1,)]  # the next read runs normally


def test_writes_keep_the_insert_timeout(quick_store):
    # The same work as a command (inserts and DDL go this way) is not held to the read limit.
    slow = "SELECT sum(sleepEachRow(0.01)) FROM numbers(50) SETTINGS max_block_size = 10"
    assert int(quick_store.command_sync(slow)) == 0
    assert not is_timeout(DatabaseError("Code: 60. DB::Exception: Unknown table"))


async def test_the_query_service_answers_503_for_a_read_past_the_timeout(quick_store):
    async def slow(request: web.Request) -> web.Response:
        await quick_store.query(SLOW_READ, settings=SMALL_BLOCKS)
        return web.json_response({})

    app = web.Application(middlewares=[backend_errors])
    app.router.add_get("/slow", slow)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        resp = await client.get("/slow")
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.json())["message"] == "Storage did not answer in time, try again shortly"
    finally:
        await client.close()
