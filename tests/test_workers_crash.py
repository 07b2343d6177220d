"""Workers killed for real: SIGKILL at each point of a batch, SIGTERM while posts flow.

Each worker runs in a SUBPROCESS with its own chDB directory (one engine path per process; this
pytest process never opens it). The posts go on the real Redis stream exactly as the gateway
appends them. A fresh worker process then recovers and reports the stored rows, compared with
the accepted posts by event id: none missing, none doubled, roll-ups counting each post once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from botpulse.runtime.processes import spawn_child
from botpulse.runtime.settings import Settings
from botpulse.schemas.stream import (
    FIELD,
    GROUP,
    CustomPayload,
    StatsPayload,
    StreamEvent,
    batches_key,
    encode_entry,
    encode_event,
    stream_key,
    worker_stats_key,
)

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().parent / "worker_crash_driver.py"
POSTS = 300


def _env(settings: Settings, chdb_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CLICKHOUSE_URL": f"chdb://{chdb_dir}",
        "REDIS_URL": settings.redis_url or "",
        "BOTPULSE_CLICKHOUSE_DATABASE": settings.clickhouse_database,
        "BOTPULSE_DATA_DIR": str(chdb_dir.parent),
        "BOTPULSE_BATCH_MS": "30",
        "BOTPULSE_BATCH_ROWS": "40",
        "BOTPULSE_INSERT_TIMEOUT_S": "0.2",
        "BOTPULSE_CLAIM_IDLE_MS": "600",
        "BOTPULSE_LOG_FORMAT": "json",
        "BOTPULSE_LOG_LEVEL": "info",
    }


def _events(n: int) -> list[StreamEvent]:
    out: list[StreamEvent] = []
    for i in range(n):
        bot = f"crash{i % 4}"
        payload = (
            CustomPayload(type="command", value1=str(i))
            if i % 3 == 0
            else StatsPayload(guilds=i, cpu=0.25, custom_metrics={"queue": float(i)} if i % 2 else {})
        )
        out.append(StreamEvent(uuid.uuid4().hex, int(time.time() * 1000), bot, "acc", payload))
    return out


async def _post(redis: aioredis.Redis, events: list[StreamEvent], per_entry: int = 1) -> None:
    """`per_entry` > 1: as a gateway appends posts of one script call, several to an entry."""
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(0, len(events), per_entry):
            value = encode_entry([encode_event(e) for e in events[i : i + per_entry]])
            pipe.xadd(stream_key(0), {FIELD: value})
        await pipe.execute()


async def _consumers(redis: aioredis.Redis) -> int:
    try:
        return len(await redis.xinfo_consumers(stream_key(0), GROUP))
    except aioredis.ResponseError:
        return 0


async def _wait_for_consumer(redis: aioredis.Redis, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(1500):  # bounded: 30 s for the child to import, open chDB and migrate
        if await _consumers(redis) or proc.poll() is not None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the worker never joined the consumer group")


async def _flow(
    redis: aioredis.Redis, events: list[StreamEvent], until_dead: subprocess.Popen[bytes], per_entry: int = 1
) -> int:
    """Post in small chunks while the worker runs; returns how many were posted before it died."""
    posted = 0
    while posted < len(events) and until_dead.poll() is None:
        await _post(redis, events[posted : posted + 10], per_entry)
        posted += 10
        await asyncio.sleep(0.01)
    return posted


def _drain_and_report(settings: Settings, chdb_dir: Path) -> dict:
    # A different batch size than the dead worker's: recovery must follow the batch record, not
    # happen to re-form the same batch (which would get the same token by luck).
    proc = subprocess.run(
        [sys.executable, str(DRIVER), "drain"],
        env={**_env(settings, chdb_dir), "BOTPULSE_BATCH_ROWS": "7"},
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def _assert_exactly_once(report: dict, events: list[StreamEvent]) -> None:
    assert report["drained"] is True
    stats = sorted(e.event_id for e in events if isinstance(e.payload, StatsPayload))
    custom = sorted(e.event_id for e in events if isinstance(e.payload, CustomPayload))
    assert sorted(report["bot_stats"]) == stats, "stats rows missing or unexpected"
    assert sorted(report["custom_events"]) == custom, "custom rows missing or unexpected"
    assert [k for k, n in report["bot_stats"].items() if n != 1] == [], "stats rows doubled"
    assert [k for k, n in report["custom_events"].items() if n != 1] == [], "custom rows doubled"
    assert report["rollup_posts"] == [len(stats)] * 2, "roll-ups count a post more than once"


@pytest.mark.parametrize(
    ("point", "per_entry"),
    [("before", 1), ("during", 1), ("after", 1), ("before", 5), ("during", 5), ("after", 5)],
)
async def test_sigkill_at_each_point_of_a_batch_loses_and_doubles_nothing(
    point, per_entry, settings, redis, tmp_path_factory
):
    """`per_entry` 5: entries of five events each (posts the gateway appended in one call)."""
    chdb_dir = tmp_path_factory.mktemp(f"crash-{point}-{per_entry}") / "clickhouse"
    events = _events(POSTS)
    victim = spawn_child(
        [sys.executable, str(DRIVER), "kill", point, "3"],
        env=_env(settings, chdb_dir),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await _wait_for_consumer(redis, victim)
        posted = await _flow(redis, events, victim, per_entry)
        await asyncio.to_thread(victim.wait, 60)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    stderr = victim.stderr.read().decode() if victim.stderr else ""
    assert victim.returncode == -signal.SIGKILL, stderr[-3000:]
    # The dead worker left its batch behind: the record and its pending entries. Two records
    # when the next batch's insert had started before this one's commit (workers/pipeline.py).
    assert 1 <= await redis.hlen(batches_key(0)) <= 2
    assert (await redis.xpending(stream_key(0), GROUP))["pending"] > 0
    await _post(redis, events[posted:], per_entry)  # posts keep coming while nobody works

    report = await asyncio.to_thread(_drain_and_report, settings, chdb_dir)
    _assert_exactly_once(report, events)
    stats = await redis.hgetall(worker_stats_key(0))
    assert int(stats[b"recovered_total"]) >= 1  # the dead worker's batch went through its record
    assert int(stats.get(b"lost_total", 0)) == 0
    assert await redis.hlen(batches_key(0)) == 0


async def test_sigterm_flushes_acks_and_exits_while_posts_flow(settings, redis, tmp_path_factory):
    """`botpulse worker` on SIGTERM stops reading, writes and acknowledges what it holds, retires
    its consumer and exits 0 within 10 s; nothing it read is left pending."""
    chdb_dir = tmp_path_factory.mktemp("sigterm") / "clickhouse"
    events = _events(POSTS)
    worker = spawn_child(
        [sys.executable, "-m", "botpulse", "worker"],
        env=_env(settings, chdb_dir),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await _wait_for_consumer(redis, worker)
        await _post(redis, events[:150])
        posting = asyncio.create_task(_post_slowly(redis, events[150:]))
        await asyncio.sleep(0.3)
        worker.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(worker.wait, 10)  # the bound, not a speed claim
        await posting
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    stderr = worker.stderr.read().decode() if worker.stderr else ""
    assert rc == 0, stderr[-3000:]
    assert (await redis.xpending(stream_key(0), GROUP))["pending"] == 0
    assert await redis.hlen(batches_key(0)) == 0
    assert await _consumers(redis) == 0  # retired: it owned nothing
    assert int((await redis.hgetall(worker_stats_key(0)))[b"rows_total"]) > 0

    report = await asyncio.to_thread(_drain_and_report, settings, chdb_dir)
    _assert_exactly_once(report, events)


async def _post_slowly(redis: aioredis.Redis, events: list[StreamEvent]) -> None:
    for start in range(0, len(events), 10):
        await _post(redis, events[start : start + 10])
        await asyncio.sleep(0.02)
