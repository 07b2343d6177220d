"""What every stage of the worker shares: its settings and parts, its consumer name, and how it
meets faults (one backoff, one place that logs a part going down or coming back, the health a
composer shows on `/readyz`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from dataclasses import dataclass, field

import msgspec
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.connection import AbstractConnection as Connection
from redis.connection import HiredisRespSerializer
from redis.typing import EncodableT

from botpulse.runtime.clickhouse import Store
from botpulse.runtime.health import Health
from botpulse.runtime.logs import get_logger
from botpulse.runtime.redis import connect
from botpulse.runtime.settings import Settings
from botpulse.workers import batchlog as rec
from botpulse.workers.upkeep import Upkeep

log = get_logger("botpulse.workers")

_BACKOFF_BASE_S = 0.2
_BACKOFF_CAP_S = 10.0

# Every failure Redis can answer with (error replies such as OOM, READONLY, MISCONF, BUSY,
# EXECABORT, LOADING) or that reaching it can raise: each means "try again later", never "this
# entry is bad", so none of them may stop the worker or count against an entry.
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.RedisError,)


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def worker_redis(settings: Settings) -> aioredis.Redis:
    """The worker's Redis client, with `BOTPULSE_WORKER_REDIS_TIMEOUT_MS` as its socket timeout
    (its commands carry whole batches); a command that times out anyway is safe (the entries
    stay pending and are recovered). Its commands are packed by hiredis (`_hiredis_packed`)."""
    redis = connect(msgspec.structs.replace(settings, redis_timeout_ms=settings.worker_redis_timeout_ms))
    pool = redis.connection_pool
    pool.connection_class = _hiredis_packed(pool.connection_class)
    return redis


def _hiredis_packed(base: type[Connection]) -> type[Connection]:
    """`base` (whatever connection class the URL chose: TCP, TLS, Unix socket) packing commands
    with redis-py's hiredis serializer, the one its synchronous client uses, instead of the asyncio
    client's Python packer, which joins the command's bytes anew for every argument: an XACK of
    a batch of single-event entries (10,000 ids) cost 12.6 ms to pack in Python, 2.9 with hiredis;
    the bytes are the same."""
    serializer = HiredisRespSerializer()

    class Packed(base):  # type: ignore[valid-type,misc]
        def pack_command(self, *args: EncodableT) -> list[bytes]:
            return serializer.pack(*args)

    Packed.__name__ = Packed.__qualname__ = f"HiredisPacked{base.__name__}"
    return Packed


def backoff(attempt: int) -> float:
    cap = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** min(max(attempt - 1, 0), 10))
    return random.uniform(cap / 2, cap)  # jitter: workers that failed together retry apart


@dataclass
class Faults:
    """The state of the two backends as this worker last met them. A change is logged once
    (never per retry) and mirrored into `health`."""

    health: Health
    redis_ok: bool = True
    clickhouse_ok: bool = True
    last_error: str = ""

    def redis(self, *, ok: bool, exc: BaseException | None = None) -> None:
        if not ok:
            self.last_error = f"redis: {type(exc).__name__}: {exc}"
        if ok != self.redis_ok:
            self.redis_ok = ok
            if ok:
                log.info("redis reachable again")
            else:
                log.error("redis error; retrying with backoff, entries stay pending", error=self.last_error)
        self._mirror()

    def clickhouse(self, *, ok: bool, exc: BaseException | None = None) -> None:
        if not ok:
            self.last_error = f"clickhouse: {exc}"
        if ok != self.clickhouse_ok:
            self.clickhouse_ok = ok
            if ok:
                log.info("clickhouse reachable again; draining the backlog")
            else:
                log.error(
                    "clickhouse unreachable; retrying with backoff, entries stay pending", error=str(exc)
                )
        self._mirror()

    def _mirror(self) -> None:
        ok = self.redis_ok and self.clickhouse_ok
        self.health.set(ok, "" if ok else f"worker backing off: {self.last_error}"[:500])


@dataclass
class Context:
    settings: Settings
    store: Store
    redis: aioredis.Redis
    consumer: str
    records: rec.Records
    upkeep: Upkeep
    faults: Faults
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def partitions(self) -> list[int]:
        return list(range(self.settings.stream_partitions))

    @property
    def lease_ms(self) -> int:
        # A record's writer holds its lease as long as its entries are kept from looking idle:
        # past this, the writer is taken for dead and a recovery may start.
        return self.settings.claim_idle_ms

    async def sleep(self, seconds: float) -> None:
        """Sleep, cut short by a stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)
