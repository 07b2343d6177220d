"""Stage 1, intake: read the partitions' streams and accept entries into one buffer per partition.

One `XREADGROUP … BLOCK` reads every partition (at most until the open batch is due); each
reply is decoded into its partition's `PartitionBuffer`. A buffer is never emptied field by
field: a flush takes the whole object and a fresh one takes its place.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis.asyncio as aioredis

from botpulse.schemas.stream import GROUP, MAX_ENTRY_EVENTS, stream_key
from botpulse.workers import batchlog as rec
from botpulse.workers import metrics
from botpulse.workers.batch import Entry, Poison, decode_into
from botpulse.workers.context import Context

# While a batch is open, reads come at most this share of BOTPULSE_BATCH_MS apart (`_linger`).
READ_EVERY = 0.1


def _as_is(response: object, **_: object) -> object:
    return response


class PartitionBuffer:
    """The entries of one partition read since its last batch."""

    __slots__ = ("delivered_since", "entries", "entry_ids", "in_order", "opened", "undecodable")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        # Undecodable entries: they join the batch's record as poison.
        self.undecodable: list[Poison] = []
        # The stream entry ids accepted, each once (an entry of several events, or undecodable),
        # in the order read: the ids the batch record names and the commit acknowledges, kept
        # here rather than derived again from every event id.
        self.entry_ids: list[bytes] = []
        self.opened = time.monotonic()  # when the first entry came (meaningful once holding)
        # Only XREADGROUP '>' entries: distinct and in stream order (each read returns ids above
        # every id the group delivered before), so no sort is needed (parsing every id was ~5 %
        # of the worker's time).
        self.in_order = True
        # Redis's clock (ms) before the read that brought the first entry, while the buffer
        # holds only '>' entries: lets the batch record skip the id-by-id ownership check while
        # no entry can have been idle long enough to be taken over (workers/batchlog.py).
        self.delivered_since: int | None = None

    @property
    def holding(self) -> bool:
        return bool(self.entries or self.undecodable)

    def events(self) -> int:
        return len(self.entries) + len(self.undecodable)

    def ids(self) -> list[bytes]:
        """The stream entry ids held (an entry of several events once)."""
        return list(self.entry_ids)

    def accept(self, entries: Sequence[Sequence[object]], *, in_order: bool, read_ms: int | None) -> None:
        """`entries`: (id, fields) pairs, the fields a raw reply's flat list or a dict.
        `read_ms`: Redis's clock before the XREADGROUP '>' that delivered them (None for
        entries taken over)."""
        if not self.holding:
            self.opened = time.monotonic()
            self.delivered_since = read_ms
        elif read_ms is None:
            self.delivered_since = None
        if not in_order or (
            # One reply is in order; replies follow each other unless an operator moved the
            # group back (XGROUP SETID): one comparison per read keeps that case sorted too.
            self.entries and entries and rec.id_key(entries[0][0]) <= rec.id_key(self.entries[-1].id)  # type: ignore[arg-type]
        ):
            self.in_order = False
        decode_into(entries, self.entries, self.undecodable, self.entry_ids)


class Intake:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.buffers = {p: PartitionBuffer() for p in ctx.partitions}
        # XREADGROUP replies as hiredis parsed them (no dict per entry): same connections, its
        # own callbacks, so the shared client keeps its usual replies.
        self._reader = aioredis.Redis(connection_pool=ctx.redis.connection_pool)
        self._reader.set_response_callback("XREADGROUP", _as_is)
        # Events per entry in the last read (an entry holds up to MAX_ENTRY_EVENTS): a read asks
        # for the entries that fill the batch at that rate, not for `batch_rows` entries of up
        # to MAX_ENTRY_EVENTS each. Starts at the most, the safe side for a backlog of full ones.
        self.events_per_entry = MAX_ENTRY_EVENTS
        # time.monotonic() of the last read that brought entries, 0.0 when it got all it asked
        # for (a backlog waits: `_linger` lets the next read go at once).
        self._last_read = 0.0

    def take(self, partition: int) -> PartitionBuffer:
        """The partition's buffer, handed to a batch; a fresh one replaces it."""
        buffer, self.buffers[partition] = self.buffers[partition], PartitionBuffer()
        return buffer

    def reset(self) -> None:
        """Forget everything buffered (the entries stay pending in Redis and are recovered)."""
        self.buffers = {p: PartitionBuffer() for p in self.ctx.partitions}

    def held_ids(self, partition: int) -> list[bytes]:
        return self.buffers[partition].ids()

    def buffered(self) -> int:
        return max(len(b.entries) for b in self.buffers.values())

    def _oldest(self) -> float | None:
        opened = [b.opened for b in self.buffers.values() if b.holding]
        return min(opened) if opened else None

    def due(self) -> bool:
        oldest = self._oldest()
        if oldest is None:
            return False
        settings = self.ctx.settings
        return (
            self.buffered() >= settings.batch_rows or (time.monotonic() - oldest) * 1000 >= settings.batch_ms
        )

    def block_ms(self) -> int:
        # Never block past the gateway-side Redis timeout's half (the documented bound on
        # XREADGROUP BLOCK), nor past the open batch's due time.
        settings = self.ctx.settings
        block = min(settings.batch_ms, max(1, settings.redis_timeout_ms // 2))
        oldest = self._oldest()
        if oldest is not None:
            left = settings.batch_ms - (time.monotonic() - oldest) * 1000
            block = min(block, max(1, int(left)))
        return block

    def room(self) -> int:
        """How many more events a read may bring (no buffer grows past one batch)."""
        return self.ctx.settings.batch_rows - self.buffered()

    async def read(self, *, wait: bool = True) -> int:
        """One XREADGROUP of new entries into the buffers; returns how many came. `wait=False`:
        answered at once, with what is there (the read-ahead during an insert never blocks: the
        insert's end must not wait for new posts). The count asked is the room in events over
        the events per entry of the last read."""
        if wait:
            await self._linger()
            if self.ctx.stopping.is_set():
                return 0  # the loop drains what it holds; a fresh blocking read would only wait
        count = max(1, self.room() // self.events_per_entry)
        async with self._reader.pipeline(transaction=False) as pipe:
            pipe.time()  # runs just before the read: every entry it delivers is younger
            pipe.xreadgroup(
                GROUP,
                self.ctx.consumer,
                {stream_key(p): ">" for p in self.ctx.partitions},
                count=count,
                block=self.block_ms() if wait else None,
            )
            (seconds, micros), reply = await pipe.execute()
        read_ms = int(seconds) * 1000 + int(micros) // 1000
        streams = reply.items() if isinstance(reply, dict) else (reply or [])  # RESP3 / RESP2
        read = events = 0
        full = False
        for stream, entries in streams:
            full = full or len(entries) >= count
            metrics.read("new", len(entries))
            partition = self._partition_of(stream)
            before = self.buffers[partition].events()
            self.accept(partition, entries, in_order=True, read_ms=read_ms)
            read += len(entries)
            events += self.buffers[partition].events() - before
        if read:
            self.events_per_entry = max(1, min(MAX_ENTRY_EVENTS, -(-events // read)))
            # A read that got all it asked for left a backlog behind it: the next one goes at once.
            self._last_read = 0.0 if full else time.monotonic()
        return read

    async def _linger(self) -> None:
        """While a batch is open and not full, read at most every `READ_EVERY` of `batch_ms`.

        XREADGROUP BLOCK answers as soon as one entry is there, and under a steady load one
        always is: the worker then read once per gateway append (a few entries each, thousands
        of reads a second), which cost the embedded box about as much CPU, in the worker and in
        Redis, as the inserts (docs/benchmarks.md, "Figures behind choices in the code"). The
        entries wait in the stream meanwhile, where they are safe; the batch is still written
        when it falls due, and an entry can be read at most this much later than it could have
        been. An empty buffer still blocks at once: the first entry of a batch is read as it
        comes (unless another partition's batch is open: one read serves them all, so it waits
        up to the same bound), and a read that got all it asked for is followed at once."""
        oldest = self._oldest()
        if oldest is None or self.room() <= 0:
            return
        batch_ms = self.ctx.settings.batch_ms
        now = time.monotonic()
        resume = min(self._last_read + batch_ms * READ_EVERY / 1000, oldest + batch_ms / 1000)
        if resume > now:
            await self.ctx.sleep(resume - now)

    def accept(
        self,
        partition: int,
        entries: Sequence[Sequence[object]],
        *,
        in_order: bool = False,
        read_ms: int | None = None,
    ) -> None:
        self.buffers[partition].accept(entries, in_order=in_order, read_ms=read_ms)

    def _partition_of(self, stream: bytes | str) -> int:
        key = stream.decode() if isinstance(stream, bytes) else stream
        for p in self.ctx.partitions:
            if stream_key(p) == key:
                return p
        raise ValueError(f"unexpected stream {key!r}")
