"""The chaos suite's worker process: the real `Worker` (workers/pipeline.py), N instances sharing one
ClickHouse engine in this process, driven over stdin.

    python tests/chaos/worker_driver.py CONTROL_DIR INSTANCES

chDB allows one engine per process and one process per data directory, so on the embedded
engine several worker *processes* cannot share a table; the instances that share the consumer
group here are in-process (each its own consumer name and Redis client), and the whole process
is what the tests SIGKILL and restart. Against a ClickHouse server the tests start several of
these processes instead.

Commands, one per line on stdin, one JSON line answered on stdout:
    scale N       run N instances (new ones join, surplus ones stop gracefully: flush, ack, retire)
    count BOT     what ClickHouse holds for that bot's custom events (value1 -> rows, rows,
                  distinct event ids)
    ping          {"ok": true} once the instances run

Faults, switched by files in CONTROL_DIR (test-side wrappers of the real Store; production code
has no test hooks):
    clickhouse-down   every insert fails as a connection failure would (the worker backs off and
                      retries, entries stay pending)
    poison            a custom_events block holding a value1 starting with "poison-" is refused
                      as ClickHouse refuses a type mismatch (code 53): the worker isolates it
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from botpulse.runtime.clickhouse import Store
from botpulse.runtime.health import Health
from botpulse.runtime.health_reports import report_forever
from botpulse.runtime.logs import configure_logging, get_logger
from botpulse.runtime.migrations import migrate
from botpulse.runtime.settings import load_settings
from botpulse.workers.context import consumer_name, worker_redis
from botpulse.workers.pipeline import Worker
from botpulse.workers.rows import CUSTOM_TABLE

log = get_logger("chaos-driver")


class FaultyStore(Store):
    """The real Store; an insert first looks at the control directory."""

    control: Path

    def insert_sync(
        self,
        table: str,
        rows: Sequence[Sequence[Any]],
        columns: Sequence[str],
        settings: dict[str, Any] | None = None,
        column_oriented: bool = False,
    ) -> None:
        if (self.control / "clickhouse-down").exists():
            raise OperationalError("injected: ClickHouse unreachable (connection refused)")
        if table == CUSTOM_TABLE and (self.control / "poison").exists():
            values = rows[list(columns).index("value1")] if column_oriented else [r[4] for r in rows]
            if any(isinstance(v, str) and v.startswith("poison-") for v in values):
                raise DatabaseError(
                    "Code: 53. DB::Exception: injected: Type mismatch in value1. (TYPE_MISMATCH)"
                )
        super().insert_sync(table, rows, columns, settings, column_oriented)


class Instance:
    def __init__(self, index: int, settings, store: Store) -> None:  # type: ignore[no-untyped-def]
        self.index = index
        name = f"{consumer_name()}-{index}"  # each in-process instance its own consumer
        self.health = Health()
        self.redis = worker_redis(settings)
        self.worker = Worker(settings, store, self.redis, consumer=name, health=self.health)
        self.task = asyncio.create_task(self.worker.run(), name=name)
        # As the embedded stack does (botpulse/embedded_worker.py): `botpulse status` shows it.
        self.reporting = asyncio.create_task(report_forever(self.redis, name, self.health))

    async def stop(self) -> None:
        self.worker.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 15)
        self.reporting.cancel()
        with contextlib.suppress(BaseException):
            await self.reporting
        await self.redis.aclose()


def count(store: Store, bot: str) -> dict[str, Any]:
    values = store.query_rows(
        f"SELECT value1, count() FROM {CUSTOM_TABLE} WHERE bot_id = {{bot:String}} GROUP BY value1",
        {"bot": bot},
    )
    rows, ids = store.query_rows(
        f"SELECT count(), uniqExact(event_id) FROM {CUSTOM_TABLE} WHERE bot_id = {{bot:String}}", {"bot": bot}
    )[0]
    return {"values": {v: n for v, n in values}, "rows": rows, "event_ids": ids}


async def main(control: Path, instances: int) -> None:
    settings = load_settings()
    configure_logging(settings)
    FaultyStore.control = control
    store = FaultyStore(settings)
    migrate(store)
    running: list[Instance] = []
    next_index = 0
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def scale(n: int) -> None:
        nonlocal next_index
        while len(running) < n:
            running.append(Instance(next_index, settings, store))
            next_index += 1
        while len(running) > n:
            await running.pop().stop()

    def answer(obj: object) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    deaths: list[str] = []
    closing: set[asyncio.Task[None]] = set()

    async def watch() -> None:
        # What an orchestrator does for a worker process that exits: start it again (same
        # consumer name, as a restarted pod keeps its host name). Every death is reported: a
        # worker must survive Redis and ClickHouse faults (issue #13, defect 1).
        while True:
            await asyncio.sleep(0.5)
            for k, instance in enumerate(running):
                if instance.task.done():
                    exc = instance.task.exception() if not instance.task.cancelled() else None
                    deaths.append(f"{instance.task.get_name()}: {exc!r}")
                    log.error(
                        "worker instance died; restarting it",
                        instance=instance.task.get_name(),
                        error=repr(exc),
                    )
                    instance.reporting.cancel()
                    running[k] = Instance(instance.index, settings, store)  # no await in this loop
                    closing.add(asyncio.create_task(instance.redis.aclose()))

    await scale(instances)
    watcher = asyncio.create_task(watch())
    try:
        while line := (await reader.readline()).decode().strip():
            verb, _, arg = line.partition(" ")
            if verb == "scale":
                await scale(int(arg))
                answer({"instances": len(running)})
            elif verb == "count":
                answer(await loop.run_in_executor(None, count, store, arg))
            elif verb == "ping":
                answer({"ok": True, "deaths": deaths, "instances": len(running)})
            else:
                answer({"error": f"unknown command {verb!r}"})
    finally:
        watcher.cancel()
        await scale(0)
        store.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
    os._exit(0)
