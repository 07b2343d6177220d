"""An exact in-memory copy of what bots' answers read, for a query process that holds the only
writer (`Store.sole_writer`: embedded chDB, where the worker runs in this process or none runs).

Two things are kept per bot being read, both dropped the moment a write touches them:

- **Its hours**: per hour of its posts, the count, the newest non-null value of each "last"
  field, the sum and count of each averaged field and the custom sums and counts: the raw
  definition of `query/stats.py`, aggregated by the engine from `bot_stats` when loaded. A
  range whose every bucket edge is on an hour (the dashboard's) is then bucketed here, on each
  request, from those hours, without reading a table. An insert into `bot_stats` drops the
  hours its rows fall in (all of the bot's hours when a row's time is not plain milliseconds).
- **Its statements**: the rows of the bot's head, side reads and custom totals (`query`), kept
  by statement and parameters until any insert carries the bot's id.

Why it is exact. Every write goes through `Store`, whose watchers hear of it after the engine
answered (`Store.watch`). Each write takes a sequence number; a load notes the number before
its read starts and keeps what it read only for hours (or statements) no write touched since,
so a write that landed while the read ran is never masked: its hours stay missing and the next
request loads them. A write the engine deduplicated still drops what it touched, which only
costs a load. A command (DDL, migrations, the bench's seeding) drops everything.

What it does not see: rows leaving by TTL happen in the engine's merges, whose timing the
engine does not promise either (hours late is normal), so a bot's copy is dropped after
`MAX_AGE_S` and re-read. Bounded: at most `hours_limit` bot-hours are held, the bots least
recently read go first, and a range longer than that is read from the tables.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from botpulse.query.stats import HOUR_MS, is_hour_aligned
from botpulse.runtime.clickhouse import Store
from botpulse.schemas.stats import AVG_FIELDS, LAST_FIELDS, STATS_TABLE

MAX_AGE_S = 600.0
# Statements kept per bot (head, side reads, totals of a few ranges); past it they are dropped.
MAX_STATEMENTS = 32
# Bots held at once, whatever they hold (statements alone take no hours).
MAX_BOTS = 100_000

_LAST = list(LAST_FIELDS.values())
_AVG = list(AVG_FIELDS.values())
# One row per hour of the bot's posts in [lo, hi): the same aggregates as RAW_BUCKETS_SQL, with
# each average as its sum and count so hours merge into any bucket.
HOURS_SQL = (
    "SELECT intDiv(toUnixTimestamp64Milli(ts), 3600000) AS h, count(), "
    + ", ".join([f"argMax({c}, ts)" for c in _LAST] + [f"sum({c}), count({c})" for c in _AVG])
    + ", sumMap(CAST(custom, 'Map(String, Float64)')), "
    "sumMap(CAST(mapApply((k, v) -> (k, toUInt64(1)), custom), 'Map(String, UInt64)')) "
    "FROM bot_stats WHERE bot_id = {id:String} "
    "AND ts >= fromUnixTimestamp64Milli({lo:Int64}, 'UTC') "
    "AND ts < fromUnixTimestamp64Milli({hi:Int64}, 'UTC') GROUP BY h"
)

# An hour: posts, the "last" values, (sum, count) per averaged field, custom sums and counts.
Hour = tuple[int, tuple[Any, ...], tuple[tuple[float, int], ...], dict[str, float], dict[str, int]]
EMPTY: Hour = (0, (None,) * len(_LAST), ((0.0, 0),) * len(_AVG), {}, {})


def hour_of(row: Sequence[Any]) -> Hour:
    """A row of `HOURS_SQL` (without its hour number) as an `Hour`."""
    k = 2 + len(_LAST)
    avgs = tuple((float(row[k + 2 * j] or 0.0), int(row[k + 2 * j + 1])) for j in range(len(_AVG)))
    return int(row[1]), tuple(row[2:k]), avgs, row[-2], row[-1]


def bucket_rows(hours: dict[int, Hour], start: int, end: int, n: int) -> list[tuple[Any, ...]]:
    """The rows `HOURLY_BUCKETS_SQL` gives for `[start, end)` in `n` buckets (every edge on an
    hour), from the hours in it: what `buckets_of` decodes."""
    span = end - start
    acc: dict[int, list[Any]] = {}
    for h in sorted(hours):
        posts, last, avgs, sums, counts = hours[h]
        if not posts:
            continue
        i = (h * HOUR_MS - start) * n // span
        a = acc.get(i)
        if a is None:
            a = acc[i] = [0, [None] * len(_LAST), [0.0] * len(_AVG), [0] * len(_AVG), {}, {}]
        a[0] += posts
        for j, v in enumerate(last):
            if v is not None:  # hours ascend: the newest non-null value wins
                a[1][j] = v
        for j, (s, c) in enumerate(avgs):
            a[2][j] += s
            a[3][j] += c
        for name, v in sums.items():
            a[4][name] = a[4].get(name, 0.0) + v
        for name, v in counts.items():
            a[5][name] = a[5].get(name, 0) + v
    out = []
    for i in sorted(acc):
        posts, last, s, c, sums, counts = acc[i]
        means = [s[j] / c[j] if c[j] else None for j in range(len(_AVG))]
        out.append((i, posts, *last, *means, sums, counts))
    return out


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _hours_of(value: Any) -> tuple[int, ...] | None:
    """The hours a row's `ts` may be stored in; None: a time of another shape."""
    if type(value) is int:  # the worker's: milliseconds, stored as they are
        return (value // HOUR_MS,)
    if isinstance(value, datetime) and value.tzinfo is not None:
        # The client turns it into milliseconds its own way: a row a millisecond from an hour's
        # edge may land on either side, so both hours count.
        ms = (value - _EPOCH) // _MS
        return ((ms - 1) // HOUR_MS, (ms + 1) // HOUR_MS)
    return None


class _Bot:
    __slots__ = ("born", "hours", "loading", "marked", "statements", "touched")

    def __init__(self) -> None:
        self.born = time.monotonic()
        self.hours: dict[int, Hour] = {}
        self.loading = 0  # hour loads in flight
        self.marked: dict[int, int] = {}  # hour -> last write's number, kept while loads run
        self.touched = 0  # the last write's number that carried this bot
        self.statements: dict[Any, list[tuple[Any, ...]]] = {}


class BotMemory:
    """See the module docstring. Writes arrive on the store's write threads, reads on the event
    loop: one lock guards the state, never held across an await or a read."""

    def __init__(self, store: Store, hours_limit: int) -> None:
        self._store = store
        self.hours_limit = hours_limit
        self._lock = threading.Lock()
        self._seq = 0
        self._bots: OrderedDict[str, _Bot] = OrderedDict()
        self._held = 0
        self.loads = 0  # hour loads made (tests and the bench read it)

    # --- writes (the store's watcher; any thread) ---------------------------------------------
    def inserted(
        self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str], column_oriented: bool
    ) -> None:
        try:
            b = list(columns).index("bot_id")
        except ValueError:
            return  # no bot's answer reads a table without bot ids, nor one fed from one
        bots = rows[b] if column_oriented else [r[b] for r in rows]
        # Only the bots held matter. One not held now has no load in flight either: a load
        # registers its bot first, and one registered after this write was stored reads it.
        held = self._bots
        watched = {bot for bot in set(bots) if bot in held}
        # The hours each held bot's rows fall in; None: a time of another shape, so all of them.
        hours: dict[str, set[int] | None] = {bot: set() for bot in watched}
        if watched and table == STATS_TABLE:
            t = list(columns).index("ts")
            times = rows[t] if column_oriented else [r[t] for r in rows]
            for bot, ts in zip(bots, times, strict=True):
                if bot in watched:
                    stored, seen = _hours_of(ts), hours[bot]
                    if stored is None:
                        hours[bot] = None
                    elif seen is not None:
                        seen.update(stored)
        with self._lock:
            self._seq += 1
            for bot, touched in hours.items():
                state = self._bots.get(bot)
                if state is None:
                    continue  # nothing held, and no load in flight (a load registers first)
                if touched is None:
                    # Forgotten: loads and statements in flight find another state and keep nothing.
                    del self._bots[bot]
                    self._held -= len(state.hours)
                    continue
                state.touched = self._seq
                state.statements.clear()
                for h in touched:
                    if state.loading:
                        state.marked[h] = self._seq
                    if state.hours.pop(h, None) is not None:
                        self._held -= 1

    def commanded(self) -> None:
        with self._lock:
            self._seq += 1
            self._bots = OrderedDict()
            self._held = 0

    # --- reads (the event loop) ---------------------------------------------------------------
    def _bot(self, bot_id: str) -> _Bot:
        state = self._bots.get(bot_id)
        if state is None or time.monotonic() - state.born > MAX_AGE_S:
            if state is not None:
                self._held -= len(state.hours)
            state = self._bots[bot_id] = _Bot()
        self._bots.move_to_end(bot_id)
        return state

    async def query(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """`Store.query` of a statement about the bot `params["id"]`, its rows kept until a write
        carries that bot. The rows are shared: read them, never change them."""
        bot_id = params["id"]
        key = (sql, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items())))
        with self._lock:
            state = self._bot(bot_id)
            rows = state.statements.get(key)
            if rows is not None:
                return rows
            seq0 = self._seq
        rows = await self._store.query(sql, params)
        with self._lock:
            if self._bots.get(bot_id) is state and state.touched <= seq0:
                if len(state.statements) >= MAX_STATEMENTS:
                    state.statements.clear()
                state.statements[key] = rows
            self._evict(bot_id)
        return rows

    async def buckets(self, bot_id: str, start: int, end: int, n: int) -> list[tuple[Any, ...]] | None:
        """The bucket rows of an hour-aligned range from the bot's hours, loading those not
        held; None when the range is not hour-aligned or longer than the memory holds."""
        if not is_hour_aligned(start, end, n) or (end - start) // HOUR_MS > self.hours_limit:
            return None
        lo, hi = start // HOUR_MS, end // HOUR_MS
        with self._lock:
            state = self._bot(bot_id)
            held = state.hours
            have = {h: held[h] for h in range(lo, hi) if h in held}
            missing = [h for h in range(lo, hi) if h not in have]
            if not missing:
                return bucket_rows(have, start, end, n)
            seq0 = self._seq
            state.loading += 1
        first, last = missing[0], missing[-1] + 1
        try:
            span = {"id": bot_id, "lo": first * HOUR_MS, "hi": last * HOUR_MS}
            rows = await self._store.query(HOURS_SQL, span)
        except BaseException:
            with self._lock:
                state.loading -= 1
                if not state.loading:
                    state.marked.clear()
            raise
        got = {int(r[0]): hour_of(r) for r in rows}
        with self._lock:
            self.loads += 1
            state.loading -= 1
            if self._bots.get(bot_id) is state:
                for h in range(first, last):
                    # Written since the read began: what was read may predate the write.
                    if h not in state.hours and state.marked.get(h, 0) <= seq0:
                        state.hours[h] = got.get(h, EMPTY)
                        self._held += 1
            if not state.loading:
                state.marked.clear()
            self._evict(bot_id)
        have.update((h, got.get(h, EMPTY)) for h in missing)
        return bucket_rows(have, start, end, n)

    def _evict(self, keep: str) -> None:
        while (self._held > self.hours_limit or len(self._bots) > MAX_BOTS) and len(self._bots) > 1:
            bot_id, state = next(iter(self._bots.items()))
            if bot_id == keep:
                self._bots.move_to_end(bot_id)
                continue
            del self._bots[bot_id]
            self._held -= len(state.hours)
