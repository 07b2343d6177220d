"""What a query app holds for its handlers — the settings, the ClickHouse store, Redis and the
registry cache, under their app keys — and the failures of those backends. `query.app` sets the
keys up; its handlers and `query.accounts_api`'s read them from `request.app`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis.asyncio as aioredis
from aiohttp import web
from clickhouse_connect.driver.exceptions import OperationalError
from redis.exceptions import RedisError

from botpulse.query.cache import AnswerCache
from botpulse.registry.index import RegistryCache
from botpulse.runtime.clickhouse import Store
from botpulse.runtime.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
REDIS = web.AppKey("redis", aioredis.Redis)
REGISTRY = web.AppKey("registry", RegistryCache)
ANSWERS = web.AppKey("answers", AnswerCache)
# Parts composed into this process or stack (the embedded worker, `botpulse dev`'s Redis and
# gateway): each check returns why its part is down, or None. `/readyz` fails while any says so.
READINESS = web.AppKey("readiness", list[Callable[[], str | None]])

# Failures of the parts behind the service, not of the request: the client should retry.
UNAVAILABLE = (RedisError, OperationalError, OSError, asyncio.TimeoutError)
