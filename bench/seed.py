"""Data set up for one phase, run as a child (`python -m botpulse.bench.seed`): it opens the phase's
ClickHouse (embedded chDB allows one path per process, and the services that come next need
this one), creates accounts and bots through `registry.catalog`, bulk-loads 1-minute stats
history when asked, and exits, releasing the path.

Bulk history is generated inside ClickHouse (`INSERT … SELECT … FROM numbers()`, values bound
as parameters) so a year of 1-minute points loads in seconds; it lands in `bot_stats` and the
roll-up materialized views fill exactly as they do for the worker's inserts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import msgspec

from botpulse.registry.catalog import Bot, create_account, ensure_index, now, write_bot
from botpulse.runtime.clickhouse import Store
from botpulse.runtime.logs import configure_logging
from botpulse.runtime.migrations import migrate
from botpulse.runtime.redis import connect
from botpulse.runtime.settings import load_settings
from botpulse.schemas.stats import STATS_COLUMNS, STATS_FIELDS
from botpulse.workers.rows import SHARDS_COLUMNS

MINUTE_MS = 60_000
DAY_MS = 86_400_000


class History(msgspec.Struct):
    name: str
    bots: int
    days: int
    every_min: int = 1  # minutes between two posts
    # Each bot also posts per shard: this many shards, one post per shard per step (in
    # `shard_stats`; its `bot_stats` rows are then the totals the gateway writes).
    shards: int = 0


class Spec(msgspec.Struct):
    accounts: int
    bots: int
    history: list[History] = []


class Target(msgspec.Struct, array_like=True):
    bot_id: str
    key: str


class Seeded(msgspec.Struct):
    targets: list[Target]  # every bot with its account's key
    history: dict[str, list[str]]  # history name -> bot ids holding it
    end_ms: int  # history ends here (exclusive), on a minute boundary
    rows: int
    load_s: float


def bot_id(index: int) -> str:
    # Discord-sized snowflakes, distinct per run position.
    return str(300_000_000_000_000_000 + index)


# The synthetic value of each stats column for the `number`-th minute (every column of
# schemas/stats.py needs one: a new stat fails here, not silently as NULL history).
_SYNTHETIC = {
    "guilds": "1000 + number % 977",
    "users": "50000 + number % 10007",
    "shards": "1 + number % 4",
    "api_ping": "40 + number % 50",
    "ram_usage": "5e7 + (number % 1000) * 1e4",
    "ram_total": "1073741824",
    "cpu": "(number % 100) / 2",
    "bandwidth": "1000 * (number % 60)",
}
_HISTORY_SQL = (
    f"INSERT INTO bot_stats ({', '.join(STATS_COLUMNS)}) "
    "SELECT {bot:String}, "
    "fromUnixTimestamp64Milli(toInt64({start:Int64} + number * {step:Int64}), 'UTC'), "
    "concat({bot:String}, '-', toString(number)), "
    + "".join(f"{_SYNTHETIC[f.column]}, " for f in STATS_FIELDS)
    + "CAST(map(), 'Map(String, Float64)') "
    "FROM numbers({n:UInt64})"
)


# Shard k of the bot posts at k / shards of every step.
_SHARDS_SQL = (
    f"INSERT INTO shard_stats ({', '.join(SHARDS_COLUMNS)}) "
    "SELECT {bot:String}, toUInt32(number % {shards:UInt32}), "
    "fromUnixTimestamp64Milli(toInt64({start:Int64} + intDiv(number, {shards:UInt32}) * {step:Int64}"
    " + (number % {shards:UInt32}) * intDiv({step:Int64}, {shards:UInt32})), 'UTC'), "
    "concat({bot:String}, '-s', toString(number)), 1, 'ready', 1 + number % 97, NULL, 40 + number % 50 "
    "FROM numbers({n:UInt64})"
)


async def seed(spec: Spec) -> Seeded:
    settings = load_settings()
    configure_logging(settings)
    store = Store(settings)
    redis = connect(settings)
    try:
        migrate(store)
        await ensure_index(store, redis, settings.stream_partitions)
        keys = []
        accounts = []
        for i in range(spec.accounts):
            account, key = await create_account(store, redis, f"bench-{i}")
            accounts.append(account.id)
            keys.append(key)
        targets = []
        created = now()
        for i in range(spec.bots):
            owner = i % spec.accounts
            bot = Bot(
                bot_id(i), accounts[owner], f"Bench Bot {i}", None, False,
                settings.default_custom_slots, None, created,
            )  # fmt: skip
            await write_bot(store, redis, bot)
            targets.append(Target(bot.id, keys[owner]))
        end_ms = int(time.time() * 1000) // MINUTE_MS * MINUTE_MS
        history: dict[str, list[str]] = {}
        rows = 0
        started = time.monotonic()
        used = 0
        for h in spec.history:
            ids = [t.bot_id for t in targets[used : used + h.bots]]
            used += h.bots
            if len(ids) < h.bots:
                raise SystemExit(f"seed: history {h.name!r} needs {h.bots} bots beyond the others")
            step = h.every_min * MINUTE_MS
            points = h.days * DAY_MS // step
            for bid in ids:
                store.command_sync(
                    _HISTORY_SQL, {"bot": bid, "start": end_ms - points * step, "n": points, "step": step}
                )
                rows += points
                if h.shards:
                    n = points * h.shards
                    store.command_sync(
                        _SHARDS_SQL,
                        {
                            "bot": bid,
                            "start": end_ms - points * step,
                            "shards": h.shards,
                            "n": n,
                            "step": step,
                        },
                    )
                    rows += n
            history[h.name] = ids
        return Seeded(targets, history, end_ms, rows, round(time.monotonic() - started, 2))
    finally:
        await redis.aclose()
        store.close()


def count_rows(table: str) -> int:
    """Rows in a table, read after a phase (so a throughput figure is checked against storage)."""
    settings = load_settings()
    configure_logging(settings)
    store = Store(settings)
    try:
        if table not in ("bot_stats", "custom_events"):
            raise SystemExit(f"seed: cannot count {table!r}")
        return int(store.query_rows(f"SELECT count() FROM {table}")[0][0])
    finally:
        store.close()


def export_history(bot_ids: list[str], out: Path) -> int:
    """Write the bots' stats rows as CSV lines `bot,ts_ms,<STATS_FIELDS columns>` (an empty
    field for NULL), read back from `bot_stats`: the peers of bench/peers.py load exactly what
    botpulse serves. One bot at a time, so memory stays at one bot's history."""
    settings = load_settings()
    configure_logging(settings)
    store = Store(settings)
    columns = ", ".join(f.column for f in STATS_FIELDS)
    sql = (
        f"SELECT toUnixTimestamp64Milli(ts), {columns} FROM bot_stats "
        "WHERE bot_id = {bot:String} ORDER BY ts"
    )
    rows = 0
    try:
        with out.open("w") as f:
            for bid in bot_ids:
                for row in store.query_rows(sql, {"bot": bid}):
                    values = ",".join("" if v is None else repr(v) for v in row[1:])
                    f.write(f"{bid},{row[0]},{values}\n")
                    rows += 1
    finally:
        store.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m botpulse.bench.seed")
    parser.add_argument("--spec", help="JSON Spec")
    parser.add_argument("--count", metavar="TABLE", help="print the row count of TABLE instead")
    parser.add_argument("--export", metavar="BOT_IDS", help="write these bots' stats rows as CSV instead")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.count:
        args.out.write_text(str(count_rows(args.count)))
        return 0
    if args.export:
        export_history(args.export.split(","), args.out)
        return 0
    spec = msgspec.json.decode(args.spec, type=Spec)
    args.out.write_bytes(msgspec.json.encode(asyncio.run(seed(spec))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
