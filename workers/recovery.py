"""Stage 2, recovery: the write-ahead batch records, and owning entries another run left behind.

- `open_batch`: a buffer becomes a batch once its record is written (only while this consumer
  owns every id, R1) and confirmed durable; nothing is inserted before.
- `own_pending` (at start) and `idle` (every half `BOTPULSE_CLAIM_IDLE_MS`): entries this
  consumer name still owns, or that sat idle under another one, are claimed page by page and
  sorted into `Adopted` work: the batches of the records naming them (R3: same ids, same token,
  under the record's lease), entries delivered too often (crash loops), and free entries that
  join the intake like fresh ones.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from botpulse.runtime.logs import get_logger
from botpulse.runtime.settings import Settings
from botpulse.schemas.stream import GROUP, MAX_ENTRY_EVENTS, batches_key, stream_key
from botpulse.workers import batchlog as rec
from botpulse.workers.batch import Batch, Entry, Poison, decode_entry, event_id, payload, sort_decoded
from botpulse.workers.context import Context
from botpulse.workers.status import PartitionStats

log = get_logger("botpulse.workers")

Claimed = Sequence[tuple[bytes, object]]  # (id, fields) as XCLAIM / XAUTOCLAIM return them


def claim_count(settings: Settings) -> int:
    """Entries to take over per claim: a claim holds at most a batch of events, whatever the
    entries hold (up to `MAX_ENTRY_EVENTS` each)."""
    return max(1, settings.batch_rows // MAX_ENTRY_EVENTS)


@dataclass
class Adopted:
    """One page of claimed entries, sorted by what must happen to them."""

    partition: int
    batches: list[Batch] = field(default_factory=list)  # records to write again
    # Records delivered too often (crash loops): dead-lettered whole, with the count.
    given_up: list[tuple[Batch, int]] = field(default_factory=list)
    tired: list[Poison] = field(default_factory=list)  # delivered too often: dead letters
    tired_deliveries: int = 0
    free: list[tuple[bytes, object]] = field(default_factory=list)  # join the intake


class Recovery:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # --- write-ahead records ------------------------------------------------------------------
    async def open_batch(
        self,
        partition: int,
        entries: list[Entry],
        *,
        in_order: bool = False,
        poison: Sequence[Poison] = (),
        delivered_since_ms: int | None = None,
        entry_ids: Sequence[bytes] | None = None,
    ) -> Batch | None:
        """The entries under a written, durable record; None when every entry was taken
        over meanwhile (theirs now, never inserted by us). `in_order`: the entries are known to
        be distinct and in stream order. `poison`: undecodable entries, named by the record
        like the others. `delivered_since_ms`: Redis's clock before the reads that delivered
        them all (see `Records.write_if_owned`). `entry_ids`: with `in_order`, the distinct
        stream entry ids of `entries` and `poison` in stream order, as the buffer kept them
        (spares deriving them from every event id)."""
        ctx = self.ctx
        stream = stream_key(partition)
        if not in_order:
            by_id = {e.id: e for e in entries}
            entries = [by_id[i] for i in rec.sort_ids(by_id)]
            entry_ids = None
        bad: dict[bytes, Poison] = {}
        if poison:
            decoded = {e.id for e in entries}
            bad = {i: (i, data, reason) for i, data, reason in poison if i not in decoded}
            if len(bad) < len(poison):
                entry_ids = None  # poison that is also an entry: derive the ids
        since = delivered_since_ms
        for _ in range(3):
            # The record names stream entries: every event of each (a fresh batch holds whole
            # entries), each entry once.
            if entry_ids is not None:
                ids = list(entry_ids)
            else:
                ids = rec.entries_of(e.id for e in entries)
                if bad:
                    ids = rec.sort_ids([*ids, *map(rec.entry_of, bad)])
            record = rec.new_record(stream, ctx.consumer, ids)
            lost = set(
                await ctx.records.write_if_owned(
                    stream,
                    batches_key(partition),
                    record,
                    delivered_since_ms=since,
                    # What a healthy batch may take, which the settings keep at most half of
                    # XAUTOCLAIM's threshold: margin for a clock that steps, or a failover.
                    fresh_for_ms=ctx.settings.batch_ms + int(ctx.settings.insert_timeout_s * 1000),
                )
            )
            since = None  # a retry checks id by id
            if not lost:
                return Batch(partition, record, entries, poison=list(bad.values()), entry_ids=ids)
            # Taken over while buffered (we stalled past claim_idle_ms): theirs now.
            log.warning("entries taken over before their batch was written", count=len(lost))
            entries = [e for e in entries if rec.entry_of(e.id) not in lost]
            bad = {i: p for i, p in bad.items() if rec.entry_of(i) not in lost}
            entry_ids = None
            if not entries and not bad:
                return None
        return None  # still pending under whoever owns them; never inserted by us

    # --- owning what others left --------------------------------------------------------------
    async def own_pending(self) -> AsyncIterator[Adopted]:
        """Entries this consumer name already owns (a restart with the same host and pid, or an
        embedded worker restarted in-process), at once, not after the idle time. Re-claimed
        (not just re-read) so their delivery count grows on every restart and a crash-looping
        batch still ends in the dead letters."""
        ctx = self.ctx
        for p in ctx.partitions:
            stream = stream_key(p)
            cursor = "-"
            for _ in range(100_000):
                rows = await ctx.redis.xpending_range(
                    stream, GROUP, cursor, "+", claim_count(ctx.settings), ctx.consumer
                )
                ids = [r["message_id"] for r in rows]
                if not ids:
                    break
                cursor = "(" + ids[-1].decode()  # exclusive: buffered entries stay pending
                claimed = await ctx.redis.xclaim(stream, GROUP, ctx.consumer, 0, ids)
                if len(claimed) < len(ids):
                    log.error("own pending entries no longer in the stream", partition=p)
                if not claimed:
                    break
                yield await self.adopt(p, claimed)

    async def idle(self, held: dict[int, list[bytes]]) -> AsyncIterator[Adopted]:
        """XAUTOCLAIM entries idle longer than `claim_idle_ms` (their consumer died or hangs).
        `held`: the ids this worker holds in memory per partition (kept fresh first: XAUTOCLAIM
        does not skip our own entries)."""
        ctx = self.ctx
        for p in ctx.partitions:
            stream = stream_key(p)
            if held.get(p):
                await ctx.upkeep.touch_own(stream, GROUP, ctx.consumer, held[p])
            cursor: bytes | str = "0-0"
            for _ in range(1000):
                reply = await ctx.redis.xautoclaim(
                    stream,
                    GROUP,
                    ctx.consumer,
                    ctx.settings.claim_idle_ms,
                    cursor,
                    count=claim_count(ctx.settings),
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
                    await PartitionStats.add(ctx.redis, p, "lost_total", len(deleted))
                if claimed:
                    log.info("entries taken over", partition=p, count=len(claimed))
                    yield await self.adopt(p, claimed)
                cursor = next_cursor
                if cursor in (b"0-0", "0-0"):
                    break

    async def delivery_counts(self, stream: str, ids: list[bytes]) -> dict[bytes, int]:
        if not ids:
            return {}
        ordered = rec.sort_ids(ids)
        rows = await self.ctx.redis.xpending_range(
            stream,
            GROUP,
            ordered[0],
            ordered[-1],
            len(ordered) + 10 * self.ctx.settings.batch_rows,
            self.ctx.consumer,
        )
        wanted = set(ids)
        return {r["message_id"]: int(r["times_delivered"]) for r in rows if r["message_id"] in wanted}

    async def adopt(
        self, partition: int, entries: Claimed, deliveries: dict[bytes, int] | None = None
    ) -> Adopted:
        """Sort entries now owned by this consumer: those named by a batch record are written as
        that batch (same ids, same token) by whoever holds its lease; the rest are free."""
        ctx = self.ctx
        stream = stream_key(partition)
        if deliveries is None:
            deliveries = await self.delivery_counts(stream, [i for i, _ in entries])
        limit = ctx.settings.max_deliveries
        out = Adopted(partition)
        by_id = dict(entries)
        records = await ctx.records.all(batches_key(partition))
        handled: set[bytes] = set()
        for record in records.values():
            ids = [i.encode() for i in record.ids]
            if not any(i in by_id for i in ids):
                continue
            handled.update(ids)
            lease = await ctx.records.lease(batches_key(partition), record.token, ctx.lease_ms)
            if lease == 0:
                # Its writer, or another recovery, is at it: its commit acknowledges every id of
                # the record, these included (XACK does not ask who owns an entry).
                log.info("batch being written by another worker; left to it", token=record.token[:12])
                continue
            most = max((deliveries.get(i, 1) for i in ids if i in by_id), default=1)
            batch = await self.load_batch(partition, record, by_id)
            batch.leased = lease == 1
            if most > limit:
                log.error("batch moved to dead letters", partition=partition, token=record.token)
                out.given_up.append((batch, most))
                continue
            log.info("recovering batch", partition=partition, token=record.token, rows=len(ids))
            out.batches.append(batch)
        for entry_id, fields in entries:
            if entry_id in handled or fields is None:
                continue
            if deliveries.get(entry_id, 1) > limit:
                reason = (
                    f"delivered {deliveries[entry_id]} times without being written "
                    f"(BOTPULSE_MAX_DELIVERIES={limit})"
                )
                # One dead letter per event, each with its own bytes (as a rejected one gets).
                events: list[Entry] = []
                letters: list[Poison] = []
                sort_decoded(decode_entry(entry_id, payload(fields)), events, letters)
                out.tired += [(e.id, e.data, reason) for e in events]
                out.tired += [(i, data, f"{reason}; {why}") for i, data, why in letters]
                out.tired_deliveries = max(out.tired_deliveries, deliveries[entry_id])
            else:
                out.free.append((entry_id, fields))
        return out

    async def load_batch(self, partition: int, record: rec.BatchRecord, known: dict[bytes, object]) -> Batch:
        """The record's entries: those just claimed, plus the rest read back from the stream
        (still there: a record's entries are unacknowledged, and trimming keeps those)."""
        redis = self.ctx.redis
        stream = stream_key(partition)
        missing = [i.encode() for i in record.ids if known.get(i.encode()) is None]
        fetched: dict[bytes, object] = {}
        if missing:
            async with redis.pipeline(transaction=False) as pipe:
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
            async with redis.pipeline(transaction=False) as pipe:
                for i in gone:
                    pipe.xpending_range(stream, GROUP, i, i, 1)
                for i, rows in zip(gone, await pipe.execute(), strict=True):
                    if not rows:
                        settled.add(i)
        batch = Batch(partition, record, [], recovered=True)
        # A record holding only some events of an entry (`parts`: its poison events, waiting
        # for another delivery) gets only those: the others are stored already.
        only: dict[bytes, set[bytes]] = {}
        for part in record.parts:
            held_id = part.encode()
            only.setdefault(rec.entry_of(held_id), set()).add(held_id)
        for raw_id in record.ids:
            entry_id = raw_id.encode()
            if entry_id in settled:
                continue
            fields = known.get(entry_id) or fetched.get(entry_id)
            if fields is None:
                batch.lost.append(entry_id)
                continue
            decoded = decode_entry(entry_id, payload(fields))
            if entry_id in only and type(decoded) is list:
                held = only[entry_id]
                decoded = [d for d in decoded if event_id(d) in held]
            sort_decoded(decoded, batch.entries, batch.poison)
        return batch

    # --- housekeeping -------------------------------------------------------------------------
    async def sweep_records(self) -> None:
        """Records left behind with no pending entry (e.g. an operator acknowledged entries by
        hand) are removed, so `batches in flight` means what it says."""
        ctx = self.ctx
        cutoff = time.time() * 1000 - ctx.settings.claim_idle_ms
        for p in ctx.partitions:
            for token, record in (await ctx.records.all(batches_key(p))).items():
                if record.created_ms < cutoff and await ctx.upkeep.drop_stale_record(
                    stream_key(p), batches_key(p), GROUP, token, record.ids
                ):
                    log.warning("stale batch record removed", partition=p, token=token)

    async def sweep_consumers(self) -> None:
        ctx = self.ctx
        idle = max(10 * ctx.settings.claim_idle_ms, 300_000)
        for p in ctx.partitions:
            removed = await ctx.upkeep.sweep(stream_key(p), GROUP, idle)
            if removed:
                log.info("idle consumers without pending entries removed", partition=p, consumers=removed)
