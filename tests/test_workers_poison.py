"""Poison entries (issue #6): isolated by splitting, retried on every delivery, dead-lettered only
at the N-th (`BOTPULSE_MAX_DELIVERIES`), on real parts (valkey, chDB).

Most tests drive one real `Worker` step by step (read, flush, take over) so every state in
between can be looked at; a delivery is what the take-over path does to an idle entry, so the
tests wait `claim_idle_ms` between steps. A rejection that later goes away (a table fixed
meanwhile) is injected: the real Store raises ClickHouse's error for the blocks holding that
event, as the server does for a type mismatch.
"""

from __future__ import annotations

import asyncio
import json

import msgspec
import pytest
import redis as redis_sync
import redis.asyncio as aioredis
from clickhouse_connect.driver.exceptions import DatabaseError

from botpulse.runtime.clickhouse import Store
from botpulse.runtime.settings import Settings
from botpulse.schemas.stream import (
    FIELD,
    GROUP,
    StreamEvent,
    batches_key,
    dead_letter_key,
    encode_event,
    stream_key,
    worker_stats_key,
)
from botpulse.workers import batch as workers_batch
from botpulse.workers import batchlog as rec
from botpulse.workers.pipeline import Worker
from botpulse.workers.rows import rows_by_table
from tests.test_workers import FAST, _cli, drained, post, stats_event, worker_task

N = 3  # deliveries before the dead letters: small, so the tests wait few take-over periods


@pytest.fixture
def poison_settings(make_settings) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings(max_deliveries=N, **FAST)


@pytest.fixture
async def worker(poison_settings: Settings, store: Store, redis: aioredis.Redis) -> Worker:
    w = Worker(poison_settings, store, redis)
    await w.ensure_groups()
    return w


async def pending(redis: aioredis.Redis) -> dict[bytes, int]:
    """Pending entries of the group: id -> delivery count."""
    rows = await redis.xpending_range(stream_key(0), GROUP, "-", "+", 1000)
    return {r["message_id"]: int(r["times_delivered"]) for r in rows}


async def deliver_again(worker: Worker) -> None:
    """Let the waiting entries go idle, then run the take-over pass (one more delivery each)."""
    await asyncio.sleep(worker.settings.claim_idle_ms / 1000 + 0.05)
    await worker.take_over_idle()


async def letters(redis: aioredis.Redis) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await redis.xrange(dead_letter_key(0))]


async def records(redis: aioredis.Redis) -> list[list[str]]:
    return sorted(rec.decode(v).ids for v in (await redis.hgetall(batches_key(0))).values())


async def stored_counts(store: Store) -> dict[str, int]:
    return dict(await store.query("SELECT event_id, count() FROM bot_stats GROUP BY event_id"))


def reject_while(store: Store, monkeypatch: pytest.MonkeyPatch, event: StreamEvent, broken: dict) -> None:
    """ClickHouse refuses any block holding `event` while `broken["on"]`."""
    real = store.insert_sync

    def insert_sync(table, rows, columns, settings=None, column_oriented=False):  # type: ignore[no-untyped-def]
        if broken["on"] and any(event.event_id in column for column in rows):
            raise DatabaseError("Code: 53. DB::Exception: Type mismatch in column guilds (injected)")
        return real(table, rows, columns, settings, column_oriented)

    monkeypatch.setattr(store, "insert_sync", insert_sync)


async def test_rejected_entry_is_retried_on_each_delivery_and_dead_lettered_at_the_nth(worker, store, redis):
    good = [stats_event("p1", guilds=i) for i in range(9)]
    bad = stats_event("p1", guilds=-1)  # ClickHouse (UInt64) refuses it, every time
    ids = await post(redis, [*good[:4], bad, *good[4:]])
    bad_id = ids[4]

    await worker.intake.read()
    await worker.flush()
    # The rest of the batch is stored and acknowledged; the poison entry is not: it stays
    # pending, delivered once, under a record of its own.
    assert await stored_counts(store) == {e.event_id: 1 for e in good}
    assert await pending(redis) == {bad_id: 1}
    assert await records(redis) == [[bad_id.decode()]]
    assert await letters(redis) == []
    # Trimming keeps it (and everything after it) in the stream.
    await worker.upkeep.trim(stream_key(0))
    assert [i for i, _ in await redis.xrange(stream_key(0))] == ids[4:]

    # It does not stall the stream: later posts are read, stored and acked meanwhile.
    later = [stats_event("p1", guilds=100 + i) for i in range(3)]
    await post(redis, later)
    await worker.intake.read()
    await worker.flush()
    assert await stored_counts(store) == {e.event_id: 1 for e in good + later}
    assert await pending(redis) == {bad_id: 1}

    for delivery in range(2, N):
        await deliver_again(worker)
        assert await pending(redis) == {bad_id: delivery}  # retried, rejected, still held
        assert await letters(redis) == []
        assert await records(redis) == [[bad_id.decode()]]

    await deliver_again(worker)  # the N-th delivery: rejected once more, then given up
    (letter,) = await letters(redis)
    assert letter[FIELD] == encode_event(bad)
    assert letter[b"id"] == bad_id
    assert int(letter[b"deliveries"]) == N
    reason = letter[b"reason"].decode()
    assert reason.startswith("rejected by ClickHouse (bot_stats)")
    assert f"delivered {N} times" in reason
    assert await pending(redis) == {}
    assert await records(redis) == []
    assert await stored_counts(store) == {e.event_id: 1 for e in good + later}
    assert int((await redis.hgetall(worker_stats_key(0)))[b"dead_total"]) == 1


async def test_rejected_entry_that_becomes_acceptable_is_stored_once(worker, store, redis, monkeypatch):
    good = [stats_event("f1", guilds=i) for i in range(6)]
    fixable = stats_event("f1", guilds=7)
    broken = {"on": True}
    reject_while(store, monkeypatch, fixable, broken)
    ids = await post(redis, [*good[:3], fixable, *good[3:]])

    await worker.intake.read()
    await worker.flush()
    await deliver_again(worker)
    assert await pending(redis) == {ids[3]: 2}
    broken["on"] = False  # the table was fixed before the N-th delivery
    await deliver_again(worker)
    assert await pending(redis) == {}
    assert await records(redis) == []
    assert await letters(redis) == []
    assert await stored_counts(store) == {e.event_id: 1 for e in [*good, fixable]}
    for table in ("bot_stats_1h", "bot_stats_1d"):
        rollup = await store.query(f"SELECT sum(posts) FROM {table} WHERE bot_id = 'f1'")
        assert rollup == [(len(good) + 1,)], table


async def test_retried_entry_stored_by_a_worker_that_died_before_the_ack_is_not_doubled(
    poison_settings, worker, store, redis, monkeypatch
):
    """The poison entry's own record carries its token: a worker that stored it on a retry and
    died before acknowledging leaves it to the next owner, whose insert is deduplicated."""
    fixable = stats_event("c1", guilds=3)
    broken = {"on": True}
    reject_while(store, monkeypatch, fixable, broken)
    (entry_id,) = await post(redis, [fixable])
    await worker.intake.read()
    await worker.flush()
    (waiting,) = (await redis.hgetall(batches_key(0))).values()
    record = rec.decode(waiting)
    assert record.ids == [entry_id.decode()] and record.token == rec.token_for(stream_key(0), [entry_id])

    broken["on"] = False
    # This worker takes it over, stores it (same record, same token), and dies before the ack.
    await asyncio.sleep(poison_settings.claim_idle_ms / 1000 + 0.05)
    await redis.xclaim(stream_key(0), GROUP, worker.consumer, 0, [entry_id])
    batch = await worker.recovery.load_batch(0, record, {})
    block, _ = rows_by_table([(e.id, e.event) for e in batch.entries])["bot_stats"]
    await worker.writer.insert(batch, "bot_stats", block, f"{record.token}:bot_stats")
    assert await stored_counts(store) == {fixable.event_id: 1}

    other = Worker(poison_settings, store, redis, consumer="other-host-1")
    await deliver_again(other)
    assert await pending(redis) == {}
    assert await records(redis) == []
    assert await letters(redis) == []
    assert await stored_counts(store) == {fixable.event_id: 1}


async def test_undecodable_entry_waits_for_n_deliveries_too(worker, store, redis):
    good = [stats_event("u1", guilds=i) for i in range(4)]
    await post(redis, good[:2])
    junk_id = await redis.xadd(stream_key(0), {FIELD: b"\xc1 not msgpack"})
    await post(redis, good[2:])

    await worker.intake.read()
    await worker.flush()
    assert await stored_counts(store) == {e.event_id: 1 for e in good}
    assert await pending(redis) == {junk_id: 1}
    assert await records(redis) == [[junk_id.decode()]]
    for delivery in range(2, N):
        await deliver_again(worker)
        assert await pending(redis) == {junk_id: delivery}
        assert await letters(redis) == []
    await deliver_again(worker)
    (letter,) = await letters(redis)
    assert letter[b"reason"].decode().startswith("undecodable")
    assert int(letter[b"deliveries"]) == N
    assert letter[FIELD] == b"\xc1 not msgpack"
    assert await pending(redis) == {} and await records(redis) == []


async def test_undecodable_entry_a_later_reader_decodes_is_stored_once(worker, store, redis, monkeypatch):
    """An entry this reader version cannot decode may be decodable by the next one: it is kept
    pending, and stored when a delivery finds a reader that decodes it."""
    event = stats_event("v1", guilds=11)
    data = encode_event(event)
    real = workers_batch.decode_event
    old_reader = {"on": True}

    def decode(raw: bytes) -> StreamEvent:
        if old_reader["on"] and raw == data:
            raise msgspec.ValidationError("unknown field (injected: older reader)")
        return real(raw)

    monkeypatch.setattr(workers_batch, "decode_event", decode)
    other = stats_event("v1", guilds=1)
    ids = await post(redis, [event, other])
    await worker.intake.read()
    await worker.flush()
    assert await pending(redis) == {ids[0]: 1}
    assert await stored_counts(store) == {other.event_id: 1}
    old_reader["on"] = False  # a newer worker version took over
    await deliver_again(worker)
    assert await pending(redis) == {} and await records(redis) == [] and await letters(redis) == []
    assert await stored_counts(store) == {event.event_id: 1, other.event_id: 1}


async def test_running_worker_dead_letters_then_replay_stores_the_fixed_entry(
    poison_settings, store, redis, monkeypatch
):
    good = [stats_event("r1", guilds=i) for i in range(5)]
    fixable = stats_event("r1", guilds=9)
    broken = {"on": True}
    reject_while(store, monkeypatch, fixable, broken)
    await post(redis, [*good[:2], fixable, *good[2:]])
    async with worker_task(poison_settings, store):
        await drained(redis)  # drained only once the poison entry has left for the dead letters
    assert await stored_counts(store) == {e.event_id: 1 for e in good}
    monkeypatch.setenv("REDIS_URL", poison_settings.redis_url)
    monkeypatch.setenv("BOTPULSE_DATA_DIR", poison_settings.data_dir)
    out = await asyncio.to_thread(_cli, ["dead-letters", "list", "--json"])
    (letter,) = [json.loads(line) for line in out.splitlines()]
    assert letter["deliveries"] == N
    assert letter["event"]["event_id"] == fixable.event_id
    assert "Type mismatch" in letter["reason"]

    broken["on"] = False
    out = await asyncio.to_thread(_cli, ["dead-letters", "replay", "--all"])
    assert "1 dead letter(s) replayed" in out
    async with worker_task(poison_settings, store):
        await drained(redis)
    assert await redis.xlen(dead_letter_key(0)) == 0
    assert await stored_counts(store) == {e.event_id: 1 for e in [*good, fixable]}


class Crash(Exception):
    """Stands for the worker dying at this point (its state in Redis is left as it is)."""


async def test_split_batch_recovered_after_its_poison_became_acceptable_stores_each_once(
    poison_settings, worker, store, redis, monkeypatch
):
    """A worker split a batch around a rejected entry, stored the good halves and died before
    its commit; the table is fixed before the entries are taken over. The recovery must not
    insert the whole batch under its own token (the halves went in under theirs): it follows the
    splits its record names, so the good rows are deduplicated and the fixed one stored once."""
    good = [stats_event("s1", guilds=i, custom_metrics={"queue": 1.0}) for i in range(11)]
    fixable = stats_event("s1", guilds=5, custom_metrics={"shards_ready": 2.0})
    broken = {"on": True}
    reject_while(store, monkeypatch, fixable, broken)
    ids = await post(redis, [*good[:6], fixable, *good[6:]])

    async def die(*_: object) -> None:
        raise Crash

    monkeypatch.setattr(worker.committer, "commit", die)
    await worker.intake.read()
    with pytest.raises(Crash):
        await worker.flush()
    assert await stored_counts(store) == {e.event_id: 1 for e in good}
    (record,) = [rec.decode(v) for v in (await redis.hgetall(batches_key(0))).values()]
    assert record.ids == [i.decode() for i in ids]

    broken["on"] = False
    other = Worker(poison_settings, store, redis, consumer="other-host-2")
    await deliver_again(other)
    assert await pending(redis) == {} and await records(redis) == [] and await letters(redis) == []
    assert await stored_counts(store) == {e.event_id: 1 for e in [*good, fixable]}
    for table in ("bot_stats_1h", "bot_stats_1d"):
        rollup = await store.query(f"SELECT sum(posts) FROM {table} WHERE bot_id = 's1'")
        assert rollup == [(len(good) + 1,)], table
    # The recovered entry's custom metric name is listed too (its batch's names block changed).
    names = await store.query("SELECT DISTINCT name FROM custom_metric_names FINAL WHERE bot_id = 's1'")
    assert sorted(names) == [("queue",), ("shards_ready",)]


async def test_poison_entry_taken_over_while_its_batch_was_written_is_left_to_its_new_owner(
    worker, store, redis, monkeypatch, poison_settings
):
    good = [stats_event("p1", guilds=i) for i in range(3)]
    bad = stats_event("p1", guilds=-1)
    ids = await post(redis, [*good, bad])
    bad_id = ids[3]
    other = redis_sync.Redis.from_url(poison_settings.redis_url)
    real = store.insert_sync

    def insert_sync(table, rows, columns, settings=None, column_oriented=False):  # type: ignore[no-untyped-def]
        # This worker stalls inside its insert long enough for another one to take the entry over.
        other.xclaim(stream_key(0), GROUP, "other", 0, [bad_id])
        return real(table, rows, columns, settings, column_oriented)

    monkeypatch.setattr(store, "insert_sync", insert_sync)
    try:
        await worker.intake.read()
        await worker.flush()
    finally:
        other.close()
    assert await stored_counts(store) == {e.event_id: 1 for e in good}
    # Neither acknowledged nor given a record of this worker's: the new owner settles it.
    rows = await redis.xpending_range(stream_key(0), GROUP, "-", "+", 10)
    assert [(r["message_id"], r["consumer"]) for r in rows] == [(bad_id, b"other")]
    assert await records(redis) == []
    assert await letters(redis) == []
