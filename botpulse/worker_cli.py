"""`botpulse status` and `botpulse dead-letters list|replay`: operator views of the stream.

They need only Redis: `REDIS_URL`, or when it is unset, the Redis of the embedded stack running
under BOTPULSE_DATA_DIR (`botpulse dev`). They never open ClickHouse (an embedded chDB directory
belongs to the process that runs it).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time

import msgspec
import redis.asyncio as aioredis

from botpulse.runtime.health_reports import HealthReport, describe, read_reports
from botpulse.runtime.redis import connect
from botpulse.runtime.settings import Settings, load_settings
from botpulse.stack import read_stack
from botpulse.workers.deadletters import DeadLetter, list_dead_letters, replay
from botpulse.workers.status import PartitionView, partition_view, render


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status",
        help="Redis memory, each worker's health (backing off, and why), stream partitions: length, "
        "pending per consumer, dead letters, rows/s",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_status)

    p = sub.add_parser("dead-letters", help="inspect or re-drive entries the workers gave up on")
    dl = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = dl.add_parser("list", help="show dead letters with their reasons")
    ls.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=run_list)
    rp = dl.add_parser("replay", help="put dead letters back on their stream, unchanged")
    which = rp.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every dead letter")
    which.add_argument(
        "--id", action="append", dest="ids", metavar="ID", help="a dead-letter id (repeatable)"
    )
    rp.set_defaults(func=run_replay)


def _redis_url(settings: Settings) -> str:
    if settings.redis_url:
        return settings.redis_url
    stack = read_stack(settings)
    if stack is None:
        raise SystemExit(
            "botpulse: REDIS_URL is not set and no embedded stack (botpulse dev) is running under "
            f"BOTPULSE_DATA_DIR={settings.data_dir}"
        )
    return stack.redis_url


def _with_redis(action):  # type: ignore[no-untyped-def]
    settings = load_settings()

    async def main() -> int:
        redis = connect(settings, url=_redis_url(settings))
        try:
            return await action(settings, redis)
        finally:
            await redis.aclose()

    return asyncio.run(main())


class RedisMemory(msgspec.Struct):
    used_bytes: int
    max_bytes: int  # 0: no limit
    policy: str
    high_water_pct: int  # where the gateway starts answering 503 (BOTPULSE_REDIS_MEMORY_HIGH_WATER_PCT)


class Status(msgspec.Struct):
    redis: RedisMemory
    workers: list[HealthReport]
    partitions: list[PartitionView]


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _render_memory(memory: RedisMemory) -> str:
    if not memory.max_bytes:
        return (
            f"redis memory: {_size(memory.used_bytes)} used, no maxmemory set (policy {memory.policy}): "
            "admission cannot judge memory; set maxmemory"
        )
    pct = memory.used_bytes * 100 / memory.max_bytes
    line = (
        f"redis memory: {_size(memory.used_bytes)} of {_size(memory.max_bytes)} ({pct:.0f}%), "
        f"policy {memory.policy}"
    )
    if pct >= memory.high_water_pct:
        line += f"; over {memory.high_water_pct}%: the gateway refuses posts (503) until the workers drain it"
    return line


def run_status(args: argparse.Namespace) -> int:
    async def action(settings: Settings, redis: aioredis.Redis) -> int:
        info = await redis.info("memory")
        memory = RedisMemory(
            used_bytes=int(info.get("used_memory", 0)),
            max_bytes=int(info.get("maxmemory", 0)),
            policy=str(info.get("maxmemory_policy", "?")),
            high_water_pct=settings.redis_memory_high_water_pct,
        )
        workers = await read_reports(redis)
        views = [await partition_view(redis, p) for p in range(settings.stream_partitions)]
        if args.json:
            print(msgspec.json.encode(Status(memory, workers, views)).decode())
            return 0
        now_ms = int(time.time() * 1000)
        lines = [_render_memory(memory)]
        lines += [describe(r, now_ms) for r in workers] or ["no worker reports its health (none running?)"]
        print("\n".join([*lines, render(views)]))
        return 0

    return _with_redis(action)


def _line(letter: DeadLetter) -> str:
    at = dt.datetime.fromtimestamp(letter.at_ms / 1000, dt.UTC).isoformat(timespec="seconds")
    return (
        f"{letter.partition} {letter.id} (was {letter.original_id}) at {at}, "
        f"deliveries {letter.deliveries}: {letter.reason}"
    )


def run_list(args: argparse.Namespace) -> int:
    async def action(settings: Settings, redis: aioredis.Redis) -> int:
        letters = await list_dead_letters(redis, settings.stream_partitions, limit=args.limit)
        for letter in letters:
            print(json.dumps(letter.summary()) if args.json else _line(letter))
        if not letters and not args.json:
            print("no dead letters")
        return 0

    return _with_redis(action)


def run_replay(args: argparse.Namespace) -> int:
    async def action(settings: Settings, redis: aioredis.Redis) -> int:
        letters = await list_dead_letters(redis, settings.stream_partitions)
        if not args.all:
            wanted = set(args.ids)
            unknown = wanted - {letter.id for letter in letters}
            if unknown:
                print(f"botpulse: no dead letter with id {', '.join(sorted(unknown))}", file=sys.stderr)
                return 1
            letters = [letter for letter in letters if letter.id in wanted]
        new_ids = await replay(redis, letters)
        for letter, new_id in zip(letters, new_ids, strict=True):
            print(f"replayed {letter.partition} {letter.id} as {new_id}")
        print(f"{len(new_ids)} dead letter(s) replayed")
        return 0

    return _with_redis(action)
