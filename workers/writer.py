"""Stage 3, writer: a batch → one column block per table → INSERT with the record's token.

- Every block carries `insert_deduplication_token = <token>:<table>` and
  `deduplicate_blocks_in_dependent_materialized_views = 1`: a repeat (after a crash, a retry, a
  recovery) is stored once, in the table and in its roll-ups.
- A block ClickHouse rejects for its data is split in halves (deterministically, each half's
  token from its own ids) until the rejected entries are isolated. Before either half goes in,
  the block's token is appended to the record's `split` list; a block on that list is never
  inserted whole again.
- A block a materialized view refused *after* ClickHouse stored it in the table ("while pushing
  to view") is never split (its halves would store the stored rows again under new tokens): the
  whole block is retried with its own token, an alert is logged each time, until the view
  accepts it or an operator fixes it.
- Connectivity errors: retried with backoff; the entries stay pending, their idle time and the
  record's lease kept fresh.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from botpulse.runtime.clickhouse import is_data_error, is_view_error
from botpulse.runtime.logs import get_logger
from botpulse.schemas.stream import GROUP, batches_key, stream_key
from botpulse.workers import batchlog as rec
from botpulse.workers import metrics
from botpulse.workers.batch import Batch
from botpulse.workers.context import REDIS_ERRORS, Context, backoff
from botpulse.workers.rows import (
    COLUMNS,
    NAMES_TABLE,
    Block,
    block_rows,
    name_block,
    name_rows,
    rows_by_table,
    slice_block,
    to_block,
)

log = get_logger("botpulse.workers")


def insert_settings(token: str, *, cluster: bool) -> dict[str, object]:
    """The settings of every block the writer inserts (the bench's engine baseline inserts with
    them too, so its rate is the engine's for exactly this kind of insert)."""
    settings: dict[str, object] = {
        "insert_deduplication_token": token,
        "deduplicate_blocks_in_dependent_materialized_views": 1,
    }
    if cluster:
        # Through a Distributed table, confirm only once the shards stored the block (the ack
        # follows this confirmation); the shards' replicated tables deduplicate by token.
        settings["insert_distributed_sync"] = 1
    return settings


class DataRejected(Exception):
    """ClickHouse refused the rows themselves; the cause holds its error."""


class Superseded(Exception):
    """Another worker owns this batch now: its record is gone (committed) or its lease taken."""


class Abandoned(Exception):
    """The worker is stopping while ClickHouse is unreachable: the batch stays pending (its
    record in place) for the next worker."""


class Writer:
    def __init__(self, ctx: Context, held: Callable[[int], list[bytes]] | None = None) -> None:
        self.ctx = ctx
        # The partition's entries buffered beside the batch (read ahead while it is inserted).
        self.held = held
        self._last_heartbeat = 0.0

    async def write(self, batch: Batch) -> dict[bytes, str]:
        """Insert the batch; returns {entry id: reason} for the entries ClickHouse rejected for
        their data. Raises `Superseded` when another worker took the batch over."""
        stream = stream_key(batch.partition)
        first: dict[tuple[str, str], int] = {}  # the custom metric names, found with the columns
        tables = rows_by_table([(e.id, e.event) for e in batch.entries], first)
        rejected: dict[bytes, str] = {}
        for table, (block, ids) in tables.items():
            token = f"{batch.record.token}:{table}"
            rejected.update(await self.insert_split(batch, table, block, ids, token, stream))
        if rejected:  # only the names of the events stored
            names = name_rows([e.event for e in batch.entries if e.id not in rejected])
        else:
            names = name_block(first)
        if names:
            token = batch.record.token
            if rejected or batch.poison:
                # Keyed by the entries actually stored: one that became acceptable on a retry
                # adds names the earlier attempt's block lacked (same token: dropped as a repeat).
                token = rec.token_for(stream, [e.id for e in batch.entries if e.id not in rejected])
            try:
                await self.insert(
                    batch, NAMES_TABLE, to_block(names, COLUMNS[NAMES_TABLE]), f"{token}:{NAMES_TABLE}"
                )
            except DataRejected as exc:
                log.error("custom metric names rejected", error=str(exc.__cause__))
        return rejected

    async def insert_split(
        self, batch: Batch, table: str, rows: Block, ids: list[bytes], token: str, stream: str
    ) -> dict[bytes, str]:
        """Insert `rows`; on a data error split in halves until the rejected entries are
        isolated. Returns {entry id: reason} for the isolated ones."""
        n = block_rows(rows)
        if not n:
            return {}
        records = self.ctx.records
        batches = batches_key(batch.partition)
        if batch.recovered and n > 1:
            # What an earlier recovery of this record split, or that the batch was committed
            # meanwhile, is in Redis, not in this copy.
            current = await records.get(batches, batch.record.token)
            if current is None:
                raise Superseded(batch.record.token)
            batch.record.split = sorted({*batch.record.split, *current.split})
        if token not in batch.record.split:
            try:
                await self.insert(batch, table, rows, token)
                return {}
            except DataRejected as exc:
                if n == 1:
                    reason = f"rejected by ClickHouse ({table}): {exc.__cause__}"
                    log.error("entry rejected for its data", partition=batch.partition, id=ids[0].decode())
                    return {ids[0]: reason}
            # Append-only, and renews the lease: the halves may take long.
            if await records.add_split(batches, batch.record.token, token, self.ctx.lease_ms) != 1:
                raise Superseded(batch.record.token)
            batch.leased = True
            batch.record.split.append(token)
        mid = n // 2
        out: dict[bytes, str] = {}
        halves = ((slice_block(rows, 0, mid), ids[:mid]), (slice_block(rows, mid, n), ids[mid:]))
        for part_rows, part_ids in halves:
            part_token = f"{rec.token_for(stream, part_ids)}:{table}"
            out.update(await self.insert_split(batch, table, part_rows, part_ids, part_token, stream))
        return out

    async def insert(self, batch: Batch, table: str, rows: Block, token: str) -> None:
        """`rows`: the block's columns."""
        ctx = self.ctx
        settings = insert_settings(token, cluster=bool(ctx.store.cluster))
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await ctx.store.insert(table, rows, COLUMNS[table], settings, column_oriented=True)
            except Exception as exc:
                if is_view_error(exc):
                    log.error(
                        "ALERT: a materialized view refused a block its table stored; retrying the "
                        "whole block with its token (never split: the rows are in). Fix the view.",
                        table=table,
                        token=token[:12],
                        error=str(exc)[:1000],
                    )
                    ctx.faults.health.set(False, f"worker: a materialized view refuses {table} blocks")
                elif is_data_error(exc):
                    raise DataRejected() from exc
                else:
                    ctx.faults.clickhouse(ok=False, exc=exc)
                if ctx.stopping.is_set():
                    raise Abandoned(str(exc)) from exc
                attempt += 1
                metrics.retried("timeout" if isinstance(exc, TimeoutError) else "clickhouse")
                await self.heartbeat(batch)
                await ctx.sleep(backoff(attempt))
                continue
            ctx.faults.clickhouse(ok=True)
            metrics.inserted(table, len(rows[0]) if rows else 0, time.monotonic() - started)
            return

    async def heartbeat(self, batch: Batch) -> None:
        """While a batch waits, keep its entries from looking idle and its lease held."""
        ctx = self.ctx
        if time.monotonic() - self._last_heartbeat < ctx.settings.claim_idle_ms / 4000:
            return
        self._last_heartbeat = time.monotonic()
        with contextlib.suppress(*REDIS_ERRORS):
            ids = [e.id for e in batch.entries]
            if self.held is not None:
                ids += self.held(batch.partition)
            await ctx.upkeep.touch_own(stream_key(batch.partition), GROUP, ctx.consumer, rec.entries_of(ids))
            if batch.leased:
                await ctx.records.renew(batches_key(batch.partition), batch.record.token, ctx.lease_ms)
