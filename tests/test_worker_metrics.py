"""The worker's metrics: counted at the pipeline's stage boundaries, the stream's state from the
same `partition_view` that `botpulse status` prints (so the two agree), served by
`botpulse worker` on BOTPULSE_WORKER_METRICS_PORT and by the query service for its embedded
worker."""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.request

import msgspec
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from services import free
from test_metrics import Samples, parse, value
from test_workers import (
    FAST,
    _cli,
    custom_event,
    drained,
    fast,
    fast_store,
    post,
    stats_event,
    until,
    worker_task,
)

from botpulse.embedded_worker import with_embedded_worker
from botpulse.query.app import build_app as build_query
from botpulse.runtime.health_reports import read_reports
from botpulse.runtime.metrics import Exposition
from botpulse.runtime.processes import spawn_child
from botpulse.schemas.stream import FIELD, stream_key
from botpulse.workers.metrics import stream_refresher

__all__ = ["fast", "fast_store"]  # fixtures


async def _scrape(redis, partitions: int = 1) -> Samples:  # type: ignore[no-untyped-def]
    exposition = Exposition()
    exposition.refreshers.append(stream_refresher(redis, partitions))
    body, _ = await exposition.render()
    return parse(body.decode())


def _local(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_worker_counts_each_stage(fast, fast_store, redis) -> None:  # type: ignore[no-untyped-def]
    before = {
        "read": _local("botpulse_worker_entries_read_total", source="new"),
        "stats": _local("botpulse_worker_rows_inserted_total", table="bot_stats"),
        "custom": _local("botpulse_worker_rows_inserted_total", table="custom_events"),
        "batches": _local("botpulse_worker_batch_entries_count"),
        "inserts": _local("botpulse_worker_insert_duration_seconds_count", table="bot_stats"),
        "dead": _local("botpulse_worker_dead_letters_total"),
    }
    await post(
        redis, [stats_event("m1", guilds=i) for i in range(20)] + [custom_event("m1") for _ in range(5)]
    )
    await redis.xadd(stream_key(0), {FIELD: b"\xc1 not msgpack"})
    async with worker_task(fast, fast_store):
        await drained(redis)
        await until(lambda: _dead_counted(before["dead"]), what="the dead letter counted")
    assert _local("botpulse_worker_entries_read_total", source="new") - before["read"] == 26
    assert _local("botpulse_worker_rows_inserted_total", table="bot_stats") - before["stats"] == 20
    assert _local("botpulse_worker_rows_inserted_total", table="custom_events") - before["custom"] == 5
    assert _local("botpulse_worker_batch_entries_count") - before["batches"] >= 1
    assert _local("botpulse_worker_insert_duration_seconds_count", table="bot_stats") - before["inserts"] >= 1
    assert _local("botpulse_worker_dead_letters_total") - before["dead"] == 1
    assert _local("botpulse_worker_last_insert_timestamp_seconds") > 0


async def _dead_counted(before: float) -> bool:
    return _local("botpulse_worker_dead_letters_total") > before


async def test_status_and_metrics_show_the_same_numbers(fast, fast_store, redis, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    await post(redis, [stats_event("s1", guilds=i) for i in range(7)])
    await redis.xadd(stream_key(0), {FIELD: b"junk"})
    async with worker_task(fast, fast_store):
        await drained(redis)
    await post(redis, [stats_event("s1", guilds=9) for _ in range(3)])  # unread: lag
    await asyncio.sleep(1.1)
    monkeypatch.setenv("REDIS_URL", fast.redis_url)
    (view,) = msgspec.json.decode(await asyncio.to_thread(_cli, ["status", "--json"]))["partitions"]
    samples = await _scrape(redis)
    text = await asyncio.to_thread(_cli, ["status"])

    def metric(name: str) -> float:
        return value(samples, name, partition="0")

    assert view["lag"] == 3 and metric("botpulse_stream_lag_entries") == 3
    assert metric("botpulse_stream_length_entries") == view["length"]
    assert metric("botpulse_stream_pending_entries") == view["pending"] == 0
    assert metric("botpulse_stream_dead_letter_entries") == view["dead_letters"] == 1
    assert metric("botpulse_stream_batches_in_flight") == view["batches_in_flight"]
    assert metric("botpulse_stream_rows_total") == view["rows_total"] == 7
    assert metric("botpulse_stream_dead_lettered_total") == view["dead_total"] == 1
    assert metric("botpulse_stream_recovered_batches_total") == view["recovered_batches"]
    assert metric("botpulse_stream_lost_total") == view["lost_total"]
    assert metric("botpulse_stream_last_insert_timestamp_seconds") == view["last_insert_ms"] / 1000
    # The lag in seconds is the age of the oldest unread entry, read a moment apart.
    assert 1.0 <= view["lag_s"] <= metric("botpulse_stream_lag_seconds") < view["lag_s"] + 5
    assert "lag 3 (" in text and "dead letters 1" in text


def _scrape_url(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as response:
        return parse(response.read().decode())


async def test_botpulse_worker_serves_metrics_on_its_port(fast, redis, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await post(redis, [stats_event("w1", guilds=i) for i in range(4)])
    port = free()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTPULSE_")}
    env.update(
        REDIS_URL=fast.redis_url or "",
        CLICKHOUSE_URL=f"chdb://{tmp_path / 'ch'}",  # its own engine: one process per path
        BOTPULSE_DATA_DIR=str(tmp_path),
        BOTPULSE_LOG_LEVEL="warning",
        BOTPULSE_WORKER_METRICS_PORT=str(port),
        **{f"BOTPULSE_{k.upper()}": str(v) for k, v in FAST.items()},
    )
    process = spawn_child([sys.executable, "-m", "botpulse", "worker"], env=env)
    url = f"http://127.0.0.1:{port}/metrics"
    try:

        async def stored() -> bool:
            try:
                samples = await asyncio.to_thread(_scrape_url, url)
            except OSError:
                return False
            return value(samples, "botpulse_worker_rows_inserted_total", table="bot_stats") == 4

        await until(stored, limit_s=60, what="the worker's metrics showing its rows")
        samples = await asyncio.to_thread(_scrape_url, url)
        assert value(samples, "botpulse_stream_rows_total", partition="0") == 4
        assert value(samples, "botpulse_stream_lag_entries", partition="0") == 0

        # Its health reaches Redis, where `botpulse status` reads it (issue #13).
        async def reported() -> bool:
            return any(r.ready for r in await read_reports(redis))

        await until(reported, limit_s=30, what="the worker's health report in Redis")
    finally:
        process.terminate()
        process.wait(20)
    assert process.returncode == 0
    assert await read_reports(redis) == [], "a worker that stops cleanly removes its report"


async def test_query_service_serves_its_embedded_workers_metrics(fast, fast_store, redis) -> None:  # type: ignore[no-untyped-def]
    await post(redis, [stats_event("e1", guilds=1)])
    app = with_embedded_worker(build_query(fast, fast_store))
    async with TestClient(TestServer(app)) as client:
        await drained(redis)
        response = await client.get("/metrics")
        samples = parse(await response.text())
    assert value(samples, "botpulse_stream_rows_total", partition="0") >= 1
    assert value(samples, "botpulse_stream_lag_entries", partition="0") == 0
    assert ("botpulse_worker_entries_read_total", (("source", "new"),)) in samples
