"""The worker's overlap of the engine's work and its own (workers/pipeline.py, issue 18): while a
batch is inserted the next entries are read, and the next batch's insert starts before the
previous batch's commit; and still nothing is acknowledged before the insert that stored it
returned, and every post is stored once. Real valkey, real chDB."""

from __future__ import annotations

import asyncio
import itertools

from botpulse.schemas.stream import GROUP, stream_key
from botpulse.workers.pipeline import Worker
from tests.test_workers import FAST, drained, post, stats_event, stored_ids, worker_task


async def test_entries_are_read_while_a_batch_is_inserted_and_acked_only_after_it(
    make_settings, store, redis, monkeypatch
):
    settings = make_settings(**{**FAST, "batch_rows": 10})
    first = [stats_event("ra", guilds=i) for i in range(10)]
    later = [stats_event("ra", guilds=100 + i) for i in range(8)]
    worker = Worker(settings, store, redis)
    await worker.ensure_groups()
    await post(redis, first + later)
    while worker.intake.room() > 0:  # one batch's worth (the first read learns the entry size)
        await worker.intake.read()
    assert len(worker.intake.buffers[0].entries) == 10
    inserting, release = asyncio.Event(), asyncio.Event()
    real = store.insert

    async def held_insert(*args, **kwargs):  # type: ignore[no-untyped-def]
        inserting.set()
        await release.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, "insert", held_insert)
    flush = asyncio.create_task(worker.flush())
    await asyncio.wait_for(inserting.wait(), 10)
    for _ in range(200):
        if len(worker.intake.buffers[0].entries) == len(later):
            break
        await asyncio.sleep(0.02)
    # Read and decoded during the insert; nothing of the batch acknowledged yet.
    assert [e.event.event_id for e in worker.intake.buffers[0].entries] == [e.event_id for e in later]
    assert (await redis.xpending(stream_key(0), GROUP))["pending"] == len(first) + len(later)
    assert await stored_ids(store) == []
    monkeypatch.setattr(store, "insert", real)
    release.set()
    await asyncio.wait_for(flush, 30)
    # The entries read ahead were due by then: their batch went in before the flush returned.
    assert await stored_ids(store) == sorted(e.event_id for e in first + later)
    assert (await redis.xpending(stream_key(0), GROUP))["pending"] == 0


async def test_the_next_insert_starts_before_the_commit_and_each_commit_follows_its_insert(
    make_settings, store, redis, monkeypatch
):
    settings = make_settings(**{**FAST, "batch_rows": 20})
    events = [stats_event("ch", guilds=i) for i in range(200)]
    await post(redis, events)
    timeline: list[tuple[str, str]] = []  # (what, batch token)
    real_insert = store.insert

    async def insert(table, rows, columns, settings=None, column_oriented=False):  # type: ignore[no-untyped-def]
        token = settings["insert_deduplication_token"].split(":")[0]
        timeline.append(("insert started", token))
        await real_insert(table, rows, columns, settings, column_oriented)
        timeline.append(("insert done", token))

    monkeypatch.setattr(store, "insert", insert)
    from botpulse.workers import commit as commit_mod

    real_commit = commit_mod.Committer.commit
    unsafe: list[str] = []

    async def commit(self, batch, settlement):  # type: ignore[no-untyped-def]
        token = batch.record.token
        if ("insert done", token) not in timeline:
            unsafe.append(token)  # an ack before the batch's own insert returned
        # Every row the commit acknowledges is in the table already.
        ids = {e.event.event_id for e in batch.entries}
        stored = set(await stored_ids(store))
        if not ids <= stored:
            unsafe.append(token)
        timeline.append(("commit started", token))
        await real_commit(self, batch, settlement)
        timeline.append(("commit done", token))

    monkeypatch.setattr(commit_mod.Committer, "commit", commit)
    async with worker_task(settings, store):
        await drained(redis)
    assert unsafe == []
    assert await stored_ids(store) == sorted(e.event_id for e in events)  # each once
    rollup = await store.query("SELECT sum(posts) FROM bot_stats_1d WHERE bot_id = 'ch'")
    assert rollup == [(len(events),)]
    # The overlap happened: some batch's insert started while the batch before it was not
    # committed yet (its commit done only after).
    order = {event: i for i, event in enumerate(timeline)}
    tokens = [t for what, t in timeline if what == "insert started"]
    overlapped = [
        (a, b)
        for a, b in itertools.pairwise(tokens)
        if ("commit done", a) in order and order[("insert started", b)] < order[("commit done", a)]
    ]
    assert overlapped, timeline
    # Never two inserts at once.
    running = 0
    for what, _ in timeline:
        running += {"insert started": 1, "insert done": -1}.get(what, 0)
        assert running <= 1
