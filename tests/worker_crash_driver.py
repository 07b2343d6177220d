"""Runs the real worker in its own process (own chDB directory) for tests/test_workers_crash.py.

    python tests/worker_crash_driver.py kill before|during|after N
        run the worker; on its N-th batch, SIGKILL this process at the chosen point:
        before  - the batch record is written, nothing inserted yet
        during  - bot_stats inserted, custom_events not yet (the batch's insert is half done)
        after   - every table inserted, the XACK not sent
    python tests/worker_crash_driver.py drain
        run the worker until every entry is delivered and acknowledged (taking over the dead
        worker's entries after BOTPULSE_CLAIM_IDLE_MS), stop it gracefully, then print the stored
        rows as JSON on stdout.

Settings come from the environment like any service. The kill points wrap the real Worker's
stages here, in the test driver: production code has no test hooks.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from botpulse.runtime.clickhouse import Store
from botpulse.runtime.logs import configure_logging
from botpulse.runtime.migrations import migrate
from botpulse.runtime.redis import connect
from botpulse.runtime.settings import load_settings
from botpulse.schemas.stream import GROUP, batches_key, stream_key
from botpulse.workers.batch import Batch
from botpulse.workers.pipeline import Worker
from botpulse.workers.rows import CUSTOM_TABLE, Row


def die() -> None:
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class KillingWorker(Worker):
    def __init__(self, *args, point: str, at_batch: int, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.point = point
        self.at_batch = at_batch
        self.batches = 0
        insert, commit = self.writer.insert, self.committer.commit

        async def killing_insert(batch: Batch, table: str, rows: list[Row], token: str) -> None:
            if self.point == "during" and self.batches == self.at_batch and table == CUSTOM_TABLE:
                die()
            await insert(batch, table, rows, token)

        async def killing_commit(batch, settlement):  # type: ignore[no-untyped-def]
            if self.point == "after" and self.batches == self.at_batch:
                die()
            await commit(batch, settlement)

        self.writer.insert = killing_insert  # type: ignore[method-assign]
        self.committer.commit = killing_commit  # type: ignore[method-assign]

    async def process(self, batch: Batch) -> None:
        self.batches += 1
        if self.point == "before" and self.batches == self.at_batch:
            die()
        await super().process(batch)


async def drained(worker: Worker) -> bool:
    redis = worker.redis
    for p in worker.partitions:
        groups = await redis.xinfo_groups(stream_key(p))
        group = next((g for g in groups if g["name"] == GROUP.encode()), None)
        if group is None or group["pending"] or group["lag"] or await redis.hlen(batches_key(p)):
            return False
    return True


async def main(argv: list[str]) -> int:
    settings = load_settings()
    configure_logging(settings)
    store = Store(settings)
    migrate(store)
    redis = connect(settings)
    try:
        if argv[0] == "kill":
            worker: Worker = KillingWorker(settings, store, redis, point=argv[1], at_batch=int(argv[2]))
            await worker.run()
            return 3  # never reached when the kill point is hit
        worker = Worker(settings, store, redis)
        task = asyncio.create_task(worker.run())
        for _ in range(3000):  # bounded: 60 s
            await asyncio.sleep(0.02)
            if task.done() or await drained(worker):
                break
        worker.stop()
        await task
        report = {
            table: {
                event_id: count
                for event_id, count in store.query_rows(
                    f"SELECT event_id, count() FROM {table} GROUP BY event_id"
                )
            }
            for table in ("bot_stats", "custom_events")
        }
        report["rollup_posts"] = [
            store.query_rows(f"SELECT sum(posts) FROM {t}")[0][0] for t in ("bot_stats_1h", "bot_stats_1d")
        ]
        report["drained"] = await drained(worker)
        print(json.dumps(report))
        return 0
    finally:
        await redis.aclose()
        store.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
