"""Review of the poison-entry handling for "nothing lost, nothing doubled": interleavings the
step-by-step tests in `test_workers_poison.py` do not cover (two workers on one record, a take-over
while a batch is committed, a MULTI whose reply is lost), on real parts (valkey, chDB).

Each test failed before the fix it is named after (workers/writer.py, workers/recovery.py: a recovered batch
re-reads its record before inserting a block whole; entries gone from the stream and from the
pending list count as settled, not lost; a commit whose reply was lost is not run twice).
"""

from __future__ import annotations

import asyncio

import pytest
import redis as redis_sync
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from botpulse.runtime.clickhouse import Store
from botpulse.runtime.settings import Settings
from botpulse.schemas.stream import GROUP, batches_key, dead_letter_key, stream_key, worker_stats_key
from botpulse.workers import batchlog as rec
from botpulse.workers.pipeline import Worker
from tests.test_workers import FAST, post, stats_event
from tests.test_workers_poison import letters, pending, records, reject_while, stored_counts

N = 3


@pytest.fixture
def review_settings(make_settings) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings(max_deliveries=N, **FAST)


async def named_worker(settings: Settings, store: Store, redis: aioredis.Redis, name: str) -> Worker:
    w = Worker(settings, store, redis, consumer=name)
    await w.ensure_groups()
    return w


def records_read_earlier(monkeypatch: pytest.MonkeyPatch, worker: Worker, snapshot: dict) -> None:
    """`worker`'s next read of the records returns `snapshot`: it read them at that moment, and
    the other worker's steps shown after it ran before its next await returned."""
    real = worker.records.all
    calls = {"n": 0}

    async def all_(batches: str) -> dict[str, rec.BatchRecord]:
        calls["n"] += 1
        return snapshot if calls["n"] == 1 else await real(batches)

    monkeypatch.setattr(worker.records, "all", all_)


async def test_two_workers_recovering_one_split_record_store_each_entry_once(
    review_settings, store, redis, monkeypatch
):
    good = [stats_event("t1", guilds=i) for i in range(4)]
    fixable = stats_event("t1", guilds=50)
    broken = {"on": True}
    reject_while(store, monkeypatch, fixable, broken)
    ids = await post(redis, [*good[:2], fixable, *good[2:]])

    # W1 reads the entries, writes its batch record, and dies before inserting anything.
    w1 = await named_worker(review_settings, store, redis, "w1-host-1")
    await w1.intake.read()
    entries = w1.intake.buffers[0].entries
    assert await w1.open_batch(0, entries, in_order=True) is not None

    # Both W2 and W3 take entries of that batch over (W3 the last one, W2 the others, as their
    # idle times allow) and read the records: the same record, split=[] for both.
    await asyncio.sleep(review_settings.claim_idle_ms / 1000 + 0.05)
    w2 = await named_worker(review_settings, store, redis, "w2-host-1")
    w3 = await named_worker(review_settings, store, redis, "w3-host-1")
    w3_claimed = await redis.xclaim(stream_key(0), GROUP, w3.consumer, 0, [ids[-1]])
    records_read_earlier(monkeypatch, w3, await w3.records.all(batches_key(0)))

    # W2 recovers first: the fixable entry is still rejected, the rest stored in halves.
    await w2.take_over_idle()
    assert await stored_counts(store) == {e.event_id: 1 for e in good}
    assert await pending(redis) == {ids[2]: 2}

    broken["on"] = False  # the table is fixed (or the "data" error was a passing one)
    counts = {i: 2 for i, _ in w3_claimed}
    await w3.adopt(0, w3_claimed, deliveries=counts)
    # W3 finds the record committed meanwhile (in Redis, not in its copy): it writes nothing.
    assert await stored_counts(store) == {e.event_id: 1 for e in good}

    # The fixable entry waits under its own record; its next delivery stores it, once.
    await asyncio.sleep(review_settings.claim_idle_ms / 1000 + 0.05)
    await w2.take_over_idle()
    assert await stored_counts(store) == {e.event_id: 1 for e in [*good, fixable]}
    assert await pending(redis) == {}


async def test_poison_taken_over_mid_batch_counts_nothing_as_lost(review_settings, store, redis, monkeypatch):
    good = stats_event("t2", guilds=1)
    bad = stats_event("t2", guilds=-1)  # refused by ClickHouse every time
    ids = await post(redis, [good, bad])
    bad_id = ids[1]
    w1 = await named_worker(review_settings, store, redis, "w1-host-2")
    w2 = await named_worker(review_settings, store, redis, "w2-host-2")
    sync = redis_sync.Redis.from_url(review_settings.redis_url)
    taken: dict[str, object] = {}
    real = store.insert_sync

    def insert_sync(table, rows, columns, settings=None, column_oriented=False):  # type: ignore[no-untyped-def]
        if table == "bot_stats" and len(rows[0]) == 1 and bad.event_id in rows[2] and not taken:
            # W1 stalls past claim_idle_ms in the isolated insert of the poison entry: W2's
            # take-over pass claims the entry and reads the records (W1's record still there).
            taken["claimed"] = sync.xclaim(stream_key(0), GROUP, w2.consumer, 0, [bad_id])
            taken["records"] = {k.decode(): rec.decode(v) for k, v in sync.hgetall(batches_key(0)).items()}
        return real(table, rows, columns, settings, column_oriented)

    monkeypatch.setattr(store, "insert_sync", insert_sync)
    try:
        await w1.intake.read()
        await w1.flush()  # commits, then trims below the oldest pending entry (now W2's)
    finally:
        sync.close()
    assert taken, "the take-over happened during the poison entry's insert"
    assert await stored_counts(store) == {good.event_id: 1}
    assert await records(redis) == []  # left to W2, as 886c786 intends

    records_read_earlier(monkeypatch, w2, taken["records"])  # type: ignore[arg-type]
    claimed = [(i, {k: v for k, v in f.items()}) for i, f in taken["claimed"]]  # type: ignore[union-attr]
    await w2.adopt(0, claimed, deliveries={i: 2 for i, _ in claimed})

    assert await stored_counts(store) == {good.event_id: 1}
    assert await pending(redis) == {bad_id: 2}
    assert await records(redis) == [[bad_id.decode()]]
    stats = await redis.hgetall(worker_stats_key(0))
    assert int(stats.get(b"lost_total", 0)) == 0


async def test_commit_retried_after_a_lost_reply_dead_letters_once(make_settings, store, redis, monkeypatch):
    settings = make_settings(max_deliveries=1, **FAST)  # the first rejection is final
    w = await named_worker(settings, store, redis, "w1-host-3")
    bad = stats_event("t3", guilds=-1)
    (bad_id,) = await post(redis, [bad])
    real_execute = aioredis.client.Pipeline.execute
    lost = {"left": 1}

    async def execute(self, raise_on_error: bool = True):  # type: ignore[no-untyped-def]
        # Looked at before running: executing empties the pipeline's command stack.
        dead_letters = any(str(a) == dead_letter_key(0) for c in self.command_stack for a in c[0])
        result = await real_execute(self, raise_on_error)
        if lost["left"] and dead_letters:
            lost["left"] -= 1
            raise RedisConnectionError("reply lost after EXEC")
        return result

    monkeypatch.setattr(aioredis.client.Pipeline, "execute", execute)
    await w.intake.read()
    await w.flush()
    assert lost["left"] == 0  # the lost reply did happen
    assert await pending(redis) == {}
    assert [letter[b"id"] for letter in await letters(redis)] == [bad_id]
