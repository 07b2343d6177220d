"""The worker loop. (Foundation version: read a batch, insert with a dedup token, ack.
The workers issue adds write-ahead batch records, XAUTOCLAIM take-over, poison isolation,
dead letters, trimming and status.)"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket

import redis.asyncio as aioredis

from runtime.clickhouse import Store
from runtime.logs import get_logger
from runtime.redis import connect
from runtime.settings import Settings
from runtime.streams import GROUP, stream_key
from schemas.stream import FIELD, decode_event
from workers.rows import CUSTOM_COLUMNS, STATS_COLUMNS, split_rows

log = get_logger(__name__)


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Worker:
    def __init__(self, settings: Settings, store: Store, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.store = store
        self.redis = redis
        self.consumer = consumer_name()
        self.streams = [stream_key(p) for p in range(settings.stream_partitions)]
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def ensure_groups(self) -> None:
        for stream in self.streams:
            with contextlib.suppress(aioredis.ResponseError):  # BUSYGROUP: exists already
                await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)

    async def run(self) -> None:
        await self.ensure_groups()
        block_ms = max(1, self.settings.batch_ms)
        while not self._stopping.is_set():
            reply = await self.redis.xreadgroup(
                GROUP,
                self.consumer,
                {s: ">" for s in self.streams},
                count=self.settings.batch_rows,
                block=block_ms,
            )
            for stream, entries in reply or []:
                if entries:
                    await self._write(stream, entries)

    async def _write(self, stream: bytes, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        ids = [entry_id for entry_id, _ in entries]
        events = [decode_event(fields[FIELD]) for _, fields in entries]
        token = hashlib.sha256(stream + b"|" + b",".join(ids)).hexdigest()
        stats, custom = split_rows(events)
        dedup = {"deduplicate_blocks_in_dependent_materialized_views": 1}
        await self.store.insert(
            "bot_stats", stats, STATS_COLUMNS, {**dedup, "insert_deduplication_token": token + ":s"}
        )
        await self.store.insert(
            "custom_events", custom, CUSTOM_COLUMNS, {**dedup, "insert_deduplication_token": token + ":c"}
        )
        await self.redis.xack(stream, GROUP, *ids)
        log.debug("batch written", rows=len(ids))


async def run_worker(settings: Settings, store: Store) -> None:
    """Run one worker until cancelled or stopped by a signal (used standalone and embedded)."""
    redis = connect(settings)
    worker = Worker(settings, store, redis)
    try:
        await worker.run()
    finally:
        await redis.aclose()


def serve(settings: Settings) -> int:
    from runtime.migrations import migrate

    store = Store(settings)
    migrate(store)

    async def main() -> None:
        redis = connect(settings)
        worker = Worker(settings, store, redis)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        try:
            await worker.run()
        finally:
            await redis.aclose()

    try:
        asyncio.run(main())
    finally:
        store.close()
    return 0
