"""Entries of several events (schemas/stream.py): the posts of one append-script call share a
stream entry. On real parts (valkey, chDB): the Lua that writes them against the Python that reads
them, the gateway's append (each post still admitted or refused on its own), and the worker
storing each event exactly once, with a poison event among its entry-mates, with entries of both
forms in one stream (a rolling upgrade), and after a crash before the ack. Workers killed for
real (SIGKILL in a subprocess) on such entries are in tests/test_workers_crash.py."""

# ruff: noqa: F811 - the poison fixtures (`worker`, `poison_settings`) come from test_workers_poison

from __future__ import annotations

import asyncio

import msgspec
import pytest
import redis.asyncio as aioredis

from botpulse.ingest.append import Appender, Limits, Outcome, Post
from botpulse.runtime.settings import Settings
from botpulse.schemas.stream import (
    FIELD,
    GROUP,
    LUA_ENTRY,
    MAX_ENTRY_BYTES,
    MAX_ENTRY_EVENTS,
    StreamEvent,
    batches_key,
    decode_events,
    encode_entry,
    encode_event,
    entry_events,
    split_entry,
    stream_key,
    worker_stats_key,
)
from botpulse.workers import batchlog as rec
from botpulse.workers.batch import Entry, decode_entry
from botpulse.workers.pipeline import Worker
from tests.test_workers import FAST, custom_event, drained, post, stats_event, stored_ids, worker_task
from tests.test_workers_poison import (  # noqa: F401 - the fixtures are used by name
    Crash,
    N,
    deliver_again,
    letters,
    pending,
    poison_settings,
    reject_while,
    stored_counts,
    worker,
)

# Every event of ARGV into entries of stream KEYS[1], as the append script does; returns how many
# entries `entry_add` said it opened.
_ADD_ALL = (
    LUA_ENTRY
    + """
local opened = 0
for i = 1, #ARGV do
  opened = opened + entry_add(KEYS[1], ARGV[i])
end
entry_flush(KEYS[1])
return opened
"""
)


async def post_packed(redis: aioredis.Redis, events: list[StreamEvent], per_entry: int) -> list[bytes]:
    """What a gateway does for posts appended in one call: `per_entry` events to an entry."""
    chunks = [events[i : i + per_entry] for i in range(0, len(events), per_entry)]
    async with redis.pipeline(transaction=False) as pipe:
        for chunk in chunks:
            pipe.xadd(stream_key(0), {FIELD: encode_entry([encode_event(e) for e in chunk])})
        return list(await pipe.execute())


# --- the contract ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 15, MAX_ENTRY_EVENTS, MAX_ENTRY_EVENTS + 1, 3 * MAX_ENTRY_EVENTS + 2])
async def test_entries_the_lua_writes_are_what_the_encoder_writes_and_the_reader_reads(redis, n):
    events = [stats_event(f"c{i}", guilds=i, custom_metrics={"m": float(i)}) for i in range(n)]
    encoded = [encode_event(e) for e in events]
    opened = await redis.eval(_ADD_ALL, 1, stream_key(0), *encoded)
    values = [fields[FIELD] for _, fields in await redis.xrange(stream_key(0))]
    chunks = [encoded[i : i + MAX_ENTRY_EVENTS] for i in range(0, n, MAX_ENTRY_EVENTS)]
    assert opened == len(values) == len(chunks)
    assert values == [encode_entry(chunk) for chunk in chunks]
    assert [e for v in values for e in entry_events(v)] == events
    # One event stays the bare event: the only form older gateways wrote, read as before.
    assert (split_entry(values[0]) is None) == (n == 1)
    if n == 1:
        assert values == [encoded[0]]


async def test_an_entry_is_closed_at_the_bytes_bound_and_a_large_event_stands_alone(redis):
    big = stats_event("big", custom_metrics={f"metric_{i:03}": float(i) for i in range(200)})
    small = [stats_event("small", guilds=i) for i in range(3)]
    encoded = [encode_event(e) for e in [small[0], big, small[1], small[2]]]
    assert len(encoded[1]) > MAX_ENTRY_BYTES
    await redis.eval(_ADD_ALL, 1, stream_key(0), *encoded)
    values = [fields[FIELD] for _, fields in await redis.xrange(stream_key(0))]
    assert values == [encoded[0], encoded[1], encode_entry(encoded[2:])]
    assert all(len(v) <= MAX_ENTRY_BYTES for i, v in enumerate(values) if i != 1)


@pytest.mark.parametrize("n", [2, MAX_ENTRY_EVENTS])
def test_an_entry_decoded_whole_gives_each_event_its_own_id_and_bytes(n) -> None:
    # The worker decodes an entry of several events in one call (`decode_events`); each event
    # still carries its own id and, when asked (poison, dead letters), its own bytes.
    events = [stats_event(f"w{i}", guilds=i, custom_metrics={"m": float(i)}) for i in range(n)]
    encoded = [encode_event(e) for e in events]
    value = encode_entry(encoded)
    decoded = decode_entry(b"5-1", value)
    assert isinstance(decoded, list) and all(isinstance(d, Entry) for d in decoded)
    assert [d.id for d in decoded] == [rec.part_id(b"5-1", i) for i in range(n)]
    assert [d.event for d in decoded] == events == decode_events(value)
    assert [d.data for d in decoded] == encoded == split_entry(value)
    # A single event stays itself: its id is the entry's, its bytes the whole value.
    (one,) = [decode_entry(b"6-0", encoded[0])]
    assert isinstance(one, Entry) and (one.id, one.data, one.event) == (b"6-0", encoded[0], events[0])


def test_an_array_that_is_not_msgpack_is_undecodable_not_a_crash() -> None:
    with pytest.raises(msgspec.DecodeError):
        split_entry(b"\x92\xc1\xc1")
    assert split_entry(encode_entry([b"\x01", b"\x02"])) == [b"\x01", b"\x02"]


# --- the gateway's append ----------------------------------------------------------------------


def _post(bot: str, event: StreamEvent) -> Post:
    return Post(0, bot, True, 2, [], [encode_event(event)], account_id="acc")


async def test_posts_appended_together_share_an_entry_and_are_each_admitted(redis):
    # A burst of 3 per bot: the 4th and 5th post of bot "busy" in the same call are refused, each
    # with its own answer, and leave no trace; the others share one entry, each its own event.
    appender = Appender(redis, 1_000_000, Limits(60_000, 3, 60_000, 3), timeout_s=5)
    busy = [stats_event("busy", guilds=i) for i in range(5)]
    calm = [stats_event(f"calm{i}", guilds=i) for i in range(4)]
    order = [*calm[:2], *busy, *calm[2:]]
    try:
        results = await asyncio.gather(*(appender.append(_post(e.bot_id, e)) for e in order))
    finally:
        await appender.close()
    outcomes = [r.outcome for r in results]
    assert outcomes == [Outcome.APPENDED] * 5 + [Outcome.RATE_LIMITED] * 2 + [Outcome.APPENDED] * 2
    ((_, fields),) = await redis.xrange(stream_key(0))  # one call, one entry
    assert entry_events(fields[FIELD]) == [*calm[:2], *busy[:3], *calm[2:]]
    assert await redis.xlen(stream_key(0)) == 1


async def test_the_backlog_bound_counts_entries_and_refuses_each_post_alone(redis):
    # One entry already in the stream, high water 2: the call's first post opens the second
    # entry; the posts after it find the stream at the mark and are refused (503 backlog_full).
    await redis.xadd(stream_key(0), {FIELD: encode_event(stats_event("old"))})
    appender = Appender(redis, 2, Limits(1, 1000, 1, 1000), timeout_s=5)
    events = [stats_event(f"b{i}") for i in range(3)]
    try:
        results = await asyncio.gather(*(appender.append(_post(e.bot_id, e)) for e in events))
    finally:
        await appender.close()
    assert [r.outcome for r in results] == [Outcome.APPENDED, Outcome.BACKLOG_FULL, Outcome.BACKLOG_FULL]
    assert [e for _, f in await redis.xrange(stream_key(0)) for e in entry_events(f[FIELD])][1:] == events[:1]


# --- the worker --------------------------------------------------------------------------------


@pytest.fixture
def fast(make_settings) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings(**FAST)


async def test_events_of_both_forms_are_each_stored_once_and_every_entry_acked(fast, store, redis):
    # A rolling upgrade: entries of one event (older gateways) and of several in one stream.
    stats = [
        stats_event(f"m{i % 3}", guilds=i, custom_metrics={"q": 1.0} if i % 2 else {}) for i in range(40)
    ]
    custom = [custom_event(f"m{i % 3}", value1=str(i)) for i in range(12)]
    await post(redis, stats[:5])
    ids = await post_packed(redis, [*stats[5:30], *custom], per_entry=7)
    await post(redis, stats[30:])
    async with worker_task(fast, store):
        await drained(redis)
    assert await stored_ids(store) == sorted(e.event_id for e in stats)
    assert await stored_ids(store, "custom_events") == sorted(e.event_id for e in custom)
    assert (await redis.xpending(stream_key(0), GROUP))["pending"] == 0
    assert len(ids) == 6  # 37 events, 7 to an entry
    rows = await redis.hgetall(worker_stats_key(0))
    assert int(rows[b"rows_total"]) == 52


async def _records(redis: aioredis.Redis) -> list[tuple[list[str], list[str]]]:
    return sorted((r.ids, r.parts) for r in map(rec.decode, (await redis.hgetall(batches_key(0))).values()))


async def test_a_poison_event_waits_and_is_dead_lettered_alone_its_entry_mates_stored_once(
    worker, store, redis
):
    mates = [stats_event("pm", guilds=i) for i in range(6)]
    bad = stats_event("pm", guilds=-1)  # ClickHouse (UInt64) refuses it, every time
    alone = stats_event("pm", guilds=100)
    (entry,) = await post_packed(redis, [*mates[:3], bad, *mates[3:]], per_entry=7)
    await post(redis, [alone])
    bad_id = rec.part_id(entry, 3)

    await worker.intake.read()
    await worker.flush()
    # The mates and the other entry are stored; the entry waits for its poison event alone,
    # under a record holding only that event.
    assert await stored_counts(store) == {e.event_id: 1 for e in [*mates, alone]}
    assert await pending(redis) == {entry: 1}
    assert await _records(redis) == [([entry.decode()], [bad_id.decode()])]
    for delivery in range(2, N):
        await deliver_again(worker)
        assert await pending(redis) == {entry: delivery}
        assert await letters(redis) == []
    await deliver_again(worker)
    (letter,) = await letters(redis)
    assert (letter[FIELD], letter[b"id"], int(letter[b"deliveries"])) == (encode_event(bad), bad_id, N)
    assert letter[b"reason"].decode().startswith("rejected by ClickHouse (bot_stats)")
    assert await pending(redis) == {} and await _records(redis) == []
    assert await stored_counts(store) == {e.event_id: 1 for e in [*mates, alone]}  # never again


async def test_a_rejected_event_that_becomes_acceptable_is_stored_once_and_its_mates_not_again(
    worker, store, redis, monkeypatch
):
    mates = [stats_event("fx", guilds=i, custom_metrics={"q": 1.0}) for i in range(5)]
    fixable = stats_event("fx", guilds=9, custom_metrics={"late": 2.0})
    broken = {"on": True}
    reject_while(store, monkeypatch, fixable, broken)
    (entry,) = await post_packed(redis, [*mates[:2], fixable, *mates[2:]], per_entry=6)
    await worker.intake.read()
    await worker.flush()
    await deliver_again(worker)
    assert await pending(redis) == {entry: 2}
    broken["on"] = False  # the table was fixed before the N-th delivery
    await deliver_again(worker)
    assert await pending(redis) == {} and await _records(redis) == [] and await letters(redis) == []
    assert await stored_counts(store) == {e.event_id: 1 for e in [*mates, fixable]}
    rollup = await store.query("SELECT sum(posts) FROM bot_stats_1h WHERE bot_id = 'fx'")
    assert rollup == [(len(mates) + 1,)]
    names = await store.query("SELECT DISTINCT name FROM custom_metric_names FINAL WHERE bot_id = 'fx'")
    assert sorted(names) == [("late",), ("q",)]


async def test_an_undecodable_event_among_decodable_ones_is_dead_lettered_alone(worker, store, redis):
    good = [stats_event("ud", guilds=i) for i in range(3)]
    alien = msgspec.msgpack.encode({"not": "an event"})  # msgpack, but no StreamEvent
    value = encode_entry([encode_event(good[0]), alien, encode_event(good[1]), encode_event(good[2])])
    entry = await redis.xadd(stream_key(0), {FIELD: value})
    await worker.intake.read()
    await worker.flush()
    assert await stored_counts(store) == {e.event_id: 1 for e in good}
    assert await pending(redis) == {entry: 1}
    for _ in range(2, N + 1):
        await deliver_again(worker)
    (letter,) = await letters(redis)
    assert (letter[FIELD], letter[b"id"]) == (alien, rec.part_id(entry, 1))
    assert letter[b"reason"].decode().startswith("undecodable")
    assert await pending(redis) == {} and await _records(redis) == []
    assert await stored_counts(store) == {e.event_id: 1 for e in good}


async def test_a_split_batch_of_shared_entries_recovered_after_a_crash_stores_each_event_once(
    poison_settings, worker, store, redis, monkeypatch
):
    """The worker split a batch around a rejected event, stored the rest, and died before its
    commit; the table is fixed before another worker takes the entries over from the record."""
    events = [stats_event("sc", guilds=i) for i in range(14)]
    fixable = stats_event("sc", guilds=99)
    broken = {"on": True}
    reject_while(store, monkeypatch, fixable, broken)
    ids = await post_packed(redis, [*events[:8], fixable, *events[8:]], per_entry=4)

    async def die(*_: object) -> None:
        raise Crash

    monkeypatch.setattr(worker.committer, "commit", die)
    await worker.intake.read()
    with pytest.raises(Crash):
        await worker.flush()
    assert await stored_counts(store) == {e.event_id: 1 for e in events}
    ((record_ids, parts),) = await _records(redis)
    assert (record_ids, parts) == ([i.decode() for i in ids], [])  # the entries, whole

    broken["on"] = False
    other = Worker(poison_settings, store, redis, consumer="other-host-3")
    await deliver_again(other)
    assert await pending(redis) == {} and await _records(redis) == [] and await letters(redis) == []
    assert await stored_counts(store) == {e.event_id: 1 for e in [*events, fixable]}
    rollup = await store.query("SELECT sum(posts) FROM bot_stats_1h WHERE bot_id = 'sc'")
    assert rollup == [(len(events) + 1,)]


# --- the whole path ----------------------------------------------------------------------------


async def test_concurrent_http_posts_share_entries_and_are_each_stored_once(make_settings, store, redis):
    """Through a real gateway: concurrent posts land in entries of several events, and a worker
    stores every event of every entry once."""
    from aiohttp.test_utils import TestClient, TestServer

    from botpulse.ingest import app as ingest_app
    from botpulse.registry import index
    from botpulse.registry.catalog import Bot, create_account, now, write_bot

    settings = make_settings(**FAST)
    account, key = await create_account(store, redis, "entries")
    bots = [str(5_100 + i) for i in range(8)]
    for bot in bots:
        await write_bot(store, redis, Bot(bot, account.id, "Bot", None, False, 10, None, now()))
    await redis.set(index.READY_KEY, "1")  # what the query service's index rebuild sets
    gateway = TestClient(TestServer(ingest_app.build_app(settings), host="127.0.0.1"))
    await gateway.start_server()
    auth = {"Authorization": key}
    try:
        requests = [
            gateway.post(
                f"/v1/bot/{bot}",
                json={"guilds": i, "customData": [{"type": "t", "value1": i}]},
                headers=auth,
            )
            for i, bot in enumerate(bots * 3)
        ] + [
            gateway.post(f"/v1/bot/{bot}/custom", json={"type": "c", "value1": bot}, headers=auth)
            for bot in bots
        ]
        statuses = [r.status for r in await asyncio.gather(*requests)]
    finally:
        await gateway.close()
    assert statuses == [204] * 24 + [200] * 8
    values = [f[FIELD] for _, f in await redis.xrange(stream_key(0))]
    events = [e for v in values for e in entry_events(v)]
    # Fewer entries than events: a post's events share one at least (the posts one call took
    # share it too: test_posts_appended_together_share_an_entry_and_are_each_admitted).
    assert len(events) == 24 * 2 + 8 and len(values) <= 24 + 8 < len(events)
    async with worker_task(settings, store):
        await drained(redis)
    stats = sorted(e.event_id for e in events if e.kind == "stats")
    custom = sorted(e.event_id for e in events if e.kind == "custom")
    assert await stored_ids(store) == stats and len(stats) == 24
    assert await stored_ids(store, "custom_events") == custom and len(custom) == 32
