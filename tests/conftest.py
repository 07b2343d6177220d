"""Real parts for every test: a real Redis and a real ClickHouse engine.

By default both are embedded: the bundled valkey-server on a free 127.0.0.1 port, and chDB
in a temporary directory (one engine path per process, so every test gets its own database in
it instead). `BOTPULSE_TEST_REDIS_URL` / `BOTPULSE_TEST_CLICKHOUSE_URL` point the same tests at
real servers; with neither set and a Docker engine reachable, testcontainers starts them.
`BOTPULSE_TEST_CHAOS_LONG=1` runs the chaos suite (tests/chaos/) in its long form.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import msgspec
import pytest
import redis.asyncio as aioredis

from botpulse.runtime.clickhouse import Store
from botpulse.runtime.embedded import EmbeddedRedis
from botpulse.runtime.migrations import migrate
from botpulse.runtime.settings import Settings, load_settings


def _docker_reachable() -> bool:
    try:
        import docker  # type: ignore[import-not-found]

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("BOTPULSE_TEST_REDIS_URL"):
        # Tests flush their Redis (and some simulate its data loss with FLUSHALL): one server
        # cannot serve test files running side by side.
        if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
            pytest.fail("BOTPULSE_TEST_REDIS_URL is one server for all tests: run `make test TEST_WORKERS=0`")
        yield url
        return
    if os.environ.get("BOTPULSE_TEST_DOCKER") != "0" and _docker_reachable():
        from testcontainers.redis import RedisContainer  # type: ignore[import-not-found]

        with RedisContainer("redis:7-alpine") as container:
            host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
            yield f"redis://{host}:{port}/0"
        return
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="session")
def clickhouse_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("BOTPULSE_TEST_CLICKHOUSE_URL"):
        yield url
        return
    if os.environ.get("BOTPULSE_TEST_DOCKER") != "0" and _docker_reachable():
        from testcontainers.clickhouse import ClickHouseContainer  # type: ignore[import-not-found]

        with ClickHouseContainer("clickhouse/clickhouse-server:24.8") as container:
            host, port = container.get_container_host_ip(), container.get_exposed_port(8123)
            yield f"http://{container.username}:{container.password}@{host}:{port}"
        return
    yield f"chdb://{tmp_path_factory.mktemp('chdb')}"


@pytest.fixture
def make_settings(
    redis_url: str, clickhouse_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Settings]:
    """Settings for this test: its own ClickHouse database, the shared Redis (flushed per test)."""
    database = f"t_{uuid.uuid4().hex[:12]}"
    data_dir = str(tmp_path_factory.mktemp("data"))

    def make(**overrides: object) -> Settings:
        base = load_settings(
            {},
            clickhouse_url=clickhouse_url,
            redis_url=redis_url,
            clickhouse_database=database,
            data_dir=data_dir,
            env="dev",
            log_format="console",
            log_level="warning",
        )
        return msgspec.structs.replace(base, **overrides) if overrides else base

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    store = Store(settings)
    migrate(store)
    yield store
    with contextlib.suppress(Exception):
        store.command_sync(f"DROP DATABASE IF EXISTS `{settings.clickhouse_database}`")
    store.close()


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(settings.redis_url)  # type: ignore[arg-type]
    await client.flushall()
    yield client
    await client.aclose()


_HANG_DUMP_BEFORE_S = 20  # before pytest-timeout's own limit, which dumps only threads


@pytest.fixture(autouse=True)
def _dump_tasks_before_the_timeout(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that hangs in `await` shows only `select` in pytest-timeout's thread dump; this
    prints every pending asyncio task's stack shortly before, so the awaited thing is named."""
    import asyncio
    import gc
    import sys
    import threading

    limit = request.config.getoption("timeout", None) or request.config.getini("timeout")
    seconds = float(limit) - _HANG_DUMP_BEFORE_S if limit else 0
    if seconds <= 0:
        yield
        return

    def dump() -> None:
        loops = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop) and o.is_running()]

        def print_tasks() -> None:
            for task in asyncio.all_tasks():
                print(f"--- pending task {task.get_name()}", file=sys.stderr)
                task.print_stack(file=sys.stderr)

        for loop in loops:
            loop.call_soon_threadsafe(print_tasks)

    timer = threading.Timer(seconds, dump)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
