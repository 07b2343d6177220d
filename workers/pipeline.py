"""The worker: the four stages chained, one pass of the loop at a time.

A pass does one of: finish the batches in flight (records written, not yet committed), flush a
due buffer, take over idle entries (and upkeep), or read. A batch goes intake → recovery
(`open_batch`) → writer → commit, and `process` is the only path from a written record to its
commit.

The engine's work and the worker's overlap (issue 18): the insert runs on the store's write
thread and chDB lets Python threads run meanwhile, so while batch n is inserted the loop reads
and decodes the next entries (never blocking, `_write_reading_ahead`), and once n is stored the
record of n+1 is written and its insert started before n is committed (`_start_next`), so the
engine stores n+1 while Redis acknowledges n. Each batch's commit still follows its own insert;
only one insert runs at a time. Memory: the batch being inserted, the one before it while it
is committed, and one buffer (at most `BOTPULSE_BATCH_ROWS` entries) per partition.

Faults: any Redis error (an error reply or a lost connection) in any stage is logged once,
backed off (bounded) and the same pass retried: the buffer and the batches in flight stay in
memory (a batch is retried with its record and token, so a repeat is deduplicated), their entries
are kept from looking idle, and no delivery is counted against them. Anything else (a bug) is
logged with its traceback and what is in memory is dropped: the entries are still pending (with
their record if one was written) and are recovered after `BOTPULSE_CLAIM_IDLE_MS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence

import redis.asyncio as aioredis
import redis.exceptions

from botpulse.runtime.clickhouse import Store
from botpulse.runtime.health import Health
from botpulse.runtime.logs import get_logger
from botpulse.runtime.settings import Settings
from botpulse.schemas.stream import GROUP, stream_key
from botpulse.workers import batchlog as rec
from botpulse.workers import metrics
from botpulse.workers.batch import Batch, Entry, Poison
from botpulse.workers.commit import Committer
from botpulse.workers.context import REDIS_ERRORS, Context, Faults, backoff, consumer_name
from botpulse.workers.durability import Durability
from botpulse.workers.intake import Intake
from botpulse.workers.recovery import Adopted, Recovery
from botpulse.workers.status import PartitionStats
from botpulse.workers.upkeep import Upkeep
from botpulse.workers.writer import Abandoned, Superseded, Writer

log = get_logger("botpulse.workers")

_TRIM_EVERY_S = 1.0
# The two overlaps, always on; turned off only to measure the worker without them
# (docs/workers.md, Throughput): read (and decode) the next entries while a batch is inserted
# (`_write_reading_ahead`), start the next batch's insert before the written one's commit
# (`_start_next`).
READ_AHEAD = True
CHAIN = True


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        redis: aioredis.Redis,
        *,
        consumer: str | None = None,
        health: Health | None = None,
    ) -> None:
        name = consumer or consumer_name()
        durability = Durability(
            redis, replicas=settings.worker_wait_replicas, timeout_ms=settings.worker_redis_timeout_ms // 2
        )
        self.ctx = Context(
            settings,
            store,
            redis,
            name,
            rec.Records(redis, name, durability),
            Upkeep(redis),
            Faults(health or Health()),
        )
        self.intake = Intake(self.ctx)
        self.recovery = Recovery(self.ctx)
        # While an insert waits, the entries read ahead are kept fresh with the batch's.
        self.writer = Writer(self.ctx, held=lambda p: self.intake.held_ids(p))
        self.committer = Committer(self.ctx, self.recovery)
        # Batches whose record is written and that are not committed yet, oldest first.
        self.inflight: deque[Batch] = deque()
        self._last_trim: dict[int, float] = {}

    # --- what the stages share ----------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    @property
    def redis(self) -> aioredis.Redis:
        return self.ctx.redis

    @property
    def consumer(self) -> str:
        return self.ctx.consumer

    @property
    def records(self) -> rec.Records:
        return self.ctx.records

    @property
    def upkeep(self) -> Upkeep:
        return self.ctx.upkeep

    @property
    def partitions(self) -> list[int]:
        return self.ctx.partitions

    def stop(self) -> None:
        self.ctx.stopping.set()

    @property
    def stopping(self) -> bool:
        return self.ctx.stopping.is_set()

    async def stopped(self) -> None:
        await self.ctx.stopping.wait()

    # --- the loop -----------------------------------------------------------------------------
    async def ensure_groups(self) -> None:
        for p in self.partitions:
            with contextlib.suppress(redis.exceptions.ResponseError):  # BUSYGROUP: exists already
                await self.redis.xgroup_create(stream_key(p), GROUP, id="0", mkstream=True)

    async def run(self) -> None:
        """Read, batch and write until `stop()`; then drain what is in hand and leave."""
        await self._until_redis(self.ensure_groups)
        await self._until_redis(self.recover_own)
        claim_every = max(0.05, self.settings.claim_idle_ms / 2000)
        next_claim = time.monotonic() + claim_every
        failures = 0
        while not self.stopping:
            try:
                if self.inflight:
                    await self._process_inflight()
                elif self.intake.due():
                    await self.flush()
                elif time.monotonic() >= next_claim:
                    await self.take_over_idle()
                    next_claim = time.monotonic() + claim_every
                else:
                    await self.intake.read()
                self.ctx.faults.redis(ok=True)
                failures = 0
            except Abandoned:
                break
            except REDIS_ERRORS as exc:
                if _group_missing(exc):
                    log.warning("consumer group missing (stream deleted?); creating it again")
                    await self._until_redis(self.ensure_groups)
                    continue
                self.ctx.faults.redis(ok=False, exc=exc)
                failures += 1
                metrics.retried("redis")
                await self._keep_fresh()
                await self.ctx.sleep(backoff(failures))
            except Exception:
                log.exception("worker step failed; entries stay pending and will be recovered")
                self.intake.reset()
                self._drop_inflight()
                metrics.retried("error")
                await self.ctx.sleep(backoff(3))
        await self.drain()

    async def drain(self) -> None:
        """Finish the batches in flight and everything buffered, then retire this consumer if
        it owns nothing (a consumer with pending entries is never removed)."""
        self.stop()
        try:
            await self._process_inflight()
            await self.flush()
            for p in self.partitions:
                if await self.upkeep.retire(stream_key(p), GROUP, self.consumer):
                    log.info("consumer retired", partition=p, consumer=self.consumer)
        except (Abandoned, *REDIS_ERRORS) as exc:
            log.warning("stopping with entries pending; another worker will take them over", error=str(exc))

    # --- intake → recovery → writer → commit --------------------------------------------------
    async def flush(self) -> None:
        for p in self.partitions:
            if not self.intake.buffers[p].holding:
                continue
            if (batch := await self._open_buffer(p)) is not None:
                self.inflight.append(batch)
                await self._process_inflight()
        await self.trim()

    async def _open_buffer(self, partition: int) -> Batch | None:
        """The partition's buffer as a batch under its written record (None: every entry was
        taken over meanwhile); the buffer is handed over only once the record is written."""
        buffer = self.intake.buffers[partition]
        batch = await self.open_batch(
            partition,
            buffer.entries,
            in_order=buffer.in_order,
            poison=buffer.undecodable,
            delivered_since_ms=buffer.delivered_since if buffer.in_order else None,
            entry_ids=buffer.entry_ids if buffer.in_order else None,
        )
        # Only now: a Redis error before the record was written leaves the buffer to retry.
        self.intake.take(partition)
        return batch

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
        return await self.recovery.open_batch(
            partition,
            entries,
            in_order=in_order,
            poison=poison,
            delivered_since_ms=delivered_since_ms,
            entry_ids=entry_ids,
        )

    async def _process_inflight(self) -> None:
        while self.inflight:
            await self.process(self.inflight[0])
            self.inflight.popleft()

    async def process(self, batch: Batch) -> None:
        """Write the batch, settle its poison entries, commit: in this order. Between the write
        and the commit, the next due buffer's batch is opened and its insert started."""
        started = time.monotonic()
        try:
            rejected = await self._write_reading_ahead(batch)
        except Superseded:
            log.warning("batch committed by another worker meanwhile", token=batch.record.token[:12])
            return
        insert_ms = (time.monotonic() - started) * 1000
        await self._start_next(batch)
        poison = batch.poison
        if rejected:
            poison = [(e.id, e.data, rejected[e.id]) for e in batch.entries if e.id in rejected] + poison
        settlement = await self.committer.settle(batch, poison)
        await self.committer.commit(batch, settlement)
        rows = len(batch.entries) - len(rejected)
        metrics.committed(len(batch.entries), recovered=batch.recovered)
        if log.is_enabled_for(logging.INFO):  # its figures take a pass over every event
            now_ms = time.time() * 1000
            oldest = min((e.event.received_ms for e in batch.entries), default=int(now_ms))
            log.info(
                "batch written",
                partition=batch.partition,
                rows=rows,
                # An entry of several events once (its events share its bytes).
                bytes=sum(len(e.value) for e in batch.entries if e.index < 1),
                insert_ms=round(insert_ms, 1),
                lag_ms=round(now_ms - oldest, 1),
                dead_lettered=len(settlement.dead),
                poison_waiting=len(settlement.waiting),
                recovered=batch.recovered,
                token=batch.record.token[:12],
            )
        try:  # operator figures only: a full or failing Redis may refuse them
            await PartitionStats.record_batch(
                self.redis, batch.partition, rows=rows, recovered=batch.recovered
            )
        except REDIS_ERRORS as exc:
            log.debug("worker stats not updated", error=str(exc))

    async def _write_reading_ahead(self, batch: Batch) -> dict[bytes, str]:
        """The batch's insert (run here, or already started by `_start_next`) runs on the store's
        write thread, and the engine lets other threads run meanwhile: while it works, a task
        reads and decodes the next entries (never blocking, never past one batch per buffer).
        Reading acknowledges nothing, and the caller commits only once this returned."""
        started, batch.write = batch.write, None  # a retry of this batch writes it again
        write = self.writer.write(batch) if started is None else started
        if not READ_AHEAD or self.stopping:
            return await write
        stop = asyncio.Event()
        reader = asyncio.ensure_future(self._read_ahead(stop))
        try:
            rejected = await write
        except Exception:
            stop.set()
            await self._end_read_ahead(reader, quiet=True)
            raise
        except BaseException:  # cancelled: the read in flight is abandoned (its entries stay pending)
            reader.cancel()
            raise
        stop.set()
        # A bug in the read-ahead is raised now, as any pass's: the batch stays uncommitted with
        # its record, recovered and deduplicated like any other.
        await self._end_read_ahead(reader, quiet=False)
        return rejected

    async def _read_ahead(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set() and self.intake.room() > 0:
                if not await self.intake.read(wait=False):
                    return
        except REDIS_ERRORS as exc:
            # The write in hand finishes and commits first; the loop's next read meets the error.
            log.debug("read-ahead failed", error=str(exc))

    async def _end_read_ahead(self, reader: asyncio.Future[None], *, quiet: bool) -> None:
        try:
            await reader  # lets the read in flight finish: its entries join the buffer
        except Exception:
            if not quiet:
                raise
            log.exception("read-ahead failed")

    async def _start_next(self, written: Batch) -> None:
        """`written` is stored, its commit comes next: when a buffer is due (read ahead during
        that insert), its record is written now and its insert started, so the engine works on
        it while Redis acknowledges `written`. The new batch joins `inflight` behind `written`;
        its own commit still waits for its own insert (`process`)."""
        if not CHAIN or self.stopping or not self.inflight or self.inflight[-1] is not written:
            return
        if not self.intake.due():
            return
        for p in self.partitions:
            if not self.intake.buffers[p].holding:
                continue
            try:
                batch = await self._open_buffer(p)
            except REDIS_ERRORS as exc:
                # The buffer stays; the loop's next flush opens it (and meets the error).
                log.debug("next batch not opened ahead", error=str(exc))
                return
            if batch is not None:
                batch.write = asyncio.ensure_future(self.writer.write(batch))
                self.inflight.append(batch)
            return

    def _drop_inflight(self) -> None:
        """Forget the batches in memory (their entries stay pending with their records and are
        recovered); an insert started ahead is cancelled rather than left unawaited."""
        for batch in self.inflight:
            if batch.write is not None:
                batch.write.cancel()
                batch.write = None
        self.inflight.clear()

    # --- recovery -----------------------------------------------------------------------------
    async def recover_own(self) -> None:
        async for adopted in self.recovery.own_pending():
            await self._adopt(adopted)

    async def take_over_idle(self) -> None:
        held = {p: self._held(p) for p in self.partitions}
        async for adopted in self.recovery.idle(held):
            await self._adopt(adopted)
        await self.recovery.sweep_records()
        await self.recovery.sweep_consumers()
        await self.trim()

    async def adopt(
        self,
        partition: int,
        entries: Sequence[tuple[bytes, object]],
        deliveries: dict[bytes, int] | None = None,
    ) -> None:
        """Entries now owned by this consumer (claimed): written as their record's batch, or
        dead-lettered, or buffered like freshly read ones."""
        await self._adopt(await self.recovery.adopt(partition, entries, deliveries))

    async def _adopt(self, adopted: Adopted) -> None:
        p = adopted.partition
        metrics.read("recovered", sum(len(b.entries) for b in adopted.batches) + len(adopted.free))
        self.inflight.extend(adopted.batches)
        await self._process_inflight()
        for batch, deliveries in adopted.given_up:
            await self.committer.give_up(batch, deliveries)
        if adopted.tired:
            await self.committer.dead_letter_free(p, adopted.tired, adopted.tired_deliveries)
        buffered = set(self.intake.held_ids(p))
        self.intake.accept(p, [(i, f) for i, f in adopted.free if i not in buffered])
        if self.intake.buffered() >= self.settings.batch_rows:
            await self.flush()

    # --- upkeep and faults --------------------------------------------------------------------
    async def sweep_records(self) -> None:
        await self.recovery.sweep_records()

    async def trim(self) -> None:
        for p in self.partitions:
            if time.monotonic() - self._last_trim.get(p, 0.0) >= _TRIM_EVERY_S:
                self._last_trim[p] = time.monotonic()
                trimmed = await self.upkeep.trim(stream_key(p))
                if trimmed:
                    log.debug("stream trimmed", partition=p, entries=trimmed)

    def _held(self, partition: int) -> list[bytes]:
        inflight = rec.entries_of(e.id for b in self.inflight if b.partition == partition for e in b.entries)
        return self.intake.held_ids(partition) + inflight

    async def _keep_fresh(self) -> None:
        """While Redis refuses a step, keep what this worker holds from looking idle to the
        others (a take-over would count a delivery against entries that did nothing wrong)."""
        with contextlib.suppress(*REDIS_ERRORS):
            for p in self.partitions:
                if held := self._held(p):
                    await self.upkeep.touch_own(stream_key(p), GROUP, self.consumer, held)

    async def _until_redis(self, step) -> None:  # type: ignore[no-untyped-def]
        attempt = 0
        while True:
            try:
                await step()
                self.ctx.faults.redis(ok=True)
                return
            except REDIS_ERRORS as exc:
                self.ctx.faults.redis(ok=False, exc=exc)
                if self.stopping:
                    raise
                attempt += 1
                await self.ctx.sleep(backoff(attempt))


def _group_missing(exc: BaseException) -> bool:
    # Redis 7 answers a read blocked on a stream that is deleted with UNBLOCKED, valkey (and a
    # read that was not blocked) with NOGROUP: the same repair.
    return "NOGROUP" in str(exc) or "UNBLOCKED" in str(exc)
