"""The write-ahead record is written only while its writer owns every entry it names
(workers/batchlog.py), on a real valkey-server."""

from __future__ import annotations

import redis.asyncio as aioredis

from botpulse.schemas.stream import GROUP, batches_key, stream_key
from botpulse.workers import batchlog as rec

STREAM = stream_key(0)
BATCHES = batches_key(0)


async def _read(redis: aioredis.Redis, consumer: str, count: int) -> list[bytes]:
    reply = await redis.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=count)
    return [entry_id for _, entries in reply for entry_id, _ in entries]


async def _setup(redis: aioredis.Redis, entries: int) -> None:
    await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    for i in range(entries):
        await redis.xadd(STREAM, {"e": str(i)})


async def test_record_written_when_the_writer_owns_exactly_the_batch(redis: aioredis.Redis) -> None:
    await _setup(redis, 5)
    ids = await _read(redis, "a", 5)
    record = rec.new_record(STREAM, "a", ids)
    assert await rec.Records(redis, "a").write_if_owned(STREAM, BATCHES, record) == []
    assert rec.decode(await redis.hget(BATCHES, record.token)).ids == [i.decode() for i in ids]


async def test_record_written_when_other_own_entries_sit_inside_its_range(redis: aioredis.Redis) -> None:
    # The writer owns entries 0..4 but the batch names only 0, 2 and 4 (1 and 3 were taken over
    # from someone else earlier and belong to another batch): still all owned.
    await _setup(redis, 5)
    ids = await _read(redis, "a", 5)
    batch = [ids[0], ids[2], ids[4]]
    record = rec.new_record(STREAM, "a", batch)
    assert await rec.Records(redis, "a").write_if_owned(STREAM, BATCHES, record) == []
    assert await redis.hexists(BATCHES, record.token)


async def test_record_refused_with_the_ids_taken_over(redis: aioredis.Redis) -> None:
    await _setup(redis, 5)
    ids = await _read(redis, "a", 5)
    await redis.xclaim(STREAM, GROUP, "b", 0, [ids[1], ids[3]])
    record = rec.new_record(STREAM, "a", ids)
    lost = await rec.Records(redis, "a").write_if_owned(STREAM, BATCHES, record)
    assert sorted(lost) == sorted([ids[1], ids[3]])
    assert not await redis.hexists(BATCHES, record.token)


async def test_record_refused_when_an_entry_was_acknowledged(redis: aioredis.Redis) -> None:
    await _setup(redis, 3)
    ids = await _read(redis, "a", 3)
    await redis.xack(STREAM, GROUP, ids[2])
    record = rec.new_record(STREAM, "a", ids)
    assert await rec.Records(redis, "a").write_if_owned(STREAM, BATCHES, record) == [ids[2]]
    assert not await redis.hexists(BATCHES, record.token)


async def _server_ms(redis: aioredis.Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_fresh_batch_record_is_written_without_the_id_by_id_check(redis: aioredis.Redis) -> None:
    # Read just now: no entry can have been idle long enough for XAUTOCLAIM, so the record is
    # written on the caller's word. Entry 1 was claimed by hand (an operator's XCLAIM with no
    # idle time, which the fast path does not guard against) to show the check was skipped.
    await _setup(redis, 3)
    since = await _server_ms(redis)
    ids = await _read(redis, "a", 3)
    await redis.xclaim(STREAM, GROUP, "b", 0, [ids[1]])
    record = rec.new_record(STREAM, "a", ids)
    written = await rec.Records(redis, "a").write_if_owned(
        STREAM, BATCHES, record, delivered_since_ms=since, fresh_for_ms=60_000
    )
    assert written == []
    assert await redis.hexists(BATCHES, record.token)


async def test_batch_older_than_the_fresh_window_is_checked_id_by_id(redis: aioredis.Redis) -> None:
    await _setup(redis, 4)
    since = await _server_ms(redis)
    ids = await _read(redis, "a", 4)
    await redis.xclaim(STREAM, GROUP, "b", 0, [ids[0], ids[3]])
    record = rec.new_record(STREAM, "a", ids)
    records = rec.Records(redis, "a")
    # Delivered more than the window ago: the entries could have been taken over, and were.
    lost = await records.write_if_owned(
        STREAM, BATCHES, record, delivered_since_ms=since - 5_000, fresh_for_ms=1_000
    )
    assert sorted(lost) == sorted([ids[0], ids[3]])
    assert not await redis.hexists(BATCHES, record.token)
