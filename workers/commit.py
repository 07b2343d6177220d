"""Stage 4, commit: the last step of a batch, so "acknowledged only after the insert" holds by
construction (the pipeline reaches it only once the writer returned).

One `MULTI`: `XACK` of every id but the poison entries that wait (or that another consumer took
over), the record and its lease deleted, and, through one `allow-oom` script (it must run on a
full Redis: acknowledging is what frees memory), the dead letters added and counted and each
waiting poison entry's own record written (R2: a record leaves only with the ack of its ids, or
handing the unacknowledged ones to records of their own, or to the consumer that took them over
and holds this record). Poison entries' fates are decided here first, by delivery count.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from redis.asyncio.client import Pipeline

from botpulse.runtime.logs import get_logger
from botpulse.schemas.stream import (
    GROUP,
    batch_lease_key,
    batches_key,
    dead_letter_key,
    stream_key,
    worker_stats_key,
)
from botpulse.workers import batchlog as rec
from botpulse.workers import metrics
from botpulse.workers.batch import Batch, Poison, Settlement
from botpulse.workers.context import REDIS_ERRORS, Context, backoff
from botpulse.workers.deadletters import dead_letter_fields
from botpulse.workers.durability import Script
from botpulse.workers.recovery import Recovery

log = get_logger("botpulse.workers")

# ARGV[1]: dead letters, ARGV[2]: field/value arguments per letter, then the letters, then
# (record token, encoded record) pairs to write. KEYS: dead letters, stats, batch records.
_SETTLE = """
local k, per, i = tonumber(ARGV[1]), tonumber(ARGV[2]), 3
for _ = 1, k do
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, i, i + per - 1))
  i = i + per
end
if k > 0 then redis.call('HINCRBY', KEYS[2], 'dead_total', k) end
while i < #ARGV do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  i = i + 2
end
return k
"""


class Committer:
    def __init__(self, ctx: Context, recovery: Recovery) -> None:
        self.ctx = ctx
        self.recovery = recovery
        self._settle = Script(ctx.redis, ctx.records.durability, _SETTLE)

    async def settle(self, batch: Batch, poison: list[Poison]) -> Settlement:
        """Each poison entry's fate by its delivery count: delivered `max_deliveries` times, the
        dead letters; otherwise pending under a record of its own, to be delivered again by the
        take-over path once idle and retried alone. That record's token is the one its isolated
        insert used (`token_for` of its id), so a retry that finally stores it, or a repeat
        after a crash, is deduplicated against any earlier attempt."""
        out = Settlement()
        if not poison:
            return out
        ctx = self.ctx
        stream = stream_key(batch.partition)
        limit = ctx.settings.max_deliveries
        # Delivery counts are the stream entry's: the events of one entry share theirs.
        out.deliveries = await self.recovery.delivery_counts(stream, rec.entries_of(i for i, _, _ in poison))
        waiting: dict[bytes, list[bytes]] = {}  # entry id -> its poison events that wait
        for event_id, data, reason in poison:
            entry_id = rec.entry_of(event_id)
            count = out.deliveries.get(entry_id)
            if count is None:
                # Not ours any more (taken over while this batch was written): its new owner
                # writes this batch again from its record and settles the entry by its own
                # delivery count, so it is neither acknowledged nor given a record here.
                if entry_id not in out.unowned:
                    out.unowned.append(entry_id)
                log.warning(
                    "poison entry taken over meanwhile", partition=batch.partition, id=event_id.decode()
                )
                continue
            if count >= limit:
                out.dead.append(
                    (event_id, data, f"{reason} (delivered {count} times, BOTPULSE_MAX_DELIVERIES={limit})")
                )
                log.error(
                    "entry moved to dead letters",
                    partition=batch.partition,
                    id=event_id.decode(),
                    deliveries=count,
                    reason=reason,
                )
            else:
                waiting.setdefault(entry_id, []).append(event_id)
                log.warning(
                    "poison entry left pending for another delivery",
                    partition=batch.partition,
                    id=event_id.decode(),
                    deliveries=count,
                    max_deliveries=limit,
                    reason=reason,
                )
        for entry_id, events in waiting.items():
            # One record per entry (its ack waits for all of them), holding only its poison
            # events when it has several (the others are stored: never inserted again).
            parts = [] if events == [entry_id] else events
            out.waiting.append(rec.new_record(stream, ctx.consumer, [entry_id], parts))
        return out

    async def give_up(self, batch: Batch, deliveries: int) -> None:
        """A record delivered more than `max_deliveries` times (its writers keep dying): every
        entry to the dead letters, the reason saying it may already be stored."""
        reason = (
            f"batch {batch.record.token} delivered {deliveries} times without being acknowledged "
            f"(BOTPULSE_MAX_DELIVERIES={self.ctx.settings.max_deliveries}); it may already be stored"
        )
        dead = [(e.id, e.data, reason) for e in batch.entries] + batch.poison
        counts = dict.fromkeys(rec.entries_of(i for i, _, _ in dead), deliveries)
        await self.commit(batch, Settlement(dead=dead, deliveries=counts))

    async def _queue_settle(self, pipe: Pipeline, partition: int, settlement: Settlement) -> None:
        letters: list[object] = []
        per = 0
        for event_id, data, reason in settlement.dead:
            count = settlement.deliveries.get(rec.entry_of(event_id), 1)
            fields = dead_letter_fields(event_id, data, reason, count, self.ctx.consumer)
            per = 2 * len(fields)
            for name, value in fields.items():
                letters += [name, value]
        args: list[object] = [len(settlement.dead), per, *letters]
        for record in settlement.waiting:
            args += [record.token, rec.encode(record)]
        keys = [dead_letter_key(partition), worker_stats_key(partition), batches_key(partition)]
        await self._settle(keys=keys, args=args, client=pipe)

    async def _transact(
        self, queue: Callable[[Pipeline], Awaitable[None]], done: Callable[[], Awaitable[bool]]
    ) -> None:
        """Run one MULTI until it holds, with backoff. A MULTI may have run with only its reply
        lost, and running it again would add its dead letters twice: after a failure, `done`
        tells from Redis whether it ran."""
        ctx = self.ctx
        attempt = 0
        while True:
            try:
                async with ctx.redis.pipeline(transaction=True) as pipe:
                    await queue(pipe)
                    await pipe.execute()
                break
            except REDIS_ERRORS as exc:
                ctx.faults.redis(ok=False, exc=exc)
                if ctx.stopping.is_set():
                    raise
                attempt += 1
                metrics.retried("redis")
                await ctx.sleep(backoff(attempt))
                try:
                    if await done():
                        break
                except REDIS_ERRORS:
                    continue

    async def commit(self, batch: Batch, settlement: Settlement) -> None:
        ctx = self.ctx
        p = batch.partition
        stream = stream_key(p)
        waiting = {i.encode() for r in settlement.waiting for i in r.ids} | set(settlement.unowned)
        # Stream entries: an entry of several events once, acknowledged only with all of them
        # settled (stored, dead-lettered, or left to another delivery under a record: waiting).
        if batch.entry_ids is not None:
            ids = [*batch.entry_ids, *batch.lost]
        else:
            ids = rec.entries_of([*(e.id for e in batch.entries), *(i for i, _, _ in batch.poison)])
            ids += batch.lost
        if waiting:
            ids = [i for i in ids if i not in waiting]
        if batch.lost:
            log.error(
                "batch entries missing from the stream: counted as lost", partition=p, count=len(batch.lost)
            )

        async def queue(pipe: Pipeline) -> None:
            if ids:
                pipe.xack(stream, GROUP, *ids)
            pipe.hdel(batches_key(p), batch.record.token)
            pipe.delete(batch_lease_key(batches_key(p), batch.record.token))
            if settlement.dead or settlement.waiting:  # after the HDEL: a retry's record has its token
                await self._queue_settle(pipe, p, settlement)

        async def done() -> bool:
            # The MULTI removes the record, so a record that is gone means this commit (or a
            # take-over's) is done. A record of the same token is back only when it is this
            # batch's single entry, waiting again: nothing dead to repeat.
            return not await ctx.redis.hexists(batches_key(p), batch.record.token)

        await self._transact(queue, done)
        ctx.faults.redis(ok=True)
        metrics.DEAD_LETTERS.inc(len(settlement.dead))
        if batch.lost:
            await _count(ctx, p, "lost_total", len(batch.lost))

    async def dead_letter_free(self, partition: int, poison: list[Poison], deliveries: int) -> None:
        """Entries in no batch record: dead letters + XACK in one MULTI."""
        ctx = self.ctx
        ids = rec.entries_of(i for i, _, _ in poison)
        settlement = Settlement(dead=poison, deliveries=dict.fromkeys(ids, deliveries))

        async def queue(pipe: Pipeline) -> None:
            pipe.xack(stream_key(partition), GROUP, *ids)
            await self._queue_settle(pipe, partition, settlement)

        async def done() -> bool:
            # A MULTI whose reply was lost acknowledged the entries.
            return not await self.recovery.delivery_counts(stream_key(partition), ids)

        await self._transact(queue, done)
        ctx.faults.redis(ok=True)
        metrics.DEAD_LETTERS.inc(len(poison))
        for entry_id, _, reason in poison:
            log.error("entry moved to dead letters", partition=partition, id=entry_id.decode(), reason=reason)


async def _count(ctx: Context, partition: int, name: str, amount: int) -> None:
    """Operator figures only (`botpulse status`): a full or failing Redis may refuse them."""
    try:
        await ctx.redis.hincrby(worker_stats_key(partition), name, amount)
    except REDIS_ERRORS as exc:
        log.warning("worker stats not updated", error=str(exc))
