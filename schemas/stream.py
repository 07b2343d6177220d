"""The stream message: what the gateway appends and the workers consume.

One Redis stream entry holds one field, `e`, whose value is a msgpack-encoded `StreamEvent`.
The payload is a tagged union; its tag is the event's kind.

The three structs are `gc=False`: they hold only scalars and a str -> float dict, so they can
never be part of a reference cycle, and a worker keeps 10,000 of them alive per batch; left to
the cyclic GC, which walks every tracked object it holds, decoding cost 3-5 us an event instead
of ~1.2 us.
"""

from __future__ import annotations

import msgspec


class StatsPayload(
    msgspec.Struct, tag="stats", tag_field="kind", omit_defaults=True, forbid_unknown_fields=False, gc=False
):
    """One stats post. Absent (or null) fields stay None; custom metrics are the ones that hold
    one of the bot's custom-graph slots (names over the slot limit were dropped by the gateway)."""

    guilds: int | None = None
    users: int | None = None
    shards: int | None = None
    api_ping: float | None = None
    ram_usage: float | None = None
    ram_total: float | None = None
    cpu: float | None = None
    bandwidth: float | None = None
    custom_metrics: dict[str, float] = {}


class CustomPayload(
    msgspec.Struct, tag="custom", tag_field="kind", omit_defaults=True, forbid_unknown_fields=False, gc=False
):
    """One custom-graph entry. Values are kept exactly as their decimal/string form."""

    type: str
    value1: str | None = None
    value2: str | None = None
    value3: str | None = None


Payload = StatsPayload | CustomPayload


class StreamEvent(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False, gc=False):
    event_id: str  # unique per accepted post (and per entry of a multi-entry post)
    received_ms: int  # the server's receive time, Unix ms: the row's `ts`
    bot_id: str
    account_id: str
    payload: Payload

    @property
    def kind(self) -> str:
        return type(self.payload).__struct_config__.tag  # type: ignore[return-value]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(StreamEvent)

FIELD = b"e"


def encode_event(event: StreamEvent) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes) -> StreamEvent:
    """Raises msgspec.DecodeError / ValidationError for a poison entry."""
    return _decoder.decode(data)
