"""Redis connections. Every service gets its client here so timeouts and decoding agree."""

from __future__ import annotations

import redis.asyncio as aioredis

from botpulse.runtime.settings import Settings


def connect(settings: Settings, *, url: str | None = None) -> aioredis.Redis:
    """An asyncio Redis client whose every call fails fast (never hangs) when Redis is gone."""
    url = url or settings.redis_url
    if not url:
        raise RuntimeError("REDIS_URL is not set (botpulse dev sets it for the embedded server)")
    timeout = settings.redis_timeout_ms / 1000
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=0,
        decode_responses=False,
        max_connections=64,
    )
