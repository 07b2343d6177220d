"""The gateway when Redis hangs or is gone (its own valkey-server, so the shared one stays up),
and `botpulse gateway --workers N` as real processes sharing a port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from ingest_server import GatewayServer

from botpulse.registry import index
from botpulse.registry.catalog import Bot, create_account, now, write_bot
from botpulse.runtime.embedded import EmbeddedRedis
from botpulse.runtime.processes import free_port, pid_alive
from botpulse.schemas.stream import entry_events, partition_of, stream_key


async def test_redis_hanging_or_gone_is_503_with_retry_after(make_settings, store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = EmbeddedRedis(tmp_path / "redis").start()
    own = aioredis.Redis.from_url(server.url)
    try:
        account, key = await create_account(store, own, "fail")
        await write_bot(store, own, Bot("77", account.id, "Bot", None, False, 10, None, now()))
        await own.set(index.READY_KEY, "1")
        settings = make_settings(redis_url=server.url, redis_timeout_ms=200)
        async with TestClient(GatewayServer(settings)) as client:
            ok = await client.post("/v1/bot/77/custom", json={"type": "t"}, headers={"Authorization": key})
            assert ok.status == 200

            assert server.proc is not None
            server.proc.send_signal(signal.SIGSTOP)  # Redis hangs: no answer, no error
            try:
                for path, body in (("/v1/bot/77", {"guilds": 1}), ("/v1/bot/77/custom", {"type": "t"})):
                    resp = await client.post(path, json=body, headers={"Authorization": key})
                    assert resp.status == 503
                    assert int(resp.headers["Retry-After"]) >= 1
                    assert "message" in await resp.json()
                # Many at once (some wait behind the writes in flight): every one fails fast.
                burst = await asyncio.gather(
                    *(
                        client.post("/v1/bot/77/custom", json={"type": "t"}, headers={"Authorization": key})
                        for _ in range(12)
                    )
                )
                assert [r.status for r in burst] == [503] * 12
                assert (await client.get("/readyz")).status == 503
                assert (await client.get("/healthz")).status == 200
            finally:
                server.proc.send_signal(signal.SIGCONT)

            # Back: posts are accepted again (the registry cache refills, the pool reconnects).
            deadline = time.monotonic() + 10
            status = 0
            while time.monotonic() < deadline and status != 200:
                resp = await client.post(
                    "/v1/bot/77/custom", json={"type": "t"}, headers={"Authorization": key}
                )
                status = resp.status
            assert status == 200

            server.stop()  # Redis gone: connection refused
            resp = await client.post("/v1/bot/77/custom", json={"type": "t"}, headers={"Authorization": key})
            assert resp.status == 503
            assert int(resp.headers["Retry-After"]) >= 1
    finally:
        server.stop()
        with contextlib.suppress(Exception):
            await own.aclose()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "gateway exited during start-up"
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/healthz", timeout=1) as resp:
            if resp.status == 200:
                return
        time.sleep(0.1)
    raise AssertionError("gateway did not answer /healthz")


def _gone(pid: int) -> bool:
    try:
        return not pid_alive(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _listeners(pid: int, port: int) -> bool:
    return any(
        c.status == psutil.CONN_LISTEN and c.laddr.port == port
        for c in psutil.Process(pid).net_connections(kind="tcp")
    )


def _run_workers(env: dict[str, str], port: int, key: str, stop: signal.Signals) -> None:
    """Start `--workers 2`, post through fresh connections, stop the parent, see the child go."""
    parent = subprocess.Popen(
        [sys.executable, "-m", "botpulse", "gateway", "--workers", "2", "--port", str(port)], env=env
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, parent)
        deadline = time.monotonic() + 30
        children: list[psutil.Process] = []
        while time.monotonic() < deadline:
            children = psutil.Process(parent.pid).children()
            if children and _listeners(children[0].pid, port):
                break
            time.sleep(0.1)
        assert len(children) == 1
        assert _listeners(parent.pid, port) and _listeners(children[0].pid, port)

        # Fresh connections: the kernel hands them to either process; every post lands.
        for i in range(20):
            request = urllib.request.Request(
                f"{url}/v1/bot/88/custom",
                data=f'{{"type": "t", "value1": {i}}}'.encode(),
                headers={"Authorization": key, "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=5) as resp:
                assert resp.status == 200

        child = children[0].pid
        parent.send_signal(stop)
        parent.wait(20)
        if stop == signal.SIGTERM:
            assert parent.returncode == 0  # a clean stop, not a crash
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not _gone(child):
            time.sleep(0.1)
        assert _gone(child)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
async def test_workers_share_the_port_and_die_with_the_parent(settings, store, redis, tmp_path, stop) -> None:  # type: ignore[no-untyped-def]
    account, key = await create_account(store, redis, "procs")
    await write_bot(store, redis, Bot("88", account.id, "Bot", None, False, 10, None, now()))
    await redis.set(index.READY_KEY, "1")
    env = dict(
        os.environ,
        REDIS_URL=settings.redis_url or "",
        BOTPULSE_DATA_DIR=str(tmp_path),  # its own directory: the gateway never opens ClickHouse
        BOTPULSE_LOG_LEVEL="warning",
    )
    await asyncio.to_thread(_run_workers, env, free_port(), key, stop)
    raw = await redis.xrange(stream_key(partition_of("88", settings.stream_partitions)))
    events = [e for _, f in raw for e in entry_events(f[b"e"])]
    assert sorted(int(e.payload.value1) for e in events) == list(range(20))  # type: ignore[union-attr, arg-type]


def _post(url: str, key: str) -> int:
    request = urllib.request.Request(
        f"{url}/v1/bot/66",
        data=b'{"guilds": 5}',
        headers={"Authorization": key, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _terminate_with_a_post_in_flight(env: dict[str, str], port: int, key: str, redis: EmbeddedRedis) -> dict:
    """Start a gateway, freeze Redis under a post, SIGTERM the gateway, thaw Redis."""
    url = f"http://127.0.0.1:{port}"
    seen: dict[str, object] = {}
    gateway = subprocess.Popen([sys.executable, "-m", "botpulse", "gateway", "--port", str(port)], env=env)
    assert redis.proc is not None
    try:
        _wait_healthy(url, gateway)
        seen["warm"] = _post(url, key)  # the registry cache holds the key from here on
        redis.proc.send_signal(signal.SIGSTOP)  # the next append waits in Redis
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(_post, url, key)
            time.sleep(0.5)
            gateway.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=2)
                seen["accepting"] = True
            except OSError:
                seen["accepting"] = False
            redis.proc.send_signal(signal.SIGCONT)
            seen["in_flight"] = in_flight.result(timeout=20)
        # A guard against a hang, not a time limit: with test files running side by side the
        # exit (5 s grace for connections, then closing Redis and the appender) once took > 20 s.
        seen["exit"] = gateway.wait(60)
    finally:
        redis.proc.send_signal(signal.SIGCONT)
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
    return seen


async def test_sigterm_stops_accepting_answers_the_post_in_flight_and_exits_cleanly(store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = EmbeddedRedis(tmp_path / "redis").start()
    own = aioredis.Redis.from_url(server.url)
    env = dict(
        os.environ,
        REDIS_URL=server.url,
        BOTPULSE_DATA_DIR=str(tmp_path),
        BOTPULSE_LOG_LEVEL="warning",
        BOTPULSE_REDIS_TIMEOUT_MS="5000",  # the post waits for the frozen Redis instead of a 503
    )
    try:
        account, key = await create_account(store, own, "term")
        await write_bot(store, own, Bot("66", account.id, "Bot", None, False, 10, None, now()))
        await own.set(index.READY_KEY, "1")
        seen = await asyncio.to_thread(_terminate_with_a_post_in_flight, env, free_port(), key, server)
        assert seen == {"warm": 204, "accepting": False, "in_flight": 204, "exit": 0}
        # Answered only after Redis took it: both posts are in the stream.
        assert await own.xlen(stream_key(partition_of("66", 1))) == 2
    finally:
        await own.aclose()
        server.stop()
