"""The worker: Redis stream partitions -> ClickHouse in batches, exactly once in effect.

One pass of the loop either reads (XREADGROUP, blocking at most until the open batch is due),
or flushes, or takes over idle entries; never two at once, so memory stays bounded by one batch
per partition. A flush, per partition:

1. write the batch's write-ahead record (exact ids + dedup token) if this consumer still owns
   every id (`workers.records`);
2. insert one block per table with that token and
   `deduplicate_blocks_in_dependent_materialized_views=1`; a block ClickHouse rejects for its
   data is split in halves (each half's token derived from its own ids) until the bad entries
   are isolated; connectivity errors are retried with backoff and jitter, entries stay pending;
3. in one MULTI: XACK every stored id, delete the record; each isolated poison entry (rejected
   for its data, or undecodable) gets a record of its own and stays pending, or, delivered
   `max_deliveries` times already, goes to the dead letters and is acknowledged.

A waiting poison entry is delivered again by the take-over path (XAUTOCLAIM once it has been idle
`claim_idle_ms`, which raises its delivery count) and retried alone, under its own record.

A crash anywhere leaves the entries pending and (after step 1) the record in place; whoever
takes the entries over (XAUTOCLAIM after `claim_idle_ms`, or this consumer at restart) finds the
record and repeats steps 2-3 with the same ids and token. See docs/workers.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
import redis.asyncio as aioredis
import redis.exceptions

from botpulse.runtime.clickhouse import Store, is_data_error
from botpulse.runtime.logs import get_logger
from botpulse.runtime.redis import connect
from botpulse.runtime.settings import Settings, SettingsError
from botpulse.schemas.stream import (
    FIELD,
    GROUP,
    StreamEvent,
    batches_key,
    dead_letter_key,
    decode_event,
    stream_key,
    worker_stats_key,
)
from botpulse.workers import batchlog as rec
from botpulse.workers.deadletters import dead_letter_fields
from botpulse.workers.rows import (
    COLUMNS,
    NAMES_TABLE,
    Block,
    block_rows,
    name_rows,
    rows_by_table,
    slice_block,
    to_block,
)
from botpulse.workers.status import PartitionStats
from botpulse.workers.upkeep import Upkeep

log = get_logger(__name__)

_BACKOFF_BASE_S = 0.2
_BACKOFF_CAP_S = 10.0
_TRIM_EVERY_S = 1.0
_WORKER_REDIS_TIMEOUT_MS = 5000
_STOP_GRACE_S = 8.0  # SIGTERM: the batch in hand gets this long, the process exits within 10 s
_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def check_settings(settings: Settings) -> None:
    """A live worker's entries must never look idle to the others: XAUTOCLAIM's threshold must
    exceed everything a healthy batch can take (buffering plus inserting), with margin."""
    floor = 2 * (settings.batch_ms + int(settings.insert_timeout_s * 1000))
    if settings.claim_idle_ms < floor:
        raise SettingsError(
            f"BOTPULSE_CLAIM_IDLE_MS={settings.claim_idle_ms} is too small: it must be at least "
            f"2 x (BOTPULSE_BATCH_MS + BOTPULSE_INSERT_TIMEOUT_S in ms) = {floor}, or a batch "
            "still being written could be taken over by another worker"
        )


def _as_is(response: object, **_: object) -> object:
    return response


def _payload(fields: object) -> bytes:
    """The event bytes of one entry's fields, as a raw reply (flat list) or as a dict."""
    if isinstance(fields, dict):
        return fields.get(FIELD, b"")
    if isinstance(fields, list):
        for i in range(0, len(fields) - 1, 2):
            if fields[i] == FIELD:
                return fields[i + 1]
    return b""


def worker_redis(settings: Settings) -> aioredis.Redis:
    """The worker's Redis client. Its commands carry whole batches (XREADGROUP of 10,000 entries,
    XACK of as many ids), so it gets at least 5 s where the gateway fails fast; a command that
    times out anyway is safe (the entries stay pending and are recovered)."""
    timeout_ms = max(settings.redis_timeout_ms, _WORKER_REDIS_TIMEOUT_MS)
    return connect(msgspec.structs.replace(settings, redis_timeout_ms=timeout_ms))


class Abandoned(Exception):
    """The worker is stopping while ClickHouse is unreachable: the batch stays pending (its
    record in place) for the next worker."""


class Entry(msgspec.Struct, gc=False):  # untracked by the GC, like StreamEvent: never in a cycle
    id: bytes
    data: bytes
    event: StreamEvent


@dataclass
class Batch:
    partition: int
    record: rec.BatchRecord
    entries: list[Entry]
    recovered: bool = False
    # Entries the record names that are no longer in the stream (should never happen).
    lost: list[bytes] = field(default_factory=list)
    # Entries of the record that cannot be decoded (id, bytes, reason): poison, like entries
    # ClickHouse rejects (see `Worker._settle_poison`).
    poison: list[tuple[bytes, bytes, str]] = field(default_factory=list)
    # Set at commit: poison entries that stay pending, each under a record of its own.
    waiting: list[rec.BatchRecord] = field(default_factory=list)
    # Set at commit: poison entries another consumer took over meanwhile; theirs to settle.
    unowned: list[bytes] = field(default_factory=list)


class Worker:
    def __init__(self, settings: Settings, store: Store, redis: aioredis.Redis) -> None:
        check_settings(settings)
        self.settings = settings
        self.store = store
        self.redis = redis
        self.consumer = consumer_name()
        self.partitions = list(range(settings.stream_partitions))
        self.records = rec.Records(redis, self.consumer)
        # XREADGROUP replies as hiredis parsed them (no dict per entry): same connections, its
        # own callbacks, so the client the caller passed in keeps its usual replies.
        self._reader = aioredis.Redis(connection_pool=redis.connection_pool)
        self._reader.set_response_callback("XREADGROUP", _as_is)
        self.upkeep = Upkeep(redis)
        self._buffers: dict[int, list[Entry]] = {p: [] for p in self.partitions}
        # Undecodable entries read since the last flush: they join the next batch's record.
        self._undecodable: dict[int, list[tuple[bytes, bytes, str]]] = {p: [] for p in self.partitions}
        self._opened: dict[int, float] = {}  # when each non-empty buffer got its first entry
        # Buffers holding only XREADGROUP '>' entries are already distinct and in stream order
        # (each read returns ids above every id the group delivered before): no sort needed
        # (parsing every id was ~5 % of the worker's time).
        self._in_order: dict[int, bool] = dict.fromkeys(self.partitions, True)
        # Redis's clock (ms) before the read that opened each buffer, while it holds only entries
        # of XREADGROUP '>' reads: lets the batch record skip the id-by-id ownership check while
        # no entry can have been idle long enough to be taken over (workers/batchlog.py).
        self._delivered_since: dict[int, int | None] = dict.fromkeys(self.partitions)
        self._inflight: Batch | None = None
        self._stopping = asyncio.Event()
        self._clickhouse_ok = True
        self._redis_ok = True
        self._last_trim: dict[int, float] = {}
        self._last_heartbeat = 0.0

    # --- lifecycle ----------------------------------------------------------------------------
    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def stopped(self) -> None:
        await self._stopping.wait()

    async def ensure_groups(self) -> None:
        for p in self.partitions:
            with contextlib.suppress(aioredis.ResponseError):  # BUSYGROUP: exists already
                await self.redis.xgroup_create(stream_key(p), GROUP, id="0", mkstream=True)

    async def run(self) -> None:
        """Read, batch and write until `stop()`; then flush what is in hand and leave."""
        await self._until_redis(self.ensure_groups)
        await self._until_redis(self.recover_own)
        claim_every = max(0.05, self.settings.claim_idle_ms / 2000)
        next_claim = time.monotonic() + claim_every
        while not self.stopping:
            try:
                if self._due():
                    await self.flush()
                    continue
                if time.monotonic() >= next_claim:
                    await self.take_over_idle()
                    await self.sweep_records()
                    await self.sweep_consumers()
                    await self.trim()
                    next_claim = time.monotonic() + claim_every
                    continue
                await self._read()
                self._redis_state(ok=True)
            except Abandoned:
                break
            except aioredis.ResponseError as exc:
                # Redis 7 answers a read blocked on a stream that is deleted with UNBLOCKED,
                # valkey (and a read that was not blocked) with NOGROUP: the same repair.
                if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                    raise
                log.warning("consumer group missing (stream deleted?); creating it again")
                await self.ensure_groups()
            except _REDIS_ERRORS as exc:
                self._redis_state(ok=False, exc=exc)
                await self._sleep(self._backoff(1))
            except Exception:
                # Whatever it was, the entries in hand are still pending (and recorded if a batch
                # was being written): keep the worker alive and let recovery pick them up.
                log.exception("worker step failed; entries stay pending and will be recovered")
                self._buffers = {p: [] for p in self.partitions}
                self._undecodable = {p: [] for p in self.partitions}
                self._in_order = dict.fromkeys(self.partitions, True)
                self._delivered_since = dict.fromkeys(self.partitions)
                self._inflight = None
                await self._sleep(self._backoff(3))
        await self.drain()

    async def drain(self) -> None:
        """Finish the batch in hand and everything buffered, then retire this consumer if it owns
        nothing (a consumer with pending entries is never removed)."""
        self.stop()
        try:
            if self._inflight is not None:
                await self._write_batch(self._inflight)
            await self.flush()
            for p in self.partitions:
                if await self.upkeep.retire(stream_key(p), GROUP, self.consumer):
                    log.info("consumer retired", partition=p, consumer=self.consumer)
        except (Abandoned, *_REDIS_ERRORS) as exc:
            log.warning("stopping with entries pending; another worker will take them over", error=str(exc))

    # --- reading ------------------------------------------------------------------------------
    def _buffered(self) -> int:
        return max(len(b) for b in self._buffers.values())

    def _holding(self, partition: int) -> bool:
        return bool(self._buffers[partition] or self._undecodable[partition])

    def _held_ids(self, partition: int) -> list[bytes]:
        return [e.id for e in self._buffers[partition]] + [i for i, _, _ in self._undecodable[partition]]

    def _due(self) -> bool:
        oldest = [self._opened[p] for p in self.partitions if self._holding(p)]
        if not oldest:
            return False
        return (
            self._buffered() >= self.settings.batch_rows
            or (time.monotonic() - min(oldest)) * 1000 >= self.settings.batch_ms
        )

    def _block_ms(self) -> int:
        # Never block past the socket timeout of the Redis client, nor past the open batch's due time.
        block = min(self.settings.batch_ms, max(1, self.settings.redis_timeout_ms // 2))
        oldest = [self._opened[p] for p in self.partitions if self._holding(p)]
        if oldest:
            left = self.settings.batch_ms - (time.monotonic() - min(oldest)) * 1000
            block = min(block, max(1, int(left)))
        return block

    async def _read(self) -> None:
        count = max(1, self.settings.batch_rows - self._buffered())
        async with self._reader.pipeline(transaction=False) as pipe:
            pipe.time()  # runs just before the read: every entry it delivers is younger
            pipe.xreadgroup(
                GROUP,
                self.consumer,
                {stream_key(p): ">" for p in self.partitions},
                count=count,
                block=self._block_ms(),
            )
            (seconds, micros), reply = await pipe.execute()
        read_ms = int(seconds) * 1000 + int(micros) // 1000
        streams = reply.items() if isinstance(reply, dict) else (reply or [])  # RESP3 / RESP2
        for stream, entries in streams:
            await self._accept(self._partition_of(stream), entries, in_order=True, read_ms=read_ms)

    def _partition_of(self, stream: bytes | str) -> int:
        key = stream.decode() if isinstance(stream, bytes) else stream
        for p in self.partitions:
            if stream_key(p) == key:
                return p
        raise ValueError(f"unexpected stream {key!r}")

    async def _accept(
        self,
        partition: int,
        entries: Sequence[Sequence[object]],
        *,
        in_order: bool = False,
        read_ms: int | None = None,
    ) -> None:
        """Buffer the entries; undecodable ones are held apart and join the next batch as
        poison (another reader version may decode them on a later delivery). `entries`: (id,
        fields) pairs, the fields a raw reply's flat list or a dict. `read_ms`: Redis's clock
        before the XREADGROUP '>' that delivered them (None for entries taken over)."""
        poison = self._undecodable[partition]
        buffer = self._buffers[partition]
        if not self._holding(partition):
            self._opened[partition] = time.monotonic()
            self._delivered_since[partition] = read_ms
        elif read_ms is None:
            self._delivered_since[partition] = None
        if not in_order or (
            # One reply is in order; replies follow each other unless an operator moved the
            # group back (XGROUP SETID): one comparison per read keeps that case sorted too.
            buffer and entries and rec.id_key(entries[0][0]) <= rec.id_key(buffer[-1].id)  # type: ignore[arg-type]
        ):
            self._in_order[partition] = False
        append = buffer.append
        for entry_id, fields in entries:
            # The gateway writes exactly one field: check it first, search only otherwise.
            if type(fields) is list and len(fields) == 2 and fields[0] == FIELD:
                data = fields[1]
            else:
                data = _payload(fields)
            try:
                append(Entry(entry_id, data, decode_event(data)))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                poison.append((entry_id, data, f"undecodable: {exc}"))

    # --- taking over ------------------------------------------------------------------------
    async def recover_own(self) -> None:
        """Entries this consumer name already owns (a restart with the same host and pid, or an
        embedded worker restarted in-process) are recovered at once, not after the idle time.
        They are re-claimed (not just re-read) so their delivery count grows on every restart
        and a crash-looping batch still ends in the dead letters."""
        for p in self.partitions:
            stream = stream_key(p)
            cursor = "-"
            for _ in range(100_000):
                rows = await self.redis.xpending_range(
                    stream, GROUP, cursor, "+", self.settings.batch_rows, self.consumer
                )
                ids = [r["message_id"] for r in rows]
                if not ids:
                    break
                cursor = "(" + ids[-1].decode()  # exclusive: buffered entries stay pending
                claimed = await self.redis.xclaim(stream, GROUP, self.consumer, 0, ids)
                if len(claimed) < len(ids):
                    log.error("own pending entries no longer in the stream", partition=p)
                counts = await self._delivery_counts(stream, [i for i, _ in claimed])
                await self._take(p, claimed, deliveries=counts)
                if not claimed:
                    break

    async def take_over_idle(self) -> None:
        """XAUTOCLAIM entries idle longer than `claim_idle_ms` (their consumer died or hangs)."""
        for p in self.partitions:
            stream = stream_key(p)
            if self._holding(p):
                # XAUTOCLAIM does not skip our own entries: the buffered ones must not look idle.
                await self.upkeep.touch_own(stream, GROUP, self.consumer, self._held_ids(p))
            cursor: bytes | str = "0-0"
            for _ in range(1000):
                reply = await self.redis.xautoclaim(
                    stream,
                    GROUP,
                    self.consumer,
                    self.settings.claim_idle_ms,
                    cursor,
                    count=self.settings.batch_rows,
                )
                # Redis 7 adds the ids of pending entries deleted from the stream; 6.2 has no
                # third element (and cannot tell us about them).
                next_cursor, claimed = reply[0], reply[1]
                deleted = reply[2] if len(reply) > 2 else []
                if deleted:
                    log.error(
                        "pending entries were deleted before being written: counted as lost",
                        partition=p,
                        count=len(deleted),
                        ids=[d.decode() for d in deleted[:20]],
                    )
                    await PartitionStats.add(self.redis, p, "lost_total", len(deleted))
                if claimed:
                    counts = await self._delivery_counts(stream, [i for i, _ in claimed])
                    log.info("entries taken over", partition=p, count=len(claimed))
                    await self._take(p, claimed, deliveries=counts)
                cursor = next_cursor
                if cursor in (b"0-0", "0-0"):
                    break

    async def _delivery_counts(self, stream: str, ids: list[bytes]) -> dict[bytes, int]:
        ordered = rec.sort_ids(ids)
        rows = await self.redis.xpending_range(
            stream,
            GROUP,
            ordered[0],
            ordered[-1],
            len(ordered) + 10 * self.settings.batch_rows,
            self.consumer,
        )
        wanted = set(ids)
        return {r["message_id"]: int(r["times_delivered"]) for r in rows if r["message_id"] in wanted}

    async def _take(
        self,
        partition: int,
        entries: Sequence[tuple[bytes, dict[bytes, bytes] | None]],
        deliveries: dict[bytes, int],
    ) -> None:
        """Entries now owned by this consumer: those named by a batch record are written as that
        batch (same ids, same token); the rest join the open batch like freshly read ones."""
        by_id = {entry_id: fields for entry_id, fields in entries}
        records = await self.records.all(batches_key(partition))
        handled: set[bytes] = set()
        for record in records.values():
            ids = [i.encode() for i in record.ids]
            if not any(i in by_id for i in ids):
                continue
            handled.update(ids)
            most = max((deliveries.get(i, 1) for i in ids if i in by_id), default=1)
            batch = await self._load_batch(partition, record, by_id)
            if most > self.settings.max_deliveries:
                await self._give_up(batch, most)
                continue
            log.info("recovering batch", partition=partition, token=record.token, rows=len(ids))
            await self._write_batch(batch)
        free = [(i, f) for i, f in entries if i not in handled and f is not None]
        tired = [(i, f) for i, f in free if deliveries.get(i, 1) > self.settings.max_deliveries]
        if tired:
            await self._dead_letter(
                partition,
                [
                    (
                        i,
                        _payload(f),
                        f"delivered {deliveries[i]} times without being written "
                        f"(BOTPULSE_MAX_DELIVERIES={self.settings.max_deliveries})",
                    )
                    for i, f in tired
                ],
                deliveries=max(deliveries[i] for i, _ in tired),
            )
        tired_ids = {i for i, _ in tired}
        buffered = set(self._held_ids(partition))
        await self._accept(partition, [(i, f) for i, f in free if i not in tired_ids and i not in buffered])
        if self._buffered() >= self.settings.batch_rows:
            await self.flush()

    async def _load_batch(
        self, partition: int, record: rec.BatchRecord, known: dict[bytes, dict[bytes, bytes] | None]
    ) -> Batch:
        """The record's entries: those just claimed, plus the rest read back from the stream
        (still there: a record's entries are unacknowledged, and trimming keeps those)."""
        stream = stream_key(partition)
        entries: list[Entry] = []
        lost: list[bytes] = []
        poison: list[tuple[bytes, bytes, str]] = []
        missing = [i.encode() for i in record.ids if known.get(i.encode()) is None]
        fetched: dict[bytes, dict[bytes, bytes]] = {}
        if missing:
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in missing:
                    pipe.xrange(stream, i, i)
                for i, found in zip(missing, await pipe.execute(), strict=True):
                    if found:
                        fetched[i] = found[0][1]
        gone = [i for i in missing if i not in fetched]
        settled: set[bytes] = set()
        if gone:
            # Gone from the stream: acknowledged meanwhile (the record's writer settled it and
            # trimming followed), or truly lost if the group still lists it as pending.
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in gone:
                    pipe.xpending_range(stream, GROUP, i, i, 1)
                for i, rows in zip(gone, await pipe.execute(), strict=True):
                    if not rows:
                        settled.add(i)
        for raw_id in record.ids:
            entry_id = raw_id.encode()
            if entry_id in settled:
                continue
            fields = known.get(entry_id) or fetched.get(entry_id)
            if fields is None:
                lost.append(entry_id)
                continue
            data = _payload(fields)
            try:
                entries.append(Entry(entry_id, data, decode_event(data)))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                poison.append((entry_id, data, f"undecodable: {exc}"))
        return Batch(partition, record, entries, recovered=True, lost=lost, poison=poison)

    async def _give_up(self, batch: Batch, deliveries: int) -> None:
        reason = (
            f"batch {batch.record.token} delivered {deliveries} times without being acknowledged "
            f"(BOTPULSE_MAX_DELIVERIES={self.settings.max_deliveries}); it may already be stored"
        )
        log.error("batch moved to dead letters", partition=batch.partition, token=batch.record.token)
        dead = [(e.id, e.data, reason) for e in batch.entries] + batch.poison
        await self._commit(batch, dead, {i: deliveries for i, _, _ in dead})

    async def sweep_records(self) -> None:
        """Records left behind with no pending entry (e.g. an operator acknowledged entries by
        hand) are removed, so `batches in flight` means what it says."""
        cutoff = time.time() * 1000 - self.settings.claim_idle_ms
        for p in self.partitions:
            for token, record in (await self.records.all(batches_key(p))).items():
                if record.created_ms < cutoff and await self.upkeep.drop_stale_record(
                    stream_key(p), batches_key(p), GROUP, token, record.ids
                ):
                    log.warning("stale batch record removed", partition=p, token=token)

    async def sweep_consumers(self) -> None:
        idle = max(10 * self.settings.claim_idle_ms, 300_000)
        for p in self.partitions:
            removed = await self.upkeep.sweep(stream_key(p), GROUP, idle)
            if removed:
                log.info("idle consumers without pending entries removed", partition=p, consumers=removed)

    # --- writing ------------------------------------------------------------------------------
    async def flush(self) -> None:
        for p in self.partitions:
            entries, self._buffers[p] = self._buffers[p], []
            poison, self._undecodable[p] = self._undecodable[p], []
            in_order, self._in_order[p] = self._in_order[p], True
            since, self._delivered_since[p] = self._delivered_since[p], None
            if not entries and not poison:
                continue
            batch = await self._new_batch(
                p, entries, in_order=in_order, poison=poison, delivered_since_ms=since if in_order else None
            )
            if batch is not None:
                await self._write_batch(batch)
        await self.trim()

    async def trim(self) -> None:
        for p in self.partitions:
            if time.monotonic() - self._last_trim.get(p, 0.0) >= _TRIM_EVERY_S:
                self._last_trim[p] = time.monotonic()
                trimmed = await self.upkeep.trim(stream_key(p))
                if trimmed:
                    log.debug("stream trimmed", partition=p, entries=trimmed)

    async def _new_batch(
        self,
        partition: int,
        entries: list[Entry],
        *,
        in_order: bool = False,
        poison: Sequence[tuple[bytes, bytes, str]] = (),
        delivered_since_ms: int | None = None,
    ) -> Batch | None:
        """`in_order`: the entries are known to be distinct and in stream order. `poison`:
        undecodable entries, named by the record like the others. `delivered_since_ms`: Redis's
        clock before the reads that delivered them all (see `Records.write_if_owned`)."""
        stream = stream_key(partition)
        if not in_order:
            by_id = {e.id: e for e in entries}
            entries = [by_id[i] for i in rec.sort_ids(by_id)]
        decoded = {e.id for e in entries}
        bad = {i: (i, data, reason) for i, data, reason in poison if i not in decoded}
        for _ in range(3):
            ids = [e.id for e in entries]
            if bad:
                ids = rec.sort_ids([*ids, *bad])
            record = rec.new_record(stream, self.consumer, ids)
            lost = set(
                await self.records.write_if_owned(
                    stream,
                    batches_key(partition),
                    record,
                    delivered_since_ms=delivered_since_ms,
                    # What a healthy batch may take, which `check_settings` keeps at most half of
                    # XAUTOCLAIM's threshold: margin for a clock that steps, or a failover.
                    fresh_for_ms=self.settings.batch_ms + int(self.settings.insert_timeout_s * 1000),
                )
            )
            delivered_since_ms = None  # a retry checks id by id
            if not lost:
                return Batch(partition, record, entries, poison=list(bad.values()))
            # Taken over while buffered (we stalled past claim_idle_ms): theirs now.
            log.warning("entries taken over before their batch was written", count=len(lost))
            entries = [e for e in entries if e.id not in lost]
            bad = {i: p for i, p in bad.items() if i not in lost}
            if not entries and not bad:
                return None
        return None  # still pending under whoever owns them; never inserted by us

    async def _write_batch(self, batch: Batch) -> None:
        self._inflight = batch
        stream = stream_key(batch.partition)
        started = time.monotonic()
        pairs = [(e.id, e.event) for e in batch.entries]
        rejected: dict[bytes, str] = {}
        try:
            for table, (block, ids) in rows_by_table(pairs).items():
                token = f"{batch.record.token}:{table}"
                rejected.update(await self._insert_split(batch, table, block, ids, token, stream))
        except _Superseded:
            log.warning("batch committed by another worker meanwhile", token=batch.record.token[:12])
            self._inflight = None
            return
        good = [e.event for e in batch.entries if e.id not in rejected] if rejected else [e for _, e in pairs]
        names = name_rows(good)
        if names:
            token = batch.record.token
            if rejected or batch.poison:
                # Keyed by the entries actually stored: one that became acceptable on a retry
                # adds names the earlier attempt's block lacked (same token: dropped as a repeat).
                token = rec.token_for(stream, [e.id for e in batch.entries if e.id not in rejected])
            try:
                block = to_block(names, COLUMNS[NAMES_TABLE])
                await self._insert(batch, NAMES_TABLE, block, f"{token}:{NAMES_TABLE}")
            except _DataRejected as exc:
                log.error("custom metric names rejected", error=str(exc.__cause__))
        insert_ms = (time.monotonic() - started) * 1000
        poison = batch.poison
        if rejected:
            poison = [(e.id, e.data, rejected[e.id]) for e in batch.entries if e.id in rejected] + poison
        dead, deliveries = await self._settle_poison(batch, poison)
        await self._commit(batch, dead, deliveries)
        self._inflight = None
        now_ms = time.time() * 1000
        oldest = min((e.event.received_ms for e in batch.entries), default=int(now_ms))
        log.info(
            "batch written",
            partition=batch.partition,
            rows=len(batch.entries) - len(rejected),
            bytes=sum(len(e.data) for e in batch.entries),
            insert_ms=round(insert_ms, 1),
            lag_ms=round(now_ms - oldest, 1),
            dead_lettered=len(dead),
            poison_waiting=len(batch.waiting),
            recovered=batch.recovered,
            token=batch.record.token[:12],
        )
        with contextlib.suppress(*_REDIS_ERRORS):
            await PartitionStats.record_batch(
                self.redis,
                batch.partition,
                rows=len(batch.entries) - len(rejected),
                recovered=batch.recovered,
            )

    async def _settle_poison(
        self, batch: Batch, poison: list[tuple[bytes, bytes, str]]
    ) -> tuple[list[tuple[bytes, bytes, str]], dict[bytes, int]]:
        """Decide each poison entry's fate by its delivery count: delivered `max_deliveries`
        times, it goes to the dead letters (returned, with the counts); otherwise it stays
        pending under a record of its own (`batch.waiting`), to be delivered again by the
        take-over path once idle and retried alone. Its record's token is the one its isolated
        insert used (`token_for` of its id), so a retry that finally stores it, or a repeat after
        a crash, is deduplicated against any earlier attempt."""
        batch.waiting = []
        batch.unowned = []
        if not poison:
            return [], {}
        stream = stream_key(batch.partition)
        limit = self.settings.max_deliveries
        counts = await self._delivery_counts(stream, [i for i, _, _ in poison])
        dead: list[tuple[bytes, bytes, str]] = []
        for entry_id, data, reason in poison:
            count = counts.get(entry_id)
            if count is None:
                # Not ours any more (taken over while this batch was written): its new owner
                # writes this batch again from its record and settles the entry by its own
                # delivery count, so it is neither acknowledged nor given a record here.
                batch.unowned.append(entry_id)
                log.warning(
                    "poison entry taken over meanwhile", partition=batch.partition, id=entry_id.decode()
                )
                continue
            if count >= limit:
                dead.append(
                    (entry_id, data, f"{reason} (delivered {count} times, BOTPULSE_MAX_DELIVERIES={limit})")
                )
                log.error(
                    "entry moved to dead letters",
                    partition=batch.partition,
                    id=entry_id.decode(),
                    deliveries=count,
                    reason=reason,
                )
            else:
                batch.waiting.append(rec.new_record(stream, self.consumer, [entry_id]))
                log.warning(
                    "poison entry left pending for another delivery",
                    partition=batch.partition,
                    id=entry_id.decode(),
                    deliveries=count,
                    max_deliveries=limit,
                    reason=reason,
                )
        return dead, counts

    async def _insert_split(
        self, batch: Batch, table: str, rows: Block, ids: list[bytes], token: str, stream: str
    ) -> dict[bytes, str]:
        """Insert `rows`; on a data error split in halves (deterministically, so a retry after a
        crash produces the same blocks and tokens) until the rejected entries are isolated.
        Returns {entry id: reason} for the isolated ones.

        A block is put on its record's `split` list before either half is inserted, and a block
        on that list is never inserted whole again: if the rejected entry has become acceptable
        by the time a crashed batch is recovered, the whole block would go in under its own token
        and store again what its halves stored under theirs."""
        n = block_rows(rows)
        if not n:
            return {}
        if batch.recovered and n > 1:
            # Two workers can recover one record (each took some of its entries over): what the
            # other split, or that it committed the batch, is in Redis, not in this copy.
            current = await self.records.get(batches_key(batch.partition), batch.record.token)
            if current is None:
                raise _Superseded(batch.record.token)
            batch.record.split = sorted({*batch.record.split, *current.split})
        if token not in batch.record.split:
            try:
                await self._insert(batch, table, rows, token)
                return {}
            except _DataRejected as exc:
                if n == 1:
                    reason = f"rejected by ClickHouse ({table}): {exc.__cause__}"
                    log.error("entry rejected for its data", partition=batch.partition, id=ids[0].decode())
                    return {ids[0]: reason}
            batch.record.split.append(token)
            if not await self.records.update(batches_key(batch.partition), batch.record):
                raise _Superseded(batch.record.token)
        mid = n // 2
        out: dict[bytes, str] = {}
        halves = ((slice_block(rows, 0, mid), ids[:mid]), (slice_block(rows, mid, n), ids[mid:]))
        for part_rows, part_ids in halves:
            part_token = f"{rec.token_for(stream, part_ids)}:{table}"
            out.update(await self._insert_split(batch, table, part_rows, part_ids, part_token, stream))
        return out

    async def _insert(self, batch: Batch, table: str, rows: Block, token: str) -> None:
        """`rows`: the block's columns."""
        settings: dict[str, object] = {
            "insert_deduplication_token": token,
            "deduplicate_blocks_in_dependent_materialized_views": 1,
        }
        if self.store.cluster:
            # Through a Distributed table, confirm only once the shards stored the block (the
            # ack follows this confirmation); the shards' replicated tables deduplicate by token.
            settings["insert_distributed_sync"] = 1
        attempt = 0
        while True:
            try:
                await self.store.insert(table, rows, COLUMNS[table], settings, column_oriented=True)
            except Exception as exc:
                if is_data_error(exc):
                    raise _DataRejected() from exc
                self._clickhouse_state(ok=False, exc=exc)
                if self.stopping:
                    raise Abandoned(str(exc)) from exc
                attempt += 1
                await self._heartbeat(batch)
                await self._sleep(self._backoff(attempt))
                continue
            self._clickhouse_state(ok=True)
            return

    async def _heartbeat(self, batch: Batch) -> None:
        """While a batch waits for ClickHouse, keep its entries from looking idle to the others."""
        if time.monotonic() - self._last_heartbeat < self.settings.claim_idle_ms / 4000:
            return
        self._last_heartbeat = time.monotonic()
        with contextlib.suppress(*_REDIS_ERRORS):
            await self.upkeep.touch_own(
                stream_key(batch.partition), GROUP, self.consumer, [e.id for e in batch.entries]
            )

    async def _commit(
        self, batch: Batch, dead: list[tuple[bytes, bytes, str]], deliveries: dict[bytes, int]
    ) -> None:
        """One MULTI: dead letters in (and counted), every id acknowledged but the poison entries
        that wait (or that another consumer took over), the record gone, the waiting entries' own
        records in (R2: a record leaves only with the ack of its ids, or handing the
        unacknowledged ones to records of their own, or to the consumer that took them over and
        holds this record)."""
        stream = stream_key(batch.partition)
        waiting = {i.encode() for r in batch.waiting for i in r.ids} | set(batch.unowned)
        ids = [e.id for e in batch.entries] + [i for i, _, _ in batch.poison] + batch.lost
        if waiting:
            ids = [i for i in ids if i not in waiting]
        if batch.lost:
            log.error(
                "batch entries missing from the stream: counted as lost",
                partition=batch.partition,
                count=len(batch.lost),
            )
        attempt = 0
        while True:
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    for entry_id, data, reason in dead:
                        pipe.xadd(
                            dead_letter_key(batch.partition),
                            dead_letter_fields(
                                entry_id, data, reason, deliveries.get(entry_id, 1), self.consumer
                            ),
                        )
                    if dead:  # counted with the letters, so a count never strays from them
                        pipe.hincrby(worker_stats_key(batch.partition), "dead_total", len(dead))
                    if ids:
                        pipe.xack(stream, GROUP, *ids)
                    pipe.hdel(batches_key(batch.partition), batch.record.token)
                    for record in batch.waiting:  # after the HDEL: a retry's record has the same token
                        pipe.hset(batches_key(batch.partition), record.token, rec.encode(record))
                    await pipe.execute()
                break
            except _REDIS_ERRORS as exc:
                self._redis_state(ok=False, exc=exc)
                if self.stopping or attempt >= 20:
                    raise
                attempt += 1
                await self._sleep(self._backoff(attempt))
                # The MULTI may have run with only its reply lost; running it again would add
                # the dead letters twice. It removes the record, so a record that is gone means
                # this commit (or a take-over's) is done. A record of the same token is back only
                # when it is this batch's single entry, waiting again: nothing dead to repeat.
                with contextlib.suppress(*_REDIS_ERRORS):
                    if not await self.redis.hexists(batches_key(batch.partition), batch.record.token):
                        break
        self._redis_state(ok=True)
        if batch.lost:
            await PartitionStats.add(self.redis, batch.partition, "lost_total", len(batch.lost))

    async def _dead_letter(
        self, partition: int, poison: list[tuple[bytes, bytes, str]], deliveries: int
    ) -> None:
        """Entries in no batch record: dead letter + XACK in one MULTI."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for entry_id, data, reason in poison:
                pipe.xadd(
                    dead_letter_key(partition),
                    dead_letter_fields(entry_id, data, reason, deliveries, self.consumer),
                )
            pipe.hincrby(worker_stats_key(partition), "dead_total", len(poison))
            pipe.xack(stream_key(partition), GROUP, *[i for i, _, _ in poison])
            await pipe.execute()
        for entry_id, _, reason in poison:
            log.error("entry moved to dead letters", partition=partition, id=entry_id.decode(), reason=reason)

    # --- faults -------------------------------------------------------------------------------
    def _clickhouse_state(self, *, ok: bool, exc: BaseException | None = None) -> None:
        if ok == self._clickhouse_ok:
            return
        self._clickhouse_ok = ok
        if ok:
            log.info("clickhouse reachable again; draining the backlog")
        else:
            log.error("clickhouse unreachable; retrying with backoff, entries stay pending", error=str(exc))

    def _redis_state(self, *, ok: bool, exc: BaseException | None = None) -> None:
        if ok == self._redis_ok:
            return
        self._redis_ok = ok
        if ok:
            log.info("redis reachable again")
        else:
            log.error("redis unreachable; retrying with backoff", error=str(exc))

    @staticmethod
    def _backoff(attempt: int) -> float:
        cap = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** min(max(attempt - 1, 0), 10))
        return random.uniform(cap / 2, cap)  # jitter: workers that failed together retry apart

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _until_redis(self, step) -> None:  # type: ignore[no-untyped-def]
        attempt = 0
        while True:
            try:
                await step()
                self._redis_state(ok=True)
                return
            except _REDIS_ERRORS as exc:
                self._redis_state(ok=False, exc=exc)
                if self.stopping:
                    raise
                attempt += 1
                await self._sleep(self._backoff(attempt))


class _DataRejected(Exception):
    """ClickHouse refused the rows themselves; the cause holds its error."""


class _Superseded(Exception):
    """The batch's record is gone: another worker took the entries over and committed them."""


async def run_worker(settings: Settings, store: Store) -> None:
    """Run one worker until cancelled (embedded in the query service) or stopped.

    Cancellation is turned into `stop()`: the worker itself runs as an inner task that is never
    cancelled in the normal path (a cancellation landing inside a Redis read can be swallowed by
    the client's timeout handling on Python 3.11), finishes the step in hand, flushes what it
    buffered and retires. Whatever does not finish within the grace time stays pending with its
    batch record and is recovered by the next worker."""
    redis = worker_redis(settings)
    worker = Worker(settings, store, redis)
    inner = asyncio.create_task(worker.run(), name="worker-run")
    try:
        await asyncio.shield(inner)
    except asyncio.CancelledError:
        worker.stop()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(inner, _STOP_GRACE_S)
        raise
    finally:
        worker.stop()
        if not inner.done():
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(inner, _STOP_GRACE_S)
        await redis.aclose()


def serve(settings: Settings) -> int:
    """`botpulse worker`: SIGTERM/SIGINT stop reading, flush, ack and exit within 10 s."""
    from botpulse.runtime.migrations import migrate

    check_settings(settings)
    store = Store(settings)
    migrate(store)
    # A batch keeps tens of thousands of objects alive for a moment, and nearly all of them die
    # by reference counting; the default thresholds would run the cyclic collector (scanning
    # everything alive, start-up objects included) many times per batch.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)

    async def main() -> None:
        redis = worker_redis(settings)
        worker = Worker(settings, store, redis)
        loop = asyncio.get_running_loop()
        inner = asyncio.create_task(worker.run(), name="worker-run")

        def on_signal() -> None:
            log.info("stopping: flushing the batch in hand")
            worker.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        log.info("worker started", consumer=worker.consumer, partitions=settings.stream_partitions)
        signalled = asyncio.create_task(worker.stopped())
        try:
            await asyncio.wait({inner, signalled}, return_when=asyncio.FIRST_COMPLETED)
            # Bound the flush: past this the batch stays pending with its record (safe).
            await asyncio.wait_for(inner, _STOP_GRACE_S)
        except TimeoutError:
            log.warning("flush did not finish in time; its entries stay pending for the next worker")
        finally:
            signalled.cancel()
            await redis.aclose()

    try:
        asyncio.run(main())
    finally:
        store.close()
    return 0
