"""The stream contract's one edit outside Python: the append script drops custom metrics from an
encoded stats event inside Redis (`LUA_DROP_METRICS`, schemas/stream.py). These tests run that
Lua in a real Redis against the Python encoder and decoder, so a change to the encoding that the
Lua does not follow fails here."""

from __future__ import annotations

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
    decode_event,
    encode_event,
    entry_events,
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
