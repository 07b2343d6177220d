"""Stream workers on real parts: a real valkey-server and a real chDB engine, in this process.

Crash recovery across processes (SIGKILL, SIGTERM) is in tests/test_workers_crash.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
import redis.asyncio as aioredis
from clickhouse_connect.driver.exceptions import OperationalError
from structlog.testing import capture_logs

from botpulse.cli import main as cli_main
from botpulse.runtime.clickhouse import Store
from botpulse.runtime.settings import Settings, SettingsError, check_settings
from botpulse.schemas.stream import (
    FIELD,
    GROUP,
    CustomPayload,
    StatsPayload,
    StreamEvent,
    batches_key,
    dead_letter_key,
    encode_event,
    stream_key,
    worker_stats_key,
)
from botpulse.workers import batchlog as rec
from botpulse.workers.batch import Batch, Entry
from botpulse.workers.intake import Intake
from botpulse.workers.lifecycle import run_worker
from botpulse.workers.pipeline import Worker
from botpulse.workers.upkeep import Upkeep

FAST = {"batch_ms": 40, "insert_timeout_s": 0.1, "claim_idle_ms": 300}


def stats_event(bot: str = "b1", **fields: object) -> StreamEvent:
    return StreamEvent(
        event_id=uuid.uuid4().hex,
        received_ms=int(time.time() * 1000),
        bot_id=bot,
        account_id="acc",
        payload=StatsPayload(**fields),  # type: ignore[arg-type]
    )


def custom_event(bot: str = "b1", type_: str = "command", value1: str | None = "42") -> StreamEvent:
    return StreamEvent(
        event_id=uuid.uuid4().hex,
        received_ms=int(time.time() * 1000),
        bot_id=bot,
        account_id="acc",
        payload=CustomPayload(type=type_, value1=value1),
    )


async def post(redis: aioredis.Redis, events: list[StreamEvent], partition: int = 0) -> list[bytes]:
    """What the gateway does for an accepted post."""
    async with redis.pipeline(transaction=False) as pipe:
        for e in events:
            pipe.xadd(stream_key(partition), {FIELD: encode_event(e)})
        return list(await pipe.execute())


async def until(check, limit_s: float = 20.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    """Poll an async predicate, bounded (no timing is asserted, only that it happens)."""
    for _ in range(int(limit_s / 0.02)):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {limit_s}s")


async def is_drained(redis: aioredis.Redis, partitions: int = 1) -> bool:
    for p in range(partitions):
        groups = await redis.xinfo_groups(stream_key(p))
        group = next((g for g in groups if g["name"] == GROUP.encode()), None)
        if group is None or group["pending"] or group["lag"] or await redis.hlen(batches_key(p)):
            return False
    return True


async def drained(redis: aioredis.Redis, partitions: int = 1, limit_s: float = 20.0) -> None:
    """Every entry delivered and acknowledged, no batch in flight."""
    await until(lambda: is_drained(redis, partitions), limit_s=limit_s, what="draining the stream")


@contextlib.asynccontextmanager
async def worker_task(settings: Settings, store: Store) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(run_worker(settings, store))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def stored_ids(store: Store, table: str = "bot_stats") -> list[str]:
    return sorted(r[0] for r in await store.query(f"SELECT event_id FROM {table}"))


@pytest.fixture
def fast(make_settings) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings(**FAST)


@pytest.fixture
async def fast_store(fast: Settings, store: Store) -> Store:
    return store  # same database: `store` is built from `settings`, which shares it with `fast`


async def test_batches_are_stored_acked_and_the_stream_trimmed(fast, fast_store, redis):
    stats = [
        stats_event(f"bot{i % 3}", guilds=i, cpu=0.5, custom_metrics={"queue": float(i)} if i % 2 else {})
        for i in range(60)
    ]
    custom = [custom_event(f"bot{i % 3}", value1=str(i) if i % 2 else "not a number") for i in range(30)]
    await post(redis, stats + custom)
    async with worker_task(fast, fast_store):
        await drained(redis)
        # Acked entries are trimmed away (the trim runs at least once a second).
        await until(lambda: _empty(redis), what="trimming")
    assert await stored_ids(fast_store) == sorted(e.event_id for e in stats)
    assert await stored_ids(fast_store, "custom_events") == sorted(e.event_id for e in custom)
    absent = await fast_store.query("SELECT count() FROM bot_stats WHERE users IS NULL AND api_ping IS NULL")
    assert absent == [(60,)]  # absent stays absent
    nums = await fast_store.query(
        "SELECT DISTINCT value1, value1_num FROM custom_events WHERE value1 IN ('3', 'not a number')"
    )
    assert sorted(nums, key=str) == sorted([("3", 3.0), ("not a number", None)], key=str)
    names = await fast_store.query("SELECT bot_id, name FROM custom_metric_names FINAL ORDER BY bot_id")
    assert names == [(f"bot{i}", "queue") for i in range(3)]
    assert await redis.xlen(stream_key(0)) == 0
    stats_hash = await redis.hgetall(worker_stats_key(0))
    assert int(stats_hash[b"rows_total"]) == 90
    assert b"last_insert_ms" in stats_hash


async def test_retried_batch_is_stored_once_and_rollups_count_it_once(fast, fast_store, redis):
    """A batch written twice with the same record (a retry after a crash between insert and ack)
    leaves the table and the hour/day roll-ups unchanged (the day one is fed from the hour one)."""
    events = [stats_event("r1", guilds=i, custom_metrics={"m": 1.0}) for i in range(20)]
    ids = await post(redis, events)
    worker = Worker(fast, fast_store, redis)
    await worker.ensure_groups()
    await redis.xreadgroup(GROUP, worker.consumer, {stream_key(0): ">"})
    entries = [Entry(i, encode_event(e), e) for i, e in zip(ids, events, strict=True)]
    batch = await worker.open_batch(0, entries)
    assert batch is not None
    await worker.process(batch)

    async def snapshot() -> list[tuple]:
        out = []
        for table in ("bot_stats_1h", "bot_stats_1d"):
            out += await fast_store.query(
                f"SELECT sum(posts), sumMap(custom_count) FROM {table} WHERE bot_id = 'r1'"
            )
        return out

    first = await snapshot()
    assert [row[0] for row in first] == [20, 20]
    await worker.process(batch)  # same ids, same token: deduplicated
    assert await fast_store.query("SELECT count() FROM bot_stats WHERE bot_id = 'r1'") == [(20,)]
    assert await snapshot() == first


async def test_taken_over_batch_keeps_its_boundaries_and_token(fast, fast_store, redis):
    """A worker inserted its batch and died before the ack; another worker takes the entries
    over after claim_idle_ms, finds the record and re-inserts the same set: no duplicates, even
    though more entries arrived meanwhile."""
    events = [stats_event("t1", guilds=i) for i in range(10)]
    ids = await post(redis, events)
    dead = Worker(fast, fast_store, redis, consumer="dead-host-1")
    await dead.ensure_groups()
    await redis.xreadgroup(GROUP, dead.consumer, {stream_key(0): ">"})
    batch = await dead.open_batch(0, [Entry(i, encode_event(e), e) for i, e in zip(ids, events, strict=True)])
    assert batch is not None
    for table in ("bot_stats",):
        rows_ids = [(e.id, e.event) for e in batch.entries]
        from botpulse.workers.rows import rows_by_table

        rows, _ = rows_by_table(rows_ids)[table]
        await dead.writer.insert(batch, table, rows, f"{batch.record.token}:{table}")
    # ... and it dies here: no ack. More posts arrive.
    later = [stats_event("t1", guilds=100 + i) for i in range(5)]
    await post(redis, later)
    with capture_logs() as logs:
        async with worker_task(fast, fast_store):
            await drained(redis)
    assert any(entry["event"] == "recovering batch" for entry in logs)
    stored = await fast_store.query("SELECT event_id, count() FROM bot_stats GROUP BY event_id")
    assert sorted(stored) == sorted((e.event_id, 1) for e in events + later)
    assert int((await redis.hgetall(worker_stats_key(0)))[b"recovered_total"]) == 1


async def test_poison_entries_are_isolated_and_dead_lettered(fast, fast_store, redis):
    good = [stats_event("p1", guilds=i) for i in range(13)]
    bad = stats_event("p1", guilds=-1)  # ClickHouse (UInt64) refuses it
    good_custom = [custom_event("p1") for _ in range(4)]
    await post(redis, [*good[:7], bad, *good[7:], *good_custom])
    await redis.xadd(stream_key(0), {FIELD: b"\xc1 not msgpack"})
    async with worker_task(fast, fast_store):
        await drained(redis)
    assert await stored_ids(fast_store) == sorted(e.event_id for e in good)
    assert await stored_ids(fast_store, "custom_events") == sorted(e.event_id for e in good_custom)
    letters = await redis.xrange(dead_letter_key(0))
    reasons = sorted(fields[b"reason"].decode() for _, fields in letters)
    assert len(reasons) == 2
    assert reasons[0].startswith("rejected by ClickHouse (bot_stats)")
    assert reasons[1].startswith("undecodable")
    assert any(fields[FIELD] == encode_event(bad) for _, fields in letters)
    # Each was retried until its delivery count reached the limit (tests/test_workers_poison.py).
    assert [int(fields[b"deliveries"]) for _, fields in letters] == [fast.max_deliveries] * 2
    assert int((await redis.hgetall(worker_stats_key(0)))[b"dead_total"]) == 2


async def test_clickhouse_outage_keeps_entries_pending_and_drains_after(fast, fast_store, redis, monkeypatch):
    """No ClickHouse server can run here, so the outage is injected: the real Store raises the
    client's connectivity error (OperationalError) for its first inserts, as it does when a
    server is unreachable or times out. Logs change once per state change, not per retry."""
    real = fast_store.insert_sync
    failures = {"left": 6}

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        if failures["left"] > 0:
            failures["left"] -= 1
            raise OperationalError("Error HTTPConnectionPool: connection refused (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(fast_store, "insert_sync", flaky)
    monkeypatch.setattr("botpulse.workers.context._BACKOFF_BASE_S", 0.01)
    events = [stats_event("o1", guilds=i) for i in range(25)]
    await post(redis, events)
    with capture_logs() as logs:
        async with worker_task(fast, fast_store):
            await until(lambda: _le(failures["left"], 3), what="failed inserts")
            summary = await redis.xpending(stream_key(0), GROUP)
            assert summary["pending"] > 0  # held while ClickHouse is down
            await drained(redis)
    assert failures["left"] == 0
    assert await stored_ids(fast_store) == sorted(e.event_id for e in events)
    events_logged = [entry["event"] for entry in logs]
    assert events_logged.count("clickhouse unreachable; retrying with backoff, entries stay pending") == 1
    assert events_logged.count("clickhouse reachable again; draining the backlog") == 1


async def test_unexpected_failure_leaves_entries_pending_and_they_are_recovered(
    fast, fast_store, redis, monkeypatch
):
    from botpulse.workers import writer as workers_writer

    real = workers_writer.rows_by_table
    calls = {"n": 0}

    def broken_once(*args):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected bug")
        return real(*args)

    monkeypatch.setattr(workers_writer, "rows_by_table", broken_once)
    events = [stats_event("u1", guilds=i) for i in range(6)]
    await post(redis, events)
    with capture_logs() as logs:
        async with worker_task(fast, fast_store):
            await drained(redis)
    assert calls["n"] >= 2
    assert any(e["event"].startswith("worker step failed") for e in logs)
    stored = await fast_store.query("SELECT event_id, count() FROM bot_stats GROUP BY event_id")
    assert sorted(stored) == sorted((e.event_id, 1) for e in events)


async def test_entry_delivered_too_often_is_dead_lettered_then_replayed(fast, fast_store, redis, monkeypatch):
    event = stats_event("d1", guilds=5)
    (entry_id,) = await post(redis, [event])
    await redis.xgroup_create(stream_key(0), GROUP, id="0", mkstream=True)
    await redis.xreadgroup(GROUP, "crashy-1", {stream_key(0): ">"})
    for _ in range(fast.max_deliveries - 1):  # each crash-and-take-over adds one delivery
        await redis.xclaim(stream_key(0), GROUP, "crashy-1", 0, [entry_id])
    await asyncio.sleep(fast.claim_idle_ms / 1000 + 0.05)
    async with worker_task(fast, fast_store):
        await drained(redis)
    assert await stored_ids(fast_store) == []
    monkeypatch.setenv("REDIS_URL", fast.redis_url)
    monkeypatch.setenv("BOTPULSE_DATA_DIR", fast.data_dir)
    out = await asyncio.to_thread(_cli, ["dead-letters", "list", "--json"])
    (letter,) = [json.loads(line) for line in out.splitlines()]
    assert letter["original_id"] == entry_id.decode()
    assert letter["event"] == {"event_id": event.event_id, "bot_id": "d1", "kind": "stats"}
    assert "delivered 6 times" in letter["reason"]
    out = await asyncio.to_thread(_cli, ["dead-letters", "replay", "--all"])
    assert "1 dead letter(s) replayed" in out
    assert await redis.xlen(dead_letter_key(0)) == 0
    async with worker_task(fast, fast_store):
        await drained(redis)
    assert await stored_ids(fast_store) == [event.event_id]


async def test_crash_looping_batch_is_dead_lettered_whole_and_counted(fast, fast_store, redis):
    """A batch whose record outlived more than `max_deliveries` deliveries (its writers keep dying
    before the ack) goes to the dead letters whole, acknowledged, its record gone, and counted."""
    events = [stats_event("cl", guilds=i) for i in range(3)]
    ids = await post(redis, events)
    await redis.xgroup_create(stream_key(0), GROUP, id="0", mkstream=True)
    await redis.xreadgroup(GROUP, "crashy-1", {stream_key(0): ">"})
    record = rec.new_record(stream_key(0), "crashy-1", ids)
    assert await rec.Records(redis, "crashy-1").write_if_owned(stream_key(0), batches_key(0), record) == []
    for _ in range(fast.max_deliveries):  # each crash-and-take-over adds one delivery
        await redis.xclaim(stream_key(0), GROUP, "crashy-1", 0, ids)
    await asyncio.sleep(fast.claim_idle_ms / 1000 + 0.05)
    async with worker_task(fast, fast_store):
        await drained(redis)
    assert await stored_ids(fast_store) == []
    letters = await redis.xrange(dead_letter_key(0))
    assert [fields[b"id"] for _, fields in letters] == ids
    assert all(b"without being acknowledged" in fields[b"reason"] for _, fields in letters)
    assert await redis.hlen(batches_key(0)) == 0
    assert (await redis.xpending(stream_key(0), GROUP))["pending"] == 0
    assert int(await redis.hget(worker_stats_key(0), "dead_total")) == 3


async def _empty(redis: aioredis.Redis) -> bool:
    return await redis.xlen(stream_key(0)) == 0


async def _le(value: int, bound: int) -> bool:
    return value <= bound


def _cli(argv: list[str]) -> str:
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert cli_main(argv) == 0
    return buf.getvalue()


async def test_trimming_never_removes_unacked_entries(fast, redis):
    stream = stream_key(0)
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    upkeep = Upkeep(redis)
    first = await post(redis, [stats_event() for _ in range(3)])
    await redis.xreadgroup(GROUP, "w1", {stream: ">"})
    await redis.xack(stream, GROUP, *first)
    held = await post(redis, [stats_event() for _ in range(3)])
    await redis.xreadgroup(GROUP, "slow", {stream: ">"})  # delivered, not acked
    rest = await post(redis, [stats_event() for _ in range(4)])
    await redis.xreadgroup(GROUP, "w1", {stream: ">"}, count=2)
    await redis.xack(stream, GROUP, *rest[:2])  # acked, but above the held ones
    undelivered = rest[2:]  # never read by anyone
    assert await upkeep.trim(stream) == 3
    assert [i for i, _ in await redis.xrange(stream)] == held + rest
    await redis.xack(stream, GROUP, *held)
    assert await upkeep.trim(stream) == 5
    assert [i for i, _ in await redis.xrange(stream)] == undelivered


async def test_consumers_with_pending_entries_are_never_removed(fast, redis):
    stream = stream_key(0)
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    upkeep = Upkeep(redis)
    ids = await post(redis, [stats_event() for _ in range(2)])
    await redis.xreadgroup(GROUP, "owner", {stream: ">"})
    await redis.xreadgroup(GROUP, "empty", {stream: ">"})
    await asyncio.sleep(0.01)
    assert await upkeep.retire(stream, GROUP, "owner") is False
    assert await upkeep.sweep(stream, GROUP, 0) == ["empty"]
    names = [c["name"] for c in await redis.xinfo_consumers(stream, GROUP)]
    assert names == [b"owner"]
    await redis.xack(stream, GROUP, *ids)
    assert await upkeep.retire(stream, GROUP, "owner") is True
    assert await redis.xinfo_consumers(stream, GROUP) == []


async def test_touching_own_entries_never_takes_anothers(fast, redis):
    stream = stream_key(0)
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    ids = await post(redis, [stats_event() for _ in range(3)])
    await redis.xreadgroup(GROUP, "me", {stream: ">"}, count=2)
    await redis.xreadgroup(GROUP, "other", {stream: ">"})
    await asyncio.sleep(0.05)
    assert await Upkeep(redis).touch_own(stream, GROUP, "me", ids) == 2
    rows = {r["message_id"]: r for r in await redis.xpending_range(stream, GROUP, "-", "+", 10)}
    assert [rows[i]["consumer"] for i in ids] == [b"me", b"me", b"other"]
    assert [rows[i]["times_delivered"] for i in ids] == [1, 1, 1]  # no delivery counted
    assert rows[ids[0]]["time_since_delivered"] < rows[ids[2]]["time_since_delivered"]


async def test_every_partition_is_drained(make_settings, store, redis):
    settings = make_settings(stream_partitions=3, **FAST)
    events = {p: [stats_event(f"part{p}", guilds=i) for i in range(7)] for p in range(3)}
    for p, evs in events.items():
        await post(redis, evs, partition=p)
    async with worker_task(settings, store):
        await drained(redis, partitions=3)
    assert await stored_ids(store) == sorted(e.event_id for evs in events.values() for e in evs)
    for p in range(3):
        assert int((await redis.hgetall(worker_stats_key(p)))[b"rows_total"]) == 7


async def test_stale_batch_records_are_removed_only_when_nothing_is_pending(fast, fast_store, redis):
    stream = stream_key(0)
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    ids = await post(redis, [stats_event() for _ in range(3)])
    await redis.xreadgroup(GROUP, "someone", {stream: ">"})
    worker = Worker(fast, fast_store, redis)
    record = rec.new_record(stream, "someone", ids)
    record.created_ms -= 10 * fast.claim_idle_ms
    await redis.hset(batches_key(0), record.token, rec.encode(record))
    await redis.xack(stream, GROUP, *ids[:2])
    await worker.sweep_records()
    assert await redis.hlen(batches_key(0)) == 1  # one entry still pending: it is needed
    await redis.xack(stream, GROUP, ids[2])
    await worker.sweep_records()
    assert await redis.hlen(batches_key(0)) == 0


async def test_deleted_pending_entries_are_reported_as_lost(fast, fast_store, redis):
    events = [stats_event("l1", guilds=i) for i in range(3)]
    ids = await post(redis, events)
    await redis.xgroup_create(stream_key(0), GROUP, id="0", mkstream=True)
    await redis.xreadgroup(GROUP, "gone-1", {stream_key(0): ">"})
    await redis.xdel(stream_key(0), ids[1])  # someone deleted a pending entry by hand
    await asyncio.sleep(fast.claim_idle_ms / 1000 + 0.05)
    with capture_logs() as logs:
        async with worker_task(fast, fast_store):
            await drained(redis)
    assert await stored_ids(fast_store) == sorted([events[0].event_id, events[2].event_id])
    assert int((await redis.hgetall(worker_stats_key(0)))[b"lost_total"]) == 1
    assert any("lost" in entry["event"] for entry in logs)


async def test_entries_taken_over_while_buffered_are_not_written_twice(fast, fast_store, redis):
    """A worker that stalled past claim_idle_ms before writing its batch record finds the entries
    gone and leaves them to their new owner (the record is written only if it owns every id)."""
    events = [stats_event("s1", guilds=i) for i in range(4)]
    ids = await post(redis, events)
    worker = Worker(fast, fast_store, redis)
    await worker.ensure_groups()
    await redis.xreadgroup(GROUP, worker.consumer, {stream_key(0): ">"})
    await redis.xclaim(stream_key(0), GROUP, "other-1", 0, ids[:2])  # taken over meanwhile
    entries = [Entry(i, encode_event(e), e) for i, e in zip(ids, events, strict=True)]
    batch = await worker.open_batch(0, entries)
    assert isinstance(batch, Batch)
    assert batch.record.ids == [i.decode() for i in ids[2:]]
    assert list((await redis.hgetall(batches_key(0))).keys()) == [batch.record.token.encode()]


async def test_read_entries_taken_over_after_the_fresh_window_are_left_to_their_owner(
    fast, fast_store, redis
):
    """A batch record skips the id-by-id ownership check only within half of claim_idle_ms of the
    read that delivered its entries; a worker that stalls longer is checked, and leaves the
    entries another consumer took over to that consumer."""
    events = [stats_event("s2", guilds=i) for i in range(4)]
    ids = await post(redis, events)
    worker = Worker(fast, fast_store, redis)
    await worker.ensure_groups()
    await worker.intake.read()
    assert worker.intake.buffers[0].delivered_since is not None
    await asyncio.sleep(fast.claim_idle_ms / 1000)  # past the window (claim_idle_ms / 2)
    await redis.xclaim(stream_key(0), GROUP, "other-2", 0, ids[1:3])
    await worker.flush()
    assert await stored_ids(fast_store) == sorted([events[0].event_id, events[3].event_id])
    pending = await redis.xpending_range(stream_key(0), GROUP, "-", "+", 10)
    assert {(r["message_id"], r["consumer"]) for r in pending} == {(ids[1], b"other-2"), (ids[2], b"other-2")}


@pytest.mark.parametrize("taken_first", [False, True])
async def test_a_buffer_mixing_taken_over_and_fresh_entries_is_checked_id_by_id(
    fast, fast_store, redis, taken_first
):
    """Entries that joined a buffer by take-over were delivered before any clock reading the
    worker holds, so the batch's record checks ownership id by id whichever came first; the id
    another consumer holds by then is left to it (the fast path would have written it)."""
    events = [stats_event("mix", guilds=i) for i in range(4)]
    ids = await post(redis, events)
    worker = Worker(fast, fast_store, redis)
    await worker.ensure_groups()
    # Entries 0 and 1 come by take-over (delivered to this consumer, then accepted as claimed
    # ones are), 2 and 3 by the worker's own read.
    reply = await redis.xreadgroup(GROUP, worker.consumer, {stream_key(0): ">"}, count=2)
    taken = [(entry_id, fields) for _, entries in reply for entry_id, fields in entries]
    if taken_first:
        worker.intake.accept(0, taken)
        await worker.intake.read()
    else:
        await worker.intake.read()
        worker.intake.accept(0, taken)
    assert sorted(e.id for e in worker.intake.buffers[0].entries) == sorted(ids)
    await redis.xclaim(stream_key(0), GROUP, "other-3", 0, [ids[2]])
    await worker.flush()
    assert await stored_ids(fast_store) == sorted(events[i].event_id for i in (0, 1, 3))
    pending = await redis.xpending_range(stream_key(0), GROUP, "-", "+", 10)
    assert [(r["message_id"], r["consumer"]) for r in pending] == [(ids[2], b"other-3")]


async def test_stream_deleted_under_a_running_worker_is_read_again_once_posts_return(fast, fast_store, redis):
    """An operator deleting the stream (and so the group) under a running worker: its read fails
    with NOGROUP, it creates the group again and stores what is posted afterwards."""
    first = [stats_event("del", guilds=1)]
    await post(redis, first)
    async with worker_task(fast, fast_store):
        await drained(redis)
        await redis.delete(stream_key(0))
        await asyncio.sleep(0.2)  # the worker's blocking reads now meet no group
        later = [stats_event("del", guilds=i) for i in range(2, 5)]
        await post(redis, later)
        await until(lambda: _has_group(redis), what="the group created again")
        await drained(redis)
    assert await stored_ids(fast_store) == sorted(e.event_id for e in first + later)


async def _has_group(redis: aioredis.Redis) -> bool:
    return any(g["name"] == GROUP.encode() for g in await redis.xinfo_groups(stream_key(0)))


async def test_group_moved_back_while_buffered_stores_each_entry_once(fast, fast_store, redis):
    """Reads are trusted to arrive in stream order (no sort); an operator rewinding the group
    (XGROUP SETID) re-delivers buffered entries, and the batch must still hold each id once."""
    events = [stats_event("g1", guilds=i) for i in range(4)]
    ids = await post(redis, events)
    worker = Worker(fast, fast_store, redis)
    await worker.ensure_groups()
    await worker.intake.read()
    await redis.xgroup_setid(stream_key(0), GROUP, "0")
    await worker.intake.read()
    assert [e.id for e in worker.intake.buffers[0].entries] == ids + ids
    await worker.flush()
    assert await stored_ids(fast_store) == sorted(e.event_id for e in events)
    assert (await redis.xpending(stream_key(0), GROUP))["pending"] == 0


def test_claim_idle_must_cover_two_batches_and_inserts(make_settings, tmp_path):
    with pytest.raises(SettingsError, match="BOTPULSE_CLAIM_IDLE_MS=1000 is too small"):
        check_settings(make_settings(batch_ms=500, insert_timeout_s=1.0, claim_idle_ms=1000))
    check_settings(make_settings(batch_ms=500, insert_timeout_s=1.0, claim_idle_ms=3000))
    # `botpulse worker` refuses to start, with one line naming the variable, before opening anything.
    env = {
        **os.environ,
        "BOTPULSE_CLAIM_IDLE_MS": "1000",
        "BOTPULSE_INSERT_TIMEOUT_S": "10",
        "BOTPULSE_DATA_DIR": str(tmp_path),
        "REDIS_URL": "redis://127.0.0.1:1/0",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "botpulse", "worker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "BOTPULSE_CLAIM_IDLE_MS=1000 is too small" in proc.stderr
    assert not (tmp_path / "clickhouse").exists()


async def test_status_shows_partitions_consumers_and_dead_letters(fast, fast_store, redis, monkeypatch):
    await post(redis, [stats_event("st", guilds=1) for _ in range(5)])
    await redis.xadd(stream_key(0), {FIELD: b"junk"})
    async with worker_task(fast, fast_store):
        await drained(redis)
        await redis.xgroup_createconsumer(stream_key(0), GROUP, "idle-worker")
        monkeypatch.setenv("REDIS_URL", fast.redis_url)
        text = await asyncio.to_thread(_cli, ["status"])
        (view,) = msgspec.json.decode(await asyncio.to_thread(_cli, ["status", "--json"]))["partitions"]
    assert "partition 0" in text and "dead letters 1" in text and "consumer idle-worker: pending 0" in text
    assert view["dead_letters"] == 1
    assert view["pending"] == 0
    assert view["rows_total"] == 5
    assert view["last_insert_ms"] is not None
    assert view["rows_per_s"] > 0
    assert "idle-worker" in [c["name"] for c in view["consumers"]]


def test_operator_commands_need_redis_url_or_a_running_stack(make_settings, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("BOTPULSE_DATA_DIR", str(tmp_path))
    with pytest.raises(SystemExit, match="REDIS_URL is not set and no embedded stack"):
        cli_main(["status"])


async def test_a_steady_trickle_is_read_in_few_reads_per_batch_and_stored_once(
    make_settings, store, redis, monkeypatch
):  # type: ignore[no-untyped-def]
    # One entry every 10 ms: XREADGROUP BLOCK answers at each, so a worker that read as soon as
    # it could made about one read per entry. While a batch is open it reads at most every tenth
    # of BOTPULSE_BATCH_MS (workers/intake.py, `_linger`), and every entry is still stored once.
    settings = make_settings(batch_ms=1000, batch_rows=100_000)
    events = [stats_event(f"trickle{i % 5}", guilds=i) for i in range(120)]
    # The read-ahead during an insert (`wait=False`) never waits: the insert's end must not.
    ahead, lingered_ahead = [], []
    read, linger = Intake.read, Intake._linger

    async def read_spy(self, *, wait: bool = True) -> int:  # type: ignore[no-untyped-def]
        self.spy_ahead = not wait
        ahead.append(not wait)
        return await read(self, wait=wait)

    async def linger_spy(self) -> None:  # type: ignore[no-untyped-def]
        if getattr(self, "spy_ahead", False):
            lingered_ahead.append(True)
        await linger(self)

    monkeypatch.setattr(Intake, "read", read_spy)
    monkeypatch.setattr(Intake, "_linger", linger_spy)
    async with worker_task(settings, store):
        await until(lambda: _group_exists(redis), what="the worker's group")
        before = await _reads(redis)
        for e in events:
            await post(redis, [e])
            await asyncio.sleep(0.01)
        await drained(redis)
        reads = await _reads(redis) - before
    assert await stored_ids(store) == sorted(e.event_id for e in events)
    # 120 entries over at least 1.2 s: about 12 reads at one per 100 ms, plus the read-aheads
    # and the first read of each batch; one read per entry would be 120.
    assert reads <= 50, reads
    assert any(ahead) and not lingered_ahead


async def _group_exists(redis: aioredis.Redis) -> bool:
    with contextlib.suppress(Exception):
        return bool(await redis.xinfo_groups(stream_key(0)))
    return False


async def _reads(redis: aioredis.Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_xreadgroup", {}).get("calls", 0))
