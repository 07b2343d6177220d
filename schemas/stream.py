"""The one Redis stream contract: key names, partitioning, the consumer group, and the message
the gateway appends and the workers consume.

Streams are partitioned by bot id. Every key that belongs to a partition carries the hash tag
`{p<N>}` so a partition's stream, its dead letters, its batch records, its rate-limit hash and
its bots' custom-slot and type sets live in one Redis Cluster slot (one Lua script can touch them
together) while partitions spread over the cluster.

One Redis stream entry holds one field, `e` (`ENTRY_FIELD`), whose value is either one
msgpack-encoded `StreamEvent` (a map) or a msgpack array of up to `MAX_ENTRY_EVENTS` of them: the
events the gateway appended in one script call share an entry (`LUA_ENTRY`), so Redis runs one
`XADD` for them and a worker reads, tracks and acknowledges one entry. Each event keeps its own
`event_id`; the worker stores each one exactly once (workers/batch.py names the events of an
entry `<entry id>#<index>`). A single event is always written as the bare map, the only form
gateways wrote before, so entries of either age read the same way (`is_several`). The payload
is a tagged union; its tag is the event's kind. The gateway's append script edits encoded stats
events inside Redis with `LUA_DROP_METRICS`, defined here beside the encoding it relies on
(tests/test_stream_contract.py runs both Lua parts against the encoder and decoder).

The message structs are `gc=False`: they hold only scalars, str -> scalar dicts and lists of
scalar-only structs, so they can never be part of a reference cycle, and a worker keeps 10,000
of them alive per batch; left to the cyclic GC, which walks every tracked object on each
collection, decoding cost several times as much (docs/benchmarks.md, "Figures behind choices in
the code").
"""

from __future__ import annotations

import zlib

import msgspec

# --- keys and partitioning ---------------------------------------------------------------------

GROUP = "botpulse-workers"


def partition_of(bot_id: str, partitions: int) -> int:
    if partitions == 1:  # the default: every post asks, no hash needed
        return 0
    return zlib.crc32(bot_id.encode()) % partitions


def tag(partition: int) -> str:
    return f"{{p{partition}}}"


def stream_key(partition: int) -> str:
    return f"bp:{tag(partition)}:events"


def dead_letter_key(partition: int) -> str:
    return f"bp:{tag(partition)}:dead"


def batches_key(partition: int) -> str:
    """Write-ahead records of the batches a worker is inserting (see workers/)."""
    return f"bp:{tag(partition)}:batches"


def batch_lease_key(batches: str, token: str) -> str:
    """The lease of the one worker writing record `token` of `batches` (`batches_key`): the
    holder's consumer name, with a TTL (see workers/batchlog.py)."""
    return f"{batches}:lease:{token}"


def rate_key(partition: int) -> str:
    """Hash of the rate-limit state (GCRA theoretical arrival time, Unix ms) of the partition's
    bots: field `s:<botId>` for stats posts, `c:<botId>` for custom ones (see ingest/append.py)."""
    return f"bp:{tag(partition)}:rl"


def custom_slots_key(partition: int, bot_id: str) -> str:
    """Set of custom metric names holding one of the bot's custom-graph slots."""
    return f"bp:{tag(partition)}:slots:{bot_id}"


def prop_slots_key(partition: int, bot_id: str) -> str:
    """Set of the extra (non-numeric) property names holding one of the bot's property slots."""
    return f"bp:{tag(partition)}:props:{bot_id}"


def shard_state_key(partition: int, bot_id: str) -> str:
    """Hash of the latest values of each shard of a bot that posts per shard (field: shard id),
    from which the gateway's shard script writes the bot's totals (see ingest/shards.py)."""
    return f"bp:{tag(partition)}:shards:{bot_id}"


# A shard silent this long is no longer one of the bot's shards (removed by resharding): it drops
# out of the bot's totals (gateway) and of `shardsTotal` (query).
SHARD_FORGET_MS = 86_400_000
# The most shards a bot can have: the upper bound of `BOTPULSE_SHARD_LIMIT` and of a
# `shards_down` rule's `count`.
MAX_SHARD_LIMIT = 100_000


def custom_types_key(partition: int, bot_id: str) -> str:
    """Set of custom-event types holding one of the bot's custom-event type slots."""
    return f"bp:{tag(partition)}:types:{bot_id}"


def worker_stats_key(partition: int) -> str:
    """Hash of last insert time and recent rows/s, for `botpulse status`."""
    return f"bp:{tag(partition)}:workerstats"


def worker_health_key() -> str:
    """Hash of every worker's last health report (consumer name -> JSON `HealthReport`, see
    runtime/health_reports.py), for `botpulse status`: backing off, and why."""
    return "bp:workers:health"


# --- the message -------------------------------------------------------------------------------


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
    # Extra non-numeric properties (name -> short text) that hold one of the bot's property slots.
    # Added after the first release: entries written before it decode with an empty map.
    props: dict[str, str] = {}


class CustomPayload(
    msgspec.Struct, tag="custom", tag_field="kind", omit_defaults=True, forbid_unknown_fields=False, gc=False
):
    """One custom-graph entry. Values are kept exactly as their decimal/string form."""

    type: str
    value1: str | None = None
    value2: str | None = None
    value3: str | None = None


class ShardEntry(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False, gc=False):
    """One shard's values in a post. `up` is derived from the status the client sent (a shard
    that posts without a status is up); `status` keeps that status as normalised text."""

    id: int
    up: bool = True
    status: str | None = None
    guilds: int | None = None
    users: int | None = None
    api_ping: float | None = None


class ShardsPayload(
    msgspec.Struct, tag="shards", tag_field="kind", omit_defaults=True, forbid_unknown_fields=False, gc=False
):
    """The per-shard part of a post: one entry (a post carrying `shardId`) or many (a post with a
    `shards` array). The bot's totals travel separately as a `StatsPayload`."""

    shards: list[ShardEntry] = []


Payload = StatsPayload | CustomPayload | ShardsPayload


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

ENTRY_FIELD = "e"
FIELD = ENTRY_FIELD.encode()


def encode_event(event: StreamEvent) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes) -> StreamEvent:
    """Raises msgspec.DecodeError / ValidationError for a poison entry."""
    return _decoder.decode(data)


# --- entries of several events -----------------------------------------------------------------
# An entry's value is one encoded event (a msgpack map), or a msgpack array of encoded events.
# The bounds keep an entry within a stream node's default size (`stream-node-max-bytes` 4096) and
# bound what one worker read can bring: it asks for entries, sized by the events per entry it
# saw last (workers/intake.py), so at most `MAX_ENTRY_EVENTS` times `BOTPULSE_BATCH_ROWS` events
# when the stream switches from single events to full entries between two reads. One event
# larger than the bytes bound still gets an entry of its own.
MAX_ENTRY_EVENTS = 16
MAX_ENTRY_BYTES = 4096

# The first byte of a msgpack array (fixarray, array 16, array 32): an entry of several events.
_ARRAY_MARKERS = frozenset([*range(0x90, 0xA0), 0xDC, 0xDD])
_parts_decoder = msgspec.msgpack.Decoder(list[msgspec.Raw])
_events_decoder = msgspec.msgpack.Decoder(list[StreamEvent])


def encode_entry(events: list[bytes]) -> bytes:
    """The entry value of encoded events, as the append script's `LUA_ENTRY` writes it."""
    if len(events) == 1:
        return events[0]
    return _encoder.encode([msgspec.Raw(e) for e in events])


def split_entry(data: bytes) -> list[bytes] | None:
    """The encoded events of an entry of several events, None for an entry of one (decode it
    with `decode_event`). Raises msgspec.DecodeError / ValidationError for a value that is an
    array but not an array of msgpack values (poison)."""
    if not is_several(data):
        return None
    return [bytes(part) for part in _parts_decoder.decode(data)]


def is_several(data: bytes) -> bool:
    """Whether an entry's value is an array of events (else one bare event)."""
    return bool(data) and data[0] in _ARRAY_MARKERS


def decode_events(data: bytes) -> list[StreamEvent]:
    """The events of an entry of several (`is_several`) in one decode, without splitting it
    first: a fourth of the cost of `split_entry` and a decode per event. Raises
    msgspec.DecodeError / ValidationError if any of them is poison; `split_entry` then tells
    which (the others still stand)."""
    return _events_decoder.decode(data)


def entry_events(data: bytes) -> list[StreamEvent]:
    """Every event of an entry's value, in order (raises like `decode_event`)."""
    return decode_events(data) if is_several(data) else [decode_event(data)]


# --- editing an encoded event in Redis ---------------------------------------------------------
# A post's custom metrics that find no free slot are dropped inside the append script, in the same
# atomic call that takes the slots, so the stream never holds a name over the limit. The script
# cannot run the Python encoder; it relies on what `encode_event` writes: a msgpack map (the
# structs are not array_like) keyed by the attribute names (no rename), the payload a map too, and
# an empty `custom_metrics` left out (omit_defaults), which the function mirrors. Redis's cmsgpack
# packs an integral float as an int; the decoder reads it back as a float.
PAYLOAD_KEY = "payload"
CUSTOM_METRICS_KEY = "custom_metrics"
PROPS_KEY = "props"

# Lua: `drop_metrics(event, names)` -> the event without those custom metrics; `drop_props(event,
# names)` the same for extra properties (an empty `props` is left out too). Concatenated in front
# of a script (ingest/append.py) and called only when something is dropped.
LUA_DROP_METRICS = f"""
local function drop_names(event, key, dropped)
  local decoded = cmsgpack.unpack(event)
  local map = decoded['{PAYLOAD_KEY}'][key]
  for _, name in ipairs(dropped) do
    map[name] = nil
  end
  if next(map) == nil then
    decoded['{PAYLOAD_KEY}'][key] = nil
  end
  return cmsgpack.pack(decoded)
end
local function drop_metrics(event, dropped)
  return drop_names(event, '{CUSTOM_METRICS_KEY}', dropped)
end
local function drop_props(event, dropped)
  return drop_names(event, '{PROPS_KEY}', dropped)
end
"""


# Lua: the events a script appends, gathered into entries as `encode_entry` writes them.
# `entry_add(stream, event)` queues one encoded event and returns 1 when it opened a new entry
# (the caller counts entries against the backlog as it goes), after writing the entry it closed
# when that one was full; `entry_flush(stream)` writes the last entry. Every script that appends
# starts with this (ingest/append.py, ingest/shards.py) and flushes before it returns.
LUA_ENTRY = f"""
local entry_events, entry_bytes = {{}}, 0
local function entry_flush(stream)
  local n = #entry_events
  if n == 0 then
    return
  end
  local value = entry_events[1]
  if n > 1 then
    local head
    if n < 16 then
      head = string.char(144 + n)
    else
      head = string.char(220, math.floor(n / 256), n % 256)
    end
    value = head .. table.concat(entry_events)
  end
  redis.call('XADD', stream, '*', '{ENTRY_FIELD}', value)
  entry_events, entry_bytes = {{}}, 0
end
local function entry_add(stream, event)
  local n = #entry_events
  if n > 0 and (n >= {MAX_ENTRY_EVENTS} or entry_bytes + #event > {MAX_ENTRY_BYTES}) then
    entry_flush(stream)
    n = 0
  end
  entry_events[n + 1] = event
  entry_bytes = entry_bytes + #event
  return n == 0 and 1 or 0
end
"""
