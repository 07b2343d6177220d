"""The stream contract's one edit outside Python: the append script drops custom metrics from an
encoded stats event inside Redis (`LUA_DROP_METRICS`, schemas/stream.py). These tests run that
Lua in a real Redis against the Python encoder and decoder, so a change to the encoding that the
Lua does not follow fails here."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from botpulse.ingest.append import SCRIPT, Appender, Limits, Outcome, Post
from botpulse.schemas.stream import (
    CUSTOM_METRICS_KEY,
    ENTRY_FIELD,
    FIELD,
    LUA_DROP_METRICS,
    PAYLOAD_KEY,
    CustomPayload,
    StatsPayload,
    StreamEvent,
    custom_slots_key,
    custom_types_key,
    decode_event,
    encode_event,
    entry_events,
    prop_slots_key,
    rate_key,
    stream_key,
)

_CALL = LUA_DROP_METRICS + "return drop_metrics(ARGV[1], {unpack(ARGV, 2)})"


def _event(metrics: dict[str, float]) -> StreamEvent:
    payload = StatsPayload(
        guilds=2**53, users=12, shards=None, api_ping=0.1, ram_usage=52_428_800.0, ram_total=1.5,
        cpu=40.0, bandwidth=None, custom_metrics=metrics,
    )  # fmt: skip
    return StreamEvent("pfx-1", 1_764_000_000_123, "300000000000000000", "acc_1", payload)


def _without(event: StreamEvent, dropped: set[str]) -> StreamEvent:
    assert isinstance(event.payload, StatsPayload)
    kept = {k: v for k, v in event.payload.custom_metrics.items() if k not in dropped}
    return msgspec.structs.replace(event, payload=msgspec.structs.replace(event.payload, custom_metrics=kept))


def test_the_encoder_writes_the_layout_the_lua_reads():
    # Maps keyed by attribute names (not array_like, no rename) ...
    for struct in (StreamEvent, StatsPayload, CustomPayload):
        assert not struct.__struct_config__.array_like
        assert struct.__struct_encode_fields__ == struct.__struct_fields__
    raw = msgspec.msgpack.decode(encode_event(_event({"music": 4.0})))
    assert raw[PAYLOAD_KEY][CUSTOM_METRICS_KEY] == {"music": 4.0}
    # ... and an empty custom_metrics is left out, as the Lua leaves it when it drops them all.
    assert CUSTOM_METRICS_KEY not in msgspec.msgpack.decode(encode_event(_event({})))[PAYLOAD_KEY]


@pytest.mark.parametrize(
    ("metrics", "dropped"),
    [
        ({"music": 4.0, "votes": 2.5, "queue": 7.0}, {"queue"}),
        ({"music": 4.0, "Müsik, live": 0.1}, {"Müsik, live", "music"}),
        ({"a": 1.0, "b": 2.0}, {"b", "not-there"}),
    ],
)
async def test_drop_metrics_in_redis_gives_what_the_decoder_expects(redis, metrics, dropped):
    event = _event(metrics)
    edited = await redis.eval(_CALL, 0, encode_event(event), *sorted(dropped))
    assert decode_event(edited) == _without(event, dropped)
    raw = msgspec.msgpack.decode(edited)
    kept = set(metrics) - dropped
    assert (CUSTOM_METRICS_KEY in raw[PAYLOAD_KEY]) == bool(kept)


async def test_the_append_script_writes_the_entry_field_the_workers_read(redis):
    assert LUA_DROP_METRICS in SCRIPT and "$" not in SCRIPT
    event = _event({"music": 4.0, "votes": 2.5, "queue": 7.0})
    custom = StreamEvent("pfx-2", event.received_ms, event.bot_id, "acc_1", CustomPayload("cmd", "x"))
    await redis.sadd(custom_slots_key(0, event.bot_id), "music")
    appender = Appender(redis, 1_000_000, Limits(1, 10, 1, 10), timeout_s=5)
    try:
        events = [encode_event(event), encode_event(custom)]
        result = await appender.append(Post(0, event.bot_id, True, 2, ["music", "votes", "queue"], events))
    finally:
        await appender.close()
    assert (result.outcome, result.dropped) == (Outcome.APPENDED, ("queue",))
    # The post's two events share one entry, which holds one field.
    ((_, fields),) = await redis.xrange(stream_key(0))
    assert list(fields) == [ENTRY_FIELD.encode()]
    assert entry_events(fields[FIELD]) == [_without(event, {"queue"}), custom]


def test_the_structs_the_gateway_builds_positionally_keep_their_field_order() -> None:
    # ingest/app.py builds `Post` and ingest/bodies.py `StatsPayload` positionally on every post
    # (msgspec's keyword path is slower): a field inserted or moved must update those calls.
    from botpulse.ingest.append import Post
    from botpulse.schemas.stream import StatsPayload

    assert StatsPayload.__struct_fields__ == (
        "guilds", "users", "shards", "api_ping", "ram_usage", "ram_total", "cpu", "bandwidth",
        "custom_metrics", "props",
    )  # fmt: skip
    assert Post.__struct_fields__ == (
        "partition", "bot_id", "stats", "slot_limit", "metric_names", "events", "account_id",
        "account_interval_ms", "account_burst", "type_limit", "types", "prop_limit", "prop_names",
    )  # fmt: skip


async def _append(redis, posts: list[Post], limits: Limits | None = None) -> list:
    """The posts appended together: one tick, so one script call."""
    appender = Appender(redis, 1_000_000, limits or Limits(1, 10_000, 1, 10_000), timeout_s=5)
    try:
        return await asyncio.gather(*(appender.append(p) for p in posts))
    finally:
        await appender.close()


async def test_a_custom_entry_whose_type_has_no_slot_is_the_one_left_out(redis):
    # A stats post with two entries: the script finds each entry's type by its place among the
    # post's last n_typed events, so the entry without a slot, not its neighbour, is dropped.
    event = _event({})
    entries = [
        StreamEvent(f"pfx-{i}", event.received_ms, event.bot_id, "acc_1", CustomPayload(kind, "x"))
        for i, kind in ((2, "cmd"), (3, "vote"))
    ]
    await redis.sadd(custom_types_key(0, event.bot_id), "cmd")
    post = Post(0, event.bot_id, True, 5, [], [encode_event(e) for e in (event, *entries)],
                type_limit=1, types=["cmd", "vote"])  # fmt: skip
    (result,) = await _append(redis, [post])
    assert (result.outcome, result.dropped_types) == (Outcome.APPENDED, ("vote",))
    ((_, fields),) = await redis.xrange(stream_key(0))
    assert entry_events(fields[FIELD]) == [event, entries[0]]


async def test_metrics_and_properties_of_one_post_take_slots_in_their_own_sets(redis):
    payload = StatsPayload(guilds=1, custom_metrics={"m1": 1.0, "m2": 2.0}, props={"p1": "a", "p2": "b"})
    event = StreamEvent("pfx-1", 1_764_000_000_123, "300000000000000000", "acc_1", payload)
    post = Post(0, event.bot_id, True, 1, ["m1", "m2"], [encode_event(event)], prop_limit=1,
                prop_names=["p1", "p2"])  # fmt: skip
    (result,) = await _append(redis, [post])
    assert (result.dropped, result.dropped_props) == (("m2",), ("p2",))
    assert await redis.smembers(custom_slots_key(0, event.bot_id)) == {b"m1"}
    assert await redis.smembers(prop_slots_key(0, event.bot_id)) == {b"p1"}
    ((_, fields),) = await redis.xrange(stream_key(0))
    kept = msgspec.structs.replace(payload, custom_metrics={"m1": 1.0}, props={"p1": "a"})
    assert entry_events(fields[FIELD]) == [msgspec.structs.replace(event, payload=kept)]


async def test_a_call_of_more_than_255_rate_fields_appends_every_post(redis):
    # 128 posts (a full call) of distinct bots and accounts: 256 rate fields, so indexes past
    # one byte's msgpack form.
    events = [
        StreamEvent(
            f"pfx-{i}", 1_764_000_000_123, str(300000000000000000 + i), f"acc_{i}", StatsPayload(guilds=i)
        )
        for i in range(128)
    ]
    posts = [Post(0, e.bot_id, True, 0, [], [encode_event(e)], account_id=e.account_id) for e in events]
    results = await _append(redis, posts)
    assert {r.outcome for r in results} == {Outcome.APPENDED}
    assert await redis.hlen(rate_key(0)) == 256
    stored = [ev for _, fields in await redis.xrange(stream_key(0)) for ev in entry_events(fields[FIELD])]
    assert stored == events


async def test_the_rate_state_is_stored_exactly_as_integral_ms(redis):
    # A stored time ahead of now: the post's new time is exactly it plus the interval.
    seconds, micros = await redis.time()
    ahead = seconds * 1000 + micros // 1000 + 60_000
    bot = "300000000000000000"
    await redis.hset(rate_key(0), f"s:{bot}", ahead)
    post = Post(0, bot, True, 0, [], [encode_event(_event({}))], account_id="acc_1")
    (result,) = await _append(redis, [post], Limits(10, 100_000, 10, 100_000))
    assert result.outcome is Outcome.APPENDED
    assert await redis.hget(rate_key(0), f"s:{bot}") == b"%d" % (ahead + 10)
    assert (await redis.hget(rate_key(0), "a:acc_1")).isdigit()
