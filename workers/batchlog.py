"""Write-ahead batch records: the exact entry set of every batch, kept in Redis before its insert.

A batch's ClickHouse dedup token is a hash of its exact entry ids. If a worker dies after the
record is written, whoever takes its entries over finds the record and re-inserts exactly that
set with exactly that token, so an insert that had already landed is deduplicated.

Invariants (see docs/workers.md for the full argument):
- A record is written only while its writer owns every one of its ids in the group's pending
  list; the check and the write are one Lua script, so a taken-over entry never ends up in two
  different batches.
- A record is removed only in the same MULTI as the XACK of its ids. The ids left
  unacknowledged there are poison entries: those waiting for another delivery get records of
  their own in that MULTI; those another consumer took over are its to settle (it read this
  record when it took them). Pending entries stay in the stream: trimming stops below the
  oldest one.
- A record's recovery is exclusive: a worker that comes to own entries of a record takes its
  lease (`schemas.stream.batch_lease_key`: the holder's consumer name, with a TTL of
  `BOTPULSE_CLAIM_IDLE_MS`) before writing it, renews it while it writes (each split renews
  it), and deletes it with the record in the commit. A recovery that finds the lease held
  leaves the batch to its holder, whose commit acknowledges every id of the record, whoever
  owns it by then. The record's first writer takes the lease when it first splits a block
  (a split is what a concurrent whole-block insert would double).
- The record's `split` list only grows (a script appends one token; no copy overwrites it).
- The record is confirmed durable (`workers.durability`) before any insert uses its token.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Iterable, Sequence

import msgspec
import redis.asyncio as aioredis

from botpulse.schemas.stream import GROUP, batch_lease_key
from botpulse.workers.durability import Durability, Script


class BatchRecord(msgspec.Struct, array_like=True):
    token: str
    consumer: str
    created_ms: int
    ids: list[str]  # stream entry ids
    # Insert tokens of the blocks ClickHouse rejected and the worker split (workers.writer):
    # parts of them may be stored under their own tokens, so they are never inserted whole again.
    split: list[str] = []
    # Events of a multi-event entry (`part_id`s) when the record holds only those of it (the
    # poison events of an entry whose others are stored); an entry of `ids` none of whose
    # events is listed is held whole. Added later: older records decode with none.
    parts: list[str] = []


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(BatchRecord)


# An event of an entry that holds several (schemas/stream.py) is named `<entry id>#<index>`;
# the event of a single-event entry by the entry id itself. Every key of the worker's rows,
# rejections, poison and dead letters is such an event id; what goes to Redis's stream commands
# (ownership, XACK, delivery counts, batch records' `ids`) is the entry id (`entry_of`).
PART = b"#"


def part_id(entry_id: bytes, index: int) -> bytes:
    return b"%b#%d" % (entry_id, index)


def entry_of(event_id: bytes) -> bytes:
    """The stream entry id of an event id (itself for a single-event entry)."""
    return event_id.partition(PART)[0]


def entries_of(event_ids: Iterable[bytes]) -> list[bytes]:
    """The distinct entry ids of event ids, in their first order."""
    return list(dict.fromkeys(entry_of(i) for i in event_ids))


def id_key(entry_id: bytes | str) -> tuple[int, int, int]:
    """Stream ids order by (ms, seq) numerically, not as strings; the events of one entry by
    their index after it (a single-event entry's id sorts as -1)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    text, _, part = text.partition("#")
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0), int(part) if part else -1


def sort_ids(ids: Iterable[bytes]) -> list[bytes]:
    unique = list(dict.fromkeys(ids))
    keys = [id_key(i) for i in unique]
    if all(a < b for a, b in itertools.pairwise(keys)):
        return unique  # the usual case: one XREADGROUP's entries, already in stream order
    return [i for _, i in sorted(zip(keys, unique, strict=True))]


def _digest(stream: str, ordered: Sequence[bytes]) -> str:
    return hashlib.sha256(stream.encode() + b"|" + b"|".join(ordered)).hexdigest()[:40]


def token_for(stream: str, ids: Sequence[bytes]) -> str:
    """Deterministic in the exact set of entries (ids are sorted first)."""
    return _digest(stream, sort_ids(ids))


def new_record(
    stream: str, consumer: str, ordered: Sequence[bytes], parts: Sequence[bytes] = ()
) -> BatchRecord:
    """`ordered`: distinct entry ids in stream order (`sort_ids`). `parts`: the only events of
    those entries the record holds (`BatchRecord.parts`); the token is then theirs, the one
    their isolated insert used (`token_for` of their event ids)."""
    return BatchRecord(
        token=token_for(stream, parts) if parts else _digest(stream, ordered),
        consumer=consumer,
        created_ms=int(time.time() * 1000),
        ids=[i.decode() for i in ordered],
        parts=[i.decode() for i in sort_ids(parts)],
    )


def encode(record: BatchRecord) -> bytes:
    return _encoder.encode(record)


def decode(data: bytes) -> BatchRecord:
    return _decoder.decode(data)


# Writes the record only if the caller owns every id; otherwise returns the ids it lost.
# Fresh batch (ARGV[9]: a server time, ms, taken before the reads that delivered every id): while
# less than ARGV[10] ms have passed since (the caller keeps that at most half of XAUTOCLAIM's idle
# threshold), no entry can have been idle long enough to be claimed, so ownership holds without
# listing the pending entries (XPENDING of 10,000 ids was ~30 ms of Redis a batch, a sixth of a
# drain's time).
# Otherwise: usually the batch is exactly the caller's pending entries between its first and last
# id, so one comparison of the joined ids settles it; the per-id check (a Lua table of 10,000 ids
# costs Redis ~15 ms a batch) runs only when the two differ.
_WRITE_IF_OWNED = """
local function write()
  redis.call('HSET', KEYS[2], ARGV[5], ARGV[6])
  return {}
end
if ARGV[9] ~= '' then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[9]) < tonumber(ARGV[10]) then
    return write()
  end
end
local rows = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[4], tonumber(ARGV[8]), ARGV[2])
local pending = {}
for i, r in ipairs(rows) do pending[i] = r[1] end
if table.concat(pending, ',') == ARGV[7] then return write() end
local owned = {}
for _, id in ipairs(pending) do owned[id] = true end
local missing = {}
for id in string.gmatch(ARGV[7], '[^,]+') do
  if not owned[id] then missing[#missing + 1] = id end
end
if #missing > 0 then return missing end
return write()
"""


# Appends split token ARGV[2] to record ARGV[1] (its 5th field; msgpack, array-like) if the
# record still exists (0: committed meanwhile) and lease KEYS[2] is ARGV[3]'s or free (-1:
# another worker took it), renewing the lease for ARGV[4] ms. Append-only: whatever another copy
# of the record holds is kept.
_ADD_SPLIT = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[3] then return -1 end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
local record = cmsgpack.unpack(raw)
local split = record[5] or {}
for _, t in ipairs(split) do if t == ARGV[2] then return 1 end end
split[#split + 1] = ARGV[2]
record[5] = split
redis.call('HSET', KEYS[1], ARGV[1], cmsgpack.pack(record))
return 1
"""

# Takes lease KEYS[2] of record ARGV[1] (hash KEYS[1]) for ARGV[2], for ARGV[3] ms, if it is
# free or already ARGV[2]'s. 1: taken; 0: another worker holds it; -1: the record is gone.
_LEASE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return -1 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""

# Renews lease KEYS[1] for ARGV[2] ms if ARGV[1] holds it, or takes it again if it expired
# meanwhile with no one else taking it. 1: held, 0: another worker holds it.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class Records:
    """The batch records of one worker (all partitions)."""

    def __init__(self, redis: aioredis.Redis, consumer: str, durability: Durability | None = None) -> None:
        self.redis = redis
        self.consumer = consumer
        self.durability = durability or Durability(redis)
        self._write = Script(redis, self.durability, _WRITE_IF_OWNED)
        self._add_split = Script(redis, self.durability, _ADD_SPLIT)
        self._lease = Script(redis, self.durability, _LEASE)
        self._renew = Script(redis, self.durability, _RENEW)

    async def write_if_owned(
        self,
        stream: str,
        batches: str,
        record: BatchRecord,
        *,
        delivered_since_ms: int | None = None,
        fresh_for_ms: int = 0,
    ) -> list[bytes]:
        """Write `record`; returns [] on success, else the ids this consumer
        no longer owns. `delivered_since_ms`: Redis's clock (ms) before the reads that delivered
        every id to this consumer; within `fresh_for_ms` of it (less than XAUTOCLAIM's idle
        threshold) ownership is certain and not checked id by id. Raises `NotDurable` when the server
        could not confirm the record durable (see `workers.durability`)."""
        await self.durability.probe()
        async with self.redis.pipeline(transaction=False) as pipe:
            await self._write(
                keys=[stream, batches],
                args=[
                    GROUP,
                    self.consumer,
                    record.ids[0],
                    record.ids[-1],
                    record.token,
                    encode(record),
                    ",".join(record.ids),
                    # Other entries of ours may sit inside the id range (taken over earlier).
                    len(record.ids) + 1_000_000,
                    "" if delivered_since_ms is None else delivered_since_ms,
                    fresh_for_ms,
                ],
                client=pipe,
            )
            waits = self.durability.queue_wait(pipe)
            replies = await pipe.execute(raise_on_error=False)
        if isinstance(replies[0], Exception):
            raise replies[0]
        missing = [m if isinstance(m, bytes) else str(m).encode() for m in replies[0]]
        if waits and not missing:
            self.durability.check(replies[1])
        return missing

    async def add_split(self, batches: str, token: str, split_token: str, lease_ms: int) -> int:
        """Append `split_token` to record `token`'s split list, renewing the lease. 1: done;
        0: the record is gone (committed meanwhile); -1: another worker holds its lease."""
        keys = [batches, batch_lease_key(batches, token)]
        args = [token, split_token, self.consumer, lease_ms]
        return int(await self._add_split(keys=keys, args=args))  # type: ignore[call-overload]

    async def lease(self, batches: str, token: str, ms: int) -> int:
        """Take record `token`'s lease. 1: taken; 0: another worker holds it; -1: record gone."""
        keys = [batches, batch_lease_key(batches, token)]
        return int(await self._lease(keys=keys, args=[token, self.consumer, ms]))  # type: ignore[call-overload]

    async def renew(self, batches: str, token: str, ms: int) -> bool:
        """Extend this worker's lease of record `token`; False if it no longer holds it."""
        return bool(await self._renew(keys=[batch_lease_key(batches, token)], args=[self.consumer, ms]))

    async def get(self, batches: str, token: str) -> BatchRecord | None:
        raw = await self.redis.hget(batches, token)
        return None if raw is None else decode(raw)

    async def all(self, batches: str) -> dict[str, BatchRecord]:
        raw = await self.redis.hgetall(batches)
        out: dict[str, BatchRecord] = {}
        for field, value in raw.items():
            try:
                record = decode(value)
            except msgspec.DecodeError:
                continue  # not ours to interpret; left for an operator
            out[field.decode()] = record
        return out
