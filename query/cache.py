"""Answers of the expensive anonymous reads kept for BOTPULSE_QUERY_CACHE_S (a few seconds): the
listing, the leaderboards and uptime over a whole history. Concurrent misses of one key share one
computation, so a burst of identical requests costs one ClickHouse read, not one each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

MAX_ENTRIES = 10_000


class AnswerCache:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._values: dict[Hashable, tuple[float, Any]] = {}
        self._pending: dict[Hashable, asyncio.Future[Any]] = {}

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> Any:
        if self.ttl_s <= 0:
            return await compute()
        now = time.monotonic()
        hit = self._values.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        pending = self._pending.get(key)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # this request's own client went away
                # the computing request's client went away: compute it here instead
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            value = await compute()
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # marked retrieved: a miss nobody else awaited logs nothing
            raise
        except BaseException:
            future.cancel()  # the caller went away: whoever waits on it computes anew
            raise
        finally:
            self._pending.pop(key, None)
        if len(self._values) >= MAX_ENTRIES:
            self._values = {k: v for k, v in self._values.items() if v[0] > now}
            if len(self._values) >= MAX_ENTRIES:
                self._values.clear()
        self._values[key] = (time.monotonic() + self.ttl_s, value)
        future.set_result(value)
        return value
