"""What the Redis server offers the worker's write-ahead records, probed once per client.

- **Durability before the insert.** A batch record (and the group's delivery state before it in
  the AOF) must survive Redis losing its last second, or the entries are read again under a new
  token and stored twice. Where the server can confirm it, the record's write is followed, on
  the same connection, by `WAITAOF 1 R timeout` (Redis/Valkey >= 7.2 with AOF on: fsynced
  locally, and by R replicas when `BOTPULSE_WORKER_WAIT_REPLICAS` = R > 0) or `WAIT R timeout`
  (no AOF, or an older server, with R > 0). Not confirmed in time: `NotDurable`, a Redis fault
  like any other: backoff, then the record is written and waited for again (same token), and
  nothing is inserted meanwhile. docs/workers.md, "Redis set-ups", says what holds where.
- **Scripts that free memory run on a full Redis.** From Redis 7 scripts declare flags; the
  worker's record, commit and dead-letter scripts declare `allow-oom` (their writes are what
  lets it acknowledge and trim). Redis 6.2 has no flags: they run there as before.
"""

from __future__ import annotations

import redis.asyncio as aioredis
import redis.exceptions
from redis.commands.core import AsyncScript

from botpulse.runtime.logs import get_logger

log = get_logger("botpulse.workers")

ALLOW_OOM = "#!lua flags=allow-oom\n"


class NotDurable(redis.exceptions.RedisError):
    """Redis did not confirm a batch record as durable in time: nothing may be inserted yet."""


def _version(text: str) -> tuple[int, int]:
    parts = [*text.split("."), "0", "0"][:2]
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return 0, 0


class Durability:
    def __init__(self, redis: aioredis.Redis, *, replicas: int = 0, timeout_ms: int = 2500) -> None:
        self.redis = redis
        self.replicas = replicas
        self.timeout_ms = max(1, timeout_ms)
        self.version: tuple[int, int] | None = None
        self.aof = False

    async def probe(self) -> None:
        if self.version is not None:
            return
        server = await self.redis.info("server")
        persistence = await self.redis.info("persistence")
        raw = server.get("redis_version", "0.0")
        self.version = _version(raw.decode() if isinstance(raw, bytes) else str(raw))
        self.aof = int(persistence.get("aof_enabled", 0)) == 1
        log.info("batch records made durable before each insert by " + self.describe())

    def describe(self) -> str:
        if self.waitaof:
            replicas = f" + {self.replicas} replicas" if self.replicas else ""
            return f"WAITAOF 1 {self.replicas} (AOF fsync{replicas})"
        if self.replicas:
            return f"WAIT {self.replicas} (replicas hold it in memory; no AOF fsync confirmed)"
        return (
            "nothing beyond the server's own appendfsync policy (no AOF, or Redis < 7.2, no replicas asked)"
        )

    @property
    def script_flags(self) -> str:
        return ALLOW_OOM if self.version is not None and self.version >= (7, 0) else ""

    @property
    def waitaof(self) -> bool:
        return self.aof and self.version is not None and self.version >= (7, 2)

    def queue_wait(self, pipe: aioredis.client.Pipeline) -> bool:
        """Queue the wait behind the record's write on `pipe`; False when there is none."""
        if self.waitaof:
            pipe.execute_command("WAITAOF", 1, self.replicas, self.timeout_ms)
            return True
        if self.replicas:
            pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
            return True
        return False

    def check(self, reply: object) -> None:
        if isinstance(reply, redis.exceptions.ResponseError):
            if "appendonly" in str(reply).lower():  # AOF switched off at runtime: ask again
                self.version = None
            raise NotDurable(f"batch record not confirmed durable: {reply}")
        if self.waitaof:
            local, replicas = (int(x) for x in reply)  # type: ignore[union-attr]
            if local >= 1 and replicas >= self.replicas:
                return
            raise NotDurable(
                f"WAITAOF confirmed {local} local fsync(s), {replicas} of {self.replicas} replica(s) "
                f"within {self.timeout_ms} ms"
            )
        if int(reply) < self.replicas:  # type: ignore[call-overload]
            raise NotDurable(f"WAIT: {reply} of {self.replicas} replica(s) within {self.timeout_ms} ms")


class Script:
    """A Lua script whose writes let the worker acknowledge (free memory): registered with the
    server's flags once they are known (allow-oom from Redis 7)."""

    def __init__(self, redis: aioredis.Redis, durability: Durability, body: str) -> None:
        self.redis = redis
        self.durability = durability
        self.body = body
        self._script: AsyncScript | None = None

    async def __call__(self, keys: list[str], args: list[object], client: object = None) -> object:
        if self._script is None:
            await self.durability.probe()
            self._script = self.redis.register_script(self.durability.script_flags + self.body)
        return await self._script(keys=keys, args=args, client=client)  # type: ignore[arg-type]
