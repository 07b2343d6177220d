"""Faults the worker must survive without losing or doubling a row (issue #13, defects 1-5), on
real parts: a real valkey-server (error replies, a full memory, replication) and real chDB (a
materialized view that refuses rows after its table stored them).

Each test failed against the code before its fix (see the commit that added it).
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import redis as redis_sync
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from botpulse.runtime.clickhouse import Store
from botpulse.runtime.embedded import EmbeddedRedis
from botpulse.runtime.health import WORKER_HEALTH
from botpulse.runtime.settings import Settings
from botpulse.schemas.stream import GROUP, batches_key, dead_letter_key, stream_key, worker_stats_key
from botpulse.workers import batchlog as rec
from botpulse.workers.pipeline import Worker
from tests.test_workers import (
    FAST,
    custom_event,
    drained,
    post,
    stats_event,
    stored_ids,
    until,
    worker_task,
)
from tests.test_workers_poison import pending, records, reject_while, stored_counts


async def _stored_once(store: Store, events: list) -> bool:  # type: ignore[type-arg]
    return await stored_counts(store) == {e.event_id: 1 for e in events}


# --- defect 1: a Redis error reply never stops the worker ---------------------------------------


async def test_readonly_redis_is_retried_and_nothing_is_counted_against_the_posts(
    make_settings, store, tmp_path, free_port
):
    """A failover turns the primary into a replica for a while: every write is answered
    READONLY (a blocked read UNBLOCKED). The worker logs it, backs off, and carries on once the
    server is a primary again; no entry's delivery count grows."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        settings = make_settings(redis_url=server.url, **FAST)
        client = aioredis.Redis.from_url(server.url)
        try:
            before = [stats_event("ro", guilds=i) for i in range(20)]
            await post(client, before)
            with capture_logs() as logs:
                async with worker_task(settings, store) as task:
                    await drained(client)
                    await client.replicaof("127.0.0.1", free_port)  # a primary no one can reach
                    await until(lambda: _logged_event(logs, "ReadOnlyError"), what="a READONLY reply")
                    await asyncio.sleep(1.0)
                    await client.replicaof("NO", "ONE")
                    after = [stats_event("ro", guilds=100 + i) for i in range(20)]
                    ids = await post(client, after)
                    await drained(client)
                    assert not task.done(), "the worker stopped on a READONLY reply"
            assert await _stored_once(store, before + after)
            assert await client.xlen(dead_letter_key(0)) == 0
            assert any(e["event"] == "redis reachable again" for e in logs)
            # Delivered once each: nothing was re-claimed while Redis refused writes.
            assert ids and await client.hget(worker_stats_key(0), "recovered_total") is None
        finally:
            await client.aclose()


@pytest.fixture
def free_port() -> int:
    from botpulse.runtime.processes import free_port as pick

    return pick()


async def _logged_event(logs: list[dict], fragment: str) -> bool:  # type: ignore[type-arg]
    return any(fragment in str(e.get("error", "")) for e in logs)


async def test_embedded_worker_that_dies_is_restarted_and_reported(fast, fast_store, redis, monkeypatch):
    from botpulse.embedded_worker import with_embedded_worker
    from botpulse.query import app as query_app

    real_run = Worker.run
    deaths = {"left": 1}

    async def dying_run(self: Worker) -> None:
        if deaths["left"]:
            deaths["left"] -= 1
            raise RuntimeError("injected: the worker's task ends")
        await real_run(self)

    monkeypatch.setattr(Worker, "run", dying_run)
    monkeypatch.setattr("botpulse.workers.context._BACKOFF_BASE_S", 0.01)
    app = with_embedded_worker(query_app.build_app(fast, fast_store))
    server = TestServer(app, host="127.0.0.1")
    events = [stats_event("emb", guilds=i) for i in range(5)]
    await server.start_server()
    try:
        await post(redis, events)
        await drained(redis)
        health = app[WORKER_HEALTH]
        assert health.restarts == 1
        await until(lambda: _ready(health), what="the restarted worker reporting ready")
    finally:
        await server.close()
    assert await _stored_once(fast_store, events)
    assert not app[WORKER_HEALTH].ready  # stopped with the app, and says so


async def _ready(health) -> bool:  # type: ignore[no-untyped-def]
    return bool(health.ready)


# --- defect 2: a full Redis still drains --------------------------------------------------------


@contextlib.asynccontextmanager
async def full_redis(redis: aioredis.Redis):  # type: ignore[no-untyped-def]
    """Redis at maxmemory with noeviction: every write that may grow memory is refused (OOM)."""
    saved = {**await redis.config_get("maxmemory"), **await redis.config_get("maxmemory-policy")}
    used = int((await redis.info("memory"))["used_memory"])
    await redis.config_set("maxmemory-policy", "noeviction")
    await redis.config_set("maxmemory", used // 2)  # below what it holds: nothing may grow
    try:
        yield
    finally:
        await redis.config_set("maxmemory", saved["maxmemory"])
        await redis.config_set("maxmemory-policy", saved["maxmemory-policy"])


async def test_full_redis_is_drained_acked_and_trimmed(make_settings, store, redis):
    settings = make_settings(max_deliveries=1, **FAST)  # the poison entry's first rejection is final
    good = [stats_event("oom", guilds=i) for i in range(40)] + [custom_event("oom") for _ in range(20)]
    bad = stats_event("oom", guilds=-1)  # ClickHouse refuses it: a dead letter under OOM
    await redis.xgroup_create(stream_key(0), GROUP, id="0", mkstream=True)
    await post(redis, [*good[:30], bad, *good[30:]])
    async with full_redis(redis):
        with pytest.raises(aioredis.ResponseError, match="maxmemory"):
            await redis.set("probe", "x")  # the gateway's XADD is refused the same way
        async with worker_task(settings, store):
            await drained(redis)
            await until(lambda: _trimmed(redis), what="trimming")
    assert await stored_ids(store) == sorted(e.event_id for e in good[:40])
    assert await stored_ids(store, "custom_events") == sorted(e.event_id for e in good[40:])
    assert await redis.xlen(dead_letter_key(0)) == 1


async def _trimmed(redis: aioredis.Redis) -> bool:
    return await redis.xlen(stream_key(0)) == 0


# --- defect 3: a batch record is durable before its insert --------------------------------------


async def test_no_insert_before_the_record_is_on_a_replica(make_settings, store, tmp_path):
    """`BOTPULSE_WORKER_WAIT_REPLICAS=1`: with no replica, nothing is inserted (the record could
    be lost with the primary and the entries stored twice under a new token); once a replica
    holds the record (WAITAOF: fsynced on it), the batch is stored, once."""
    with EmbeddedRedis(tmp_path / "primary") as primary:
        settings = make_settings(
            redis_url=primary.url, worker_wait_replicas=1, worker_redis_timeout_ms=1000, **FAST
        )
        client = aioredis.Redis.from_url(primary.url)
        try:
            events = [stats_event("dur", guilds=i) for i in range(10)]
            await post(client, events)
            with capture_logs() as logs:
                async with worker_task(settings, store):
                    await until(lambda: _logged(logs, "WAITAOF"), what="a refused durability wait")
                    await asyncio.sleep(1.0)
                    assert await stored_ids(store) == []
                    assert (await client.xpending(stream_key(0), GROUP))["pending"] == len(events)
                    with EmbeddedRedis(tmp_path / "replica") as replica:
                        await replica_of(replica, primary)
                        # The replica's full sync, then the worker's next try after a backoff
                        # of up to 10 s: on a loaded machine, more than the usual 20 s.
                        await drained(client, limit_s=60)
            assert await _stored_once(store, events)
        finally:
            await client.aclose()


async def replica_of(replica: EmbeddedRedis, primary: EmbeddedRedis) -> None:
    client = aioredis.Redis.from_url(replica.url)
    try:
        await client.replicaof("127.0.0.1", primary.port)
    finally:
        await client.aclose()


async def _logged(logs: list[dict], fragment: str) -> bool:  # type: ignore[type-arg]
    return any(fragment in str(e.get("error", "")) for e in logs)


async def test_batch_records_wait_for_the_local_aof_fsync(fast, fast_store, redis, monkeypatch):
    """On a server with AOF (the embedded one: appendfsync everysec) every record is followed by
    a WAITAOF on its connection before the insert that uses its token."""
    seen: list[int] = []
    real = fast_store.insert_sync
    sync = redis_sync.Redis.from_url(fast.redis_url)

    def insert_sync(*args, **kwargs):  # type: ignore[no-untyped-def]
        stats = sync.info("commandstats")
        seen.append(int(stats.get("cmdstat_waitaof", {}).get("calls", 0)))
        return real(*args, **kwargs)

    monkeypatch.setattr(fast_store, "insert_sync", insert_sync)
    await redis.config_resetstat()
    try:
        events = [stats_event("aof", guilds=i) for i in range(5)]
        await post(redis, events)
        with capture_logs() as logs:
            async with worker_task(fast, fast_store):
                await drained(redis)
    finally:
        sync.close()
    assert seen and seen[0] >= 1, "an insert ran before any WAITAOF"
    # The worker says at start what it waits for and with which Redis timeout.
    (started,) = [e for e in logs if e["event"] == "worker started"]
    assert started["redis_timeout_ms"] == fast.worker_redis_timeout_ms == 5000
    assert any(e["event"].endswith("by WAITAOF 1 0 (AOF fsync)") for e in logs)
    assert await _stored_once(fast_store, events)


# --- defect 4: a block a view refused after the table stored it is never split -------------------


async def test_view_refusing_a_stored_block_is_retried_whole_never_split(
    fast, fast_store, redis, monkeypatch
):
    fast_store.command_sync(
        "CREATE MATERIALIZED VIEW picky ENGINE = MergeTree ORDER BY tuple() AS "
        "SELECT toUInt64(if(assumeNotNull(guilds) = 666, 'bad', toString(assumeNotNull(guilds)))) AS g "
        "FROM bot_stats"  # Cannot parse 'bad' (code 6, a "data" code) after bot_stats stored the block
    )
    monkeypatch.setattr("botpulse.workers.context._BACKOFF_BASE_S", 0.02)
    events = [stats_event("mv", guilds=i) for i in range(6)] + [stats_event("mv", guilds=666)]
    await post(redis, events)
    with capture_logs() as logs:
        async with worker_task(fast, fast_store):
            await until(lambda: _alerts(logs, 3), what="three retries of the refused block")
            assert await _stored_once(fast_store, events)  # stored by the first attempt, once
            assert (await redis.xpending(stream_key(0), GROUP))["pending"] == len(events)
            fast_store.command_sync("DROP VIEW picky")  # the operator fixes the view
            await drained(redis)
    assert await _stored_once(fast_store, events)
    for rollup in ("bot_stats_1h", "bot_stats_1d"):  # the day level is fed from the hour level
        assert await fast_store.query(f"SELECT sum(posts) FROM {rollup} WHERE bot_id = 'mv'") == [
            (len(events),)
        ], rollup
    assert await redis.xlen(dead_letter_key(0)) == 0


async def _alerts(logs: list[dict], n: int) -> bool:  # type: ignore[type-arg]
    return sum(e["event"].startswith("ALERT: a materialized view refused") for e in logs) >= n


# --- defect 5: one recovery of a record at a time; its split list only grows --------------------


async def test_one_record_recovered_by_two_workers_at_once_stores_each_entry_once(
    make_settings, store, redis, monkeypatch
):
    settings = make_settings(max_deliveries=5, **FAST)
    good = [stats_event("lease", guilds=i) for i in range(4)]
    fixable = stats_event("lease", guilds=50)
    broken = {"on": True}
    reject_while(store, monkeypatch, fixable, broken)
    ids = await post(redis, [*good[:2], fixable, *good[2:]])

    w1 = Worker(settings, store, redis, consumer="w1-lease")
    await w1.ensure_groups()
    await w1.intake.read()
    assert await w1.open_batch(0, w1.intake.buffers[0].entries, in_order=True) is not None  # then dies
    await asyncio.sleep(settings.claim_idle_ms / 1000 + 0.05)
    w2 = Worker(settings, store, redis, consumer="w2-lease")
    w3 = Worker(settings, store, redis, consumer="w3-lease")
    w2_claimed = await redis.xclaim(stream_key(0), GROUP, w2.consumer, 0, ids[:-1])
    w3_claimed = await redis.xclaim(stream_key(0), GROUP, w3.consumer, 0, ids[-1:])

    # W3 reaches the insert of the whole block (it read the record: no split yet) and stalls
    # there while W2 recovers the same record: splits it around the rejected entry and stores
    # the halves. Then the table is fixed and W3 goes on.
    at_insert, resume = asyncio.Event(), asyncio.Event()
    real = store.insert

    async def insert(*args, **kwargs):  # type: ignore[no-untyped-def]
        if asyncio.current_task().get_name() == "w3" and not at_insert.is_set():  # type: ignore[union-attr]
            at_insert.set()
            await resume.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, "insert", insert)

    async def w2_meanwhile() -> None:
        await asyncio.wait_for(at_insert.wait(), 20)
        await w2.adopt(0, w2_claimed, {i: 2 for i, _ in w2_claimed})
        broken["on"] = False
        resume.set()

    async with asyncio.timeout(60), asyncio.TaskGroup() as group:
        group.create_task(w3.adopt(0, w3_claimed, {i: 2 for i, _ in w3_claimed}), name="w3")
        group.create_task(w2_meanwhile())

    if await pending(redis):  # the fixable entry, if W2 wrote it as a poison entry of its own
        await asyncio.sleep(settings.claim_idle_ms / 1000 + 0.05)
        await w2.take_over_idle()
    assert await _stored_once(store, [*good, fixable])
    assert await pending(redis) == {}
    assert await records(redis) == []


async def test_split_list_is_merged_not_overwritten(redis):
    stream, batches = stream_key(0), batches_key(0)
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    ids = await post(redis, [stats_event() for _ in range(4)])
    await redis.xreadgroup(GROUP, "a", {stream: ">"})
    record = rec.new_record(stream, "a", ids)
    a, b = rec.Records(redis, "a"), rec.Records(redis, "b")
    assert await a.write_if_owned(stream, batches, record) == []
    assert await a.add_split(batches, record.token, "x:bot_stats", 1000) == 1
    # Another worker holds the lease: it may not touch the record's splits.
    assert await b.add_split(batches, record.token, "y:bot_stats", 1000) == -1
    await redis.delete(f"{batches}:lease:{record.token}")  # the lease expired
    assert await b.add_split(batches, record.token, "y:bot_stats", 1000) == 1
    assert (await a.get(batches, record.token)).split == ["x:bot_stats", "y:bot_stats"]  # type: ignore[union-attr]


@pytest.fixture
def fast(make_settings) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings(**FAST)


@pytest.fixture
async def fast_store(fast: Settings, store: Store) -> Store:
    return store
