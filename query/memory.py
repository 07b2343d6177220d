"""An exact in-memory copy of what bots' answers read, for a query process that holds the only
writer (`Store.sole_writer`: embedded chDB, where the worker runs in this process or none runs).

What is kept per bot being read, each part dropped the moment a write touches it:

- **Its hours**: per hour of its posts, the count, the newest non-null value of each "last"
  field, the sum and count of each averaged field and the custom sums and counts: the raw
  definition of `query/stats.py`, read from the hourly roll-up `bot_stats_1h` when loaded.
- **The posts of its ragged hours**: an hour holding a bucket edge or a range end strictly
  inside (`query/stats.py` `ragged_hours`) is split there, so its posts are kept, by field,
  as the times and values of the posts where that field is not null, sorted: any part of the
  hour is then a binary search and a slice away.
- **Its statements**: the rows of the bot's head, side reads and custom totals (`query`), kept
  by statement and parameters until an insert carries the bot's id; a stored insert of posts
  patches those given a `patch` (the head takes the posts' times in) instead.

A range's buckets are then computed on each request from the whole hours inside it and the
parts of its ragged hours, without reading a table unless something it needs is not held.

Why it is exact. Every write goes through `Store`, whose watchers hear of it after the engine
answered (`Store.watch`). An insert into `bot_stats` drops the hours (and posts) its rows fall
in, all of the bot's when a row's time is not plain milliseconds. Each write takes a sequence
number; a load notes the number before its read starts and keeps what it read only for hours
(or statements) no write touched since, so a write that landed while the read ran is never
masked: its hours stay missing and the next request loads them. A write the engine deduplicated
still drops what it touched, which only costs a load. A command (DDL, migrations, the bench's
seeding) drops everything.

What it does not see: rows leaving by TTL happen in the engine's merges, whose timing the engine
does not promise either (hours late is normal), so a bot's copy is dropped after `MAX_AGE_S`
and read again. Two posts of one bot in one millisecond (one gateway call, one insert) leave
the "last" fields the first one's value, as the engine's argMax keeps the first of equal times
it meets; equal times in separate inserts have no order the engine keeps.

Bounded: at most `hours_limit` units of about 1 KB are held (`_Bot`), counted after every load:
the bots read least recently go first, then what the bot just read holds outside its range, and
a range longer than the limit (or than `MAX_RANGE_HOURS`) is read from the tables.
"""

from __future__ import annotations

import asyncio
import struct
import sys
import threading
import time
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from botpulse.query.metrics import CACHE, MEMORY_UNITS
from botpulse.query.stats import bucket_time
from botpulse.query.uptime import HOUR_MS
from botpulse.runtime.clickhouse import Store
from botpulse.schemas.stats import STATS_FIELDS, STATS_TABLE

MAX_AGE_S = 600.0
# Statements kept per bot (head, side reads, totals of a few ranges); past it they are dropped.
MAX_STATEMENTS = 32
# Bots held at once, whatever they hold.
MAX_BOTS = 100_000
# Ranges longer than this (about two years) are read from the tables: bucketing that many hours
# here would cost the event loop more than the engine takes.
MAX_RANGE_HOURS = 800 * 24

HITS, MISSES = CACHE.labels("bot_memory", "hit"), CACHE.labels("bot_memory", "miss")
_LAST_FIELDS = [f for f in STATS_FIELDS if f.kind == "last"]
_AVG_FIELDS = [f for f in STATS_FIELDS if f.kind == "avg"]
_LAST = [f.column for f in _LAST_FIELDS]
_AVG = [f.column for f in _AVG_FIELDS]
_K = len(_LAST)
# One row per hour of the bot's posts in [lo, hi), from the hourly roll-up (filled in the same
# insert as the posts): its merged states, each average's state as bytes (`avg_state`) so hours
# merge into any bucket by sum and count.
HOURS_SQL = (
    "SELECT intDiv(toUnixTimestamp(bucket), 3600) AS h, sum(posts), "
    + ", ".join([f"argMaxMerge({c})" for c in _LAST] + [f"hex(avgMergeState({c}))" for c in _AVG])
    + ", sumMap(custom_sum), sumMap(custom_count) FROM bot_stats_1h WHERE bot_id = {id:String} "
    "AND bucket >= toDateTime(intDiv({lo:Int64}, 1000), 'UTC') "
    "AND bucket < toDateTime(intDiv({hi:Int64}, 1000), 'UTC') GROUP BY h"
)
_F64 = struct.Struct("<d")


def avg_state(text: str) -> tuple[float, int]:
    """The sum and count of an `AggregateFunction(avg, Nullable(Float64))` state, as `hex()`
    shows it: a byte saying whether a value was seen, the Float64 sum, the count as a VarUInt
    (the format the engine stores states in on disk, so it is kept across versions)."""
    raw = bytes.fromhex(text)
    if not raw or not raw[0]:
        return 0.0, 0
    (total,) = _F64.unpack_from(raw, 1)
    count = shift = 0
    for byte in raw[9:]:
        count |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
    return total, count


# The posts of the listed hours, oldest first.
POSTS_SQL = (
    "SELECT toUnixTimestamp64Milli(ts), "
    + ", ".join(_LAST + _AVG)
    + ", CAST(custom, 'Map(String, Float64)') FROM bot_stats WHERE bot_id = {id:String} "
    "AND intDiv(toUnixTimestamp64Milli(ts), 3600000) IN {hours:Array(Int64)} "
    "AND ts >= fromUnixTimestamp64Milli({lo:Int64}, 'UTC') "
    "AND ts < fromUnixTimestamp64Milli({hi:Int64}, 'UTC') ORDER BY ts"
)

# How a statement's rows take in a stored insert of the bot's posts from `lo` to `hi` (ms); None:
# they cannot, so they are dropped.
Patch = Callable[[list[tuple[Any, ...]], int, int], list[tuple[Any, ...]] | None]

# A part of the posts (an hour, or a piece of one): posts, the "last" values, (sum, count) per
# averaged field, custom sums and counts.
Part = tuple[int, tuple[Any, ...], tuple[tuple[float, int], ...], dict[str, float], dict[str, int]]
EMPTY: Part = (0, (None,) * _K, ((0.0, 0),) * len(_AVG), {}, {})


def hour_of(row: Sequence[Any]) -> Part:
    """A row of `HOURS_SQL` (after its hour number) as a `Part`. The maps of hours without custom
    metrics are all one empty map (never changed: parts are only read)."""
    k = 2 + _K
    avgs = tuple(avg_state(row[k + j]) for j in range(len(_AVG)))
    sums = {sys.intern(k): v for k, v in row[-2].items()} if row[-2] else EMPTY[3]
    counts = {sys.intern(k): v for k, v in row[-1].items()} if row[-1] else EMPTY[4]
    return int(row[1]), tuple(row[2:k]), avgs, sums, counts


def hour_units(part: Part) -> int:
    """What an hour's aggregate costs, in units (with its share of the columns about 800 bytes,
    and about 700 more per custom metric it holds)."""
    return 1 + len(part[4])


# Each field's values packed: 'd' for Float64, 'q' for UInt64 (kept a list past 2**63 - 1).
_CODES = ["q" if f.clickhouse_type == "UInt64" else "d" for f in (*_LAST_FIELDS, *_AVG_FIELDS)]


def _packed(code: str, values: list[Any]) -> Any:
    try:
        return array(code, values)
    except OverflowError:
        return values


class Posts:
    """One hour's posts: their times, oldest first, and per field the values of the posts where
    it is not null, with how many of those come before each post (so a part of the hour is two
    binary searches away, whatever its fields); custom metrics by name, times and values."""

    __slots__ = ("before", "custom", "size", "times", "values")

    def __init__(self, rows: Iterable[Sequence[Any]]) -> None:
        times: list[int] = []
        values: list[list[Any]] = [[] for _ in _CODES]
        before: list[list[int]] = [[0] for _ in _CODES]
        custom: dict[str, tuple[list[int], list[float]]] = {}
        newest = [None] * _K  # per "last" field, the time of its newest value kept
        for row in rows:
            t = int(row[0])
            times.append(t)
            for j, (vs, nn, v) in enumerate(zip(values, before, row[1:-1], strict=True)):
                if v is not None:
                    if j < _K:
                        # Posts of one millisecond (one gateway call): the first stands, as in
                        # the engine's argMax, which keeps the first of equal times it meets.
                        if newest[j] == t:
                            nn.append(len(vs))
                            continue
                        newest[j] = t
                    vs.append(v)
                nn.append(len(vs))
            for name, v in row[-1].items():
                ts, cs = custom.setdefault(name, ([], []))
                ts.append(t)
                cs.append(v)
        # Packed: as arrays an hour's posts take a fraction of the memory lists of objects take.
        self.times = array("q", times)
        counts = "B" if len(times) < 256 else "H" if len(times) < 65536 else "i"
        self.before = [array(counts, nn) for nn in before]
        self.values = [_packed(code, vs) for code, vs in zip(_CODES, values, strict=True)]
        self.custom = {sys.intern(k): (array("q", ts), array("d", cs)) for k, (ts, cs) in custom.items()}
        self.size = len(times) + sum(len(ts) for ts, _ in custom.values())  # posts and custom values

    def part(self, a: int, b: int) -> Part:
        """The posts in [a, b) as a `Part`."""
        i0, i1 = bisect_left(self.times, a), bisect_left(self.times, b)
        if i0 == i1:
            return EMPTY
        last: list[Any] = []
        avgs: list[tuple[float, int]] = []
        for j, (vs, nn) in enumerate(zip(self.values, self.before, strict=True)):
            c0, c1 = nn[i0], nn[i1]
            if j < _K:
                last.append(vs[c1 - 1] if c1 > c0 else None)
            else:
                avgs.append((sum(vs[c0:c1], 0.0), c1 - c0))
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for name, (ts, cs) in self.custom.items():
            c0, c1 = bisect_left(ts, a), bisect_left(ts, b)
            if c1 > c0:
                sums[name], counts[name] = sum(cs[c0:c1], 0.0), c1 - c0
        return i1 - i0, tuple(last), tuple(avgs), sums, counts


class Columns:
    """A bot's held hours in [lo, hi) as columns, so a run of whole hours is a slice: posts, each
    averaged field's sums and counts, each "last" field's value per hour and, per hour, the
    latest hour at or before it with a value (-1: none); the hours with custom metrics apart."""

    __slots__ = ("counts", "custom", "custom_at", "hi", "last", "latest", "lo", "posts", "present", "sums")

    def __init__(self, hours: dict[int, Part], lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        span = hi - lo
        self.present = [False] * span
        self.posts = [0] * span
        self.last: list[list[Any]] = [[None] * span for _ in range(_K)]
        self.latest: list[list[int]] = [[-1] * span for _ in range(_K)]
        self.sums = [[0.0] * span for _ in range(len(_AVG))]
        self.counts = [[0] * span for _ in range(len(_AVG))]
        self.custom_at: list[int] = []
        self.custom: list[tuple[dict[str, float], dict[str, int]]] = []
        for h in range(lo, hi):
            part = hours.get(h)
            if part is None:
                continue
            posts, last, avgs, sums, counts = part
            i = h - self.lo
            self.present[i] = True
            self.posts[i] = posts
            for k, v in enumerate(last):
                self.last[k][i] = v
            for j, (sm, c) in enumerate(avgs):
                self.sums[j][i] = sm
                self.counts[j][i] = c
            if counts:
                self.custom_at.append(i)
                self.custom.append((sums, counts))
        for k in range(_K):
            values, latest, seen = self.last[k], self.latest[k], -1
            for i in range(span):
                if values[i] is not None:
                    seen = i
                latest[i] = seen

    def part(self, a: int, b: int) -> Part:
        """The whole hours [a, b) (all held) as one `Part`."""
        i, j = a - self.lo, b - self.lo
        posts = sum(self.posts[i:j])
        if not posts:
            return EMPTY
        last = []
        for k in range(_K):
            at = self.latest[k][j - 1]
            last.append(self.last[k][at] if at >= i else None)
        avgs = tuple((sum(self.sums[m][i:j], 0.0), sum(self.counts[m][i:j])) for m in range(len(_AVG)))
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for x in range(bisect_left(self.custom_at, i), bisect_left(self.custom_at, j)):
            for name, v in self.custom[x][0].items():
                sums[name] = sums.get(name, 0.0) + v
            for name, c in self.custom[x][1].items():
                counts[name] = counts.get(name, 0) + c
        return posts, tuple(last), avgs, sums, counts


def bucket_rows(parts: Iterable[tuple[int, Part]]) -> list[tuple[Any, ...]]:
    """The rows a bucket statement of `query/stats.py` gives (what `buckets_of` decodes), from
    the parts of the range with their bucket index, oldest first (parts never overlap, so a
    bucket's parts come together)."""
    out: list[tuple[Any, ...]] = []
    group: list[Part] = []
    at = -1
    for i, part in parts:
        if not part[0]:
            continue
        if i != at and group:
            out.append(_row(at, group))
            group = []
        at = i
        group.append(part)
    if group:
        out.append(_row(at, group))
    return out


def _row(i: int, group: list[Part]) -> tuple[Any, ...]:
    if len(group) == 1:
        posts, last, avgs, sums, counts = group[0]
        means = [s / c if c else None for s, c in avgs]
        return (i, posts, *last, *means, sums, counts)
    posts = 0
    newest: list[Any] = [None] * _K
    total = [0.0] * len(_AVG)
    seen = [0] * len(_AVG)
    sums, counts = {}, {}
    for p, last, avgs, part_sums, part_counts in group:
        posts += p
        for k, v in enumerate(last):
            if v is not None:  # oldest first: the newest non-null value wins
                newest[k] = v
        for j, (s, c) in enumerate(avgs):
            total[j] += s
            seen[j] += c
        for name, v in part_sums.items():
            sums[name] = sums.get(name, 0.0) + v
        for name, c in part_counts.items():
            counts[name] = counts.get(name, 0) + c
    means = [total[j] / seen[j] if seen[j] else None for j in range(len(_AVG))]
    return (i, posts, *newest, *means, sums, counts)


class Layout:
    """How `[start, end)` in `n` buckets meets the hours: per bucket, the piece of the hour it
    starts in (when it starts inside one), the whole hours inside it, and the piece of the hour
    it ends in; the hours holding such pieces are the ragged ones (`query/stats.py`
    `ragged_hours`)."""

    def __init__(self, start: int, end: int, n: int) -> None:
        span = end - start
        edges = [start, *(bucket_time(start, span, n, i) for i in range(1, n)), end]
        self.lo, self.hi = start // HOUR_MS, -(-end // HOUR_MS)
        # Per bucket: (index, first piece, whole hours [a, b), last piece); a piece is (hour, from, to).
        self.buckets: list[
            tuple[int, tuple[int, int, int] | None, int, int, tuple[int, int, int] | None]
        ] = []
        ragged: set[int] = set()
        for i, (e0, e1) in enumerate(pairwise(edges)):
            if e0 == e1:
                continue
            h0, h1 = e0 // HOUR_MS, (e1 - 1) // HOUR_MS
            if h0 == h1 and (e0 % HOUR_MS or e1 % HOUR_MS):  # inside one hour, not all of it
                self.buckets.append((i, (h0, e0, e1), 0, 0, None))
                ragged.add(h0)
                continue
            first = last = None
            a, b = -(-e0 // HOUR_MS), e1 // HOUR_MS  # the hours wholly inside
            if e0 % HOUR_MS:
                first = (h0, e0, a * HOUR_MS)
                ragged.add(h0)
            if e1 % HOUR_MS:
                last = (b, b * HOUR_MS, e1)
                ragged.add(b)
            self.buckets.append((i, first, a, b, last))
        self.ragged = sorted(ragged)
        self.whole = [h for h in range(self.lo, self.hi) if h not in ragged]

    def rows(self, cols: Columns | None, posts: dict[int, Posts]) -> list[tuple[Any, ...]]:
        parts: list[tuple[int, Part]] = []
        for i, first, a, b, last in self.buckets:
            if first is not None:
                parts.append((i, posts[first[0]].part(first[1], first[2])))
            if b > a:
                assert cols is not None
                parts.append((i, cols.part(a, b)))
            if last is not None:
                parts.append((i, posts[last[0]].part(last[1], last[2])))
        return bucket_rows(parts)


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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _posts_by_hour(want: list[int], rows: list[tuple[Any, ...]]) -> dict[int, Posts]:
    by_hour: dict[int, list[tuple[Any, ...]]] = {h: [] for h in want}
    for r in rows:
        by_hour[int(r[0]) // HOUR_MS].append(r)
    return {h: Posts(rs) for h, rs in by_hour.items()}


def _rows_of(layout: Layout, hours: dict[int, Part], posts: dict[int, Posts]) -> list[tuple[Any, ...]]:
    return layout.rows(Columns(hours, layout.lo, layout.hi) if hours else None, posts)


def posts_units(p: Posts) -> int:
    """What an hour's posts cost, in units of at most about 1 KB (measured: an hour of 1-minute
    posts about 9 KB, 13 units; a custom value a fifth of a unit)."""
    return 1 + p.size // 5


class _Bot:
    """What is held of one bot, and its weight in units (about 1 KB each: an hour's aggregate and
    its share of the columns one; an hour's posts `posts_units`; a statement 1 + its rows)."""

    __slots__ = (
        "born", "cols", "hours", "loading", "marked", "posts", "statements", "touched", "version", "weight",
    )  # fmt: skip

    def __init__(self) -> None:
        self.born = time.monotonic()
        self.hours: dict[int, Part] = {}
        self.posts: dict[int, Posts] = {}
        self.loading = 0  # hour loads in flight
        self.marked: dict[int, int] = {}  # hour -> last write's number, kept while loads run
        self.touched = 0  # the last write's number that carried this bot
        self.statements: dict[Any, tuple[list[tuple[Any, ...]], Patch | None]] = {}
        self.cols: Columns | None = None  # held hours of the last range read, as columns
        self.version = 0  # counts the hours dropped: columns built from older ones are not kept
        self.weight = 0

    def columns(self, layout: Layout) -> Columns | None:
        """The last columns built when they cover `layout`'s whole hours (never changed once
        built: a read may use them outside the lock), else None."""
        cols = self.cols
        if (
            cols is None
            or not (cols.lo <= layout.lo and layout.hi <= cols.hi)
            or not all(cols.present[h - cols.lo] for h in layout.whole)
        ):
            return None
        return cols

    def drop_hour(self, h: int) -> int:
        """Forget hour `h` (its aggregate and posts); the units freed."""
        freed = 0
        part = self.hours.pop(h, None)
        if part is not None:
            freed += hour_units(part)
            self.cols = None
            self.version += 1
        p = self.posts.pop(h, None)
        if p is not None:
            freed += posts_units(p)
        self.weight -= freed
        return freed

    def drop_statements(self) -> int:
        freed = sum(1 + len(rows) for rows, _ in self.statements.values())
        self.statements.clear()
        self.weight -= freed
        return freed

    def patch_statements(self, lo: int, hi: int) -> int:
        """After a stored insert of the bot's posts from `lo` to `hi` (ms): the statements with a
        patch take those posts in, the others are dropped; the units freed."""
        freed = 0
        for key, (rows, patch) in list(self.statements.items()):
            new = patch(rows, lo, hi) if patch is not None else None
            if new is None:
                del self.statements[key]
                freed += 1 + len(rows)
            else:
                self.statements[key] = (new, patch)
                freed += len(rows) - len(new)
        self.weight -= freed
        return freed


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
        self.loads = 0  # loads of hours or posts made (tests read it)

    @property
    def held(self) -> int:
        """Units held now."""
        return self._held

    # --- writes (the store's watcher; any thread) ---------------------------------------------
    def inserted(
        self,
        table: str,
        rows: Sequence[Sequence[Any]],
        columns: Sequence[str],
        column_oriented: bool,
        stored: bool,
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
        # A stored insert of posts whose times are plain milliseconds: each held bot's oldest
        # and newest post in it, to patch the statements that can be patched (`query`).
        bounds: dict[str, tuple[int, int]] | None = {} if stored and table == STATS_TABLE else None
        if watched and table == STATS_TABLE:
            t = list(columns).index("ts")
            times = rows[t] if column_oriented else [r[t] for r in rows]
            for bot, ts in zip(bots, times, strict=True):
                if bot in watched:
                    at, seen = _hours_of(ts), hours[bot]
                    if at is None:
                        hours[bot] = None
                    elif seen is not None:
                        seen.update(at)
                    if bounds is not None:
                        if type(ts) is not int:
                            bounds = None
                        else:
                            lo, hi = bounds.get(bot, (ts, ts))
                            bounds[bot] = (min(lo, ts), max(hi, ts))
        with self._lock:
            self._seq += 1
            for bot, touched in hours.items():
                state = self._bots.get(bot)
                if state is None:
                    continue  # nothing held, and no load in flight (a load registers first)
                if touched is None:
                    self._forget(bot)  # loads and statements in flight then keep nothing
                    continue
                state.touched = self._seq
                if bounds is not None and bot in bounds:
                    self._held -= state.patch_statements(*bounds[bot])
                else:
                    self._held -= state.drop_statements()
                for h in touched:
                    if state.loading:
                        state.marked[h] = self._seq
                    self._held -= state.drop_hour(h)
            self._gauge()

    def commanded(self) -> None:
        with self._lock:
            self._seq += 1
            self._bots = OrderedDict()
            self._held = 0
            self._gauge()

    def _forget(self, bot_id: str) -> None:
        state = self._bots.pop(bot_id)
        self._held -= state.weight

    def _gauge(self) -> None:
        MEMORY_UNITS.set(self._held)

    # --- reads (the event loop) ---------------------------------------------------------------
    def _bot(self, bot_id: str) -> _Bot:
        state = self._bots.get(bot_id)
        if state is None or time.monotonic() - state.born > MAX_AGE_S:
            if state is not None:
                self._forget(bot_id)
            state = self._bots[bot_id] = _Bot()
        self._bots.move_to_end(bot_id)
        return state

    async def query(
        self, sql: str, params: dict[str, Any], patch: Patch | None = None
    ) -> list[tuple[Any, ...]]:
        """`Store.query` of a statement about the bot `params["id"]`, its rows kept until a write
        carries that bot. The rows are shared: read them, never change them. `patch`: how the
        rows take in a stored insert of the bot's posts (their oldest and newest time), exactly
        as the tables would; given, such an insert patches the rows instead of dropping them."""
        bot_id = params["id"]
        key = (sql, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items())))
        with self._lock:
            state = self._bot(bot_id)
            held = state.statements.get(key)
            if held is not None:
                HITS.inc()
                return held[0]
            seq0 = self._seq
        MISSES.inc()
        rows = await self._store.query(sql, params)
        with self._lock:
            if self._bots.get(bot_id) is state and state.touched <= seq0:
                if len(state.statements) >= MAX_STATEMENTS:
                    self._held -= state.drop_statements()
                if key not in state.statements:  # the same read may have been made beside this one
                    state.statements[key] = (rows, patch)
                    state.weight += 1 + len(rows)
                    self._held += 1 + len(rows)
            self._evict(bot_id, None)
        return rows

    async def buckets(self, bot_id: str, start: int, end: int, n: int) -> list[tuple[Any, ...]] | None:
        """The bucket rows of `[start, end)` in `n` buckets, from the bot's whole hours and the
        posts of its ragged hours, loading what is not held; None when the range is longer than
        the memory holds or than `MAX_RANGE_HOURS`."""
        if -(-(end - start) // HOUR_MS) + 1 > min(self.hours_limit, MAX_RANGE_HOURS):
            return None
        layout = Layout(start, end, n)
        with self._lock:
            state = self._bot(bot_id)
            want_hours = [h for h in layout.whole if h not in state.hours]
            want_posts = [h for h in layout.ragged if h not in state.posts]
            if not want_hours and not want_posts:
                cols = state.columns(layout) if layout.whole else None
                posts = {h: state.posts[h] for h in layout.ragged}
                hours = {h: state.hours[h] for h in layout.whole} if layout.whole and cols is None else {}
                version = state.version
            else:
                hours = {h: state.hours[h] for h in layout.whole if h in state.hours}
                posts = {h: state.posts[h] for h in layout.ragged if h in state.posts}
                seq0 = self._seq
                state.loading += 1
        if not want_hours and not want_posts:
            HITS.inc()
            if hours:  # columns for this range, built off the lock from the hours copied under it
                cols = Columns(hours, layout.lo, layout.hi)
                with self._lock:
                    if self._bots.get(bot_id) is state and state.version == version:
                        state.cols = cols
            return layout.rows(cols, posts)  # outside the lock: all of it is never changed
        MISSES.inc()
        try:
            got_hours, got_posts = await asyncio.gather(
                self._load_hours(bot_id, want_hours), self._load_posts(bot_id, want_posts)
            )
        except BaseException:
            with self._lock:
                state.loading -= 1
                if not state.loading:
                    state.marked.clear()
            raise
        with self._lock:  # one section: a write marks while `loading` counts this load
            self.loads += 1
            state.loading -= 1
            if self._bots.get(bot_id) is state:
                # Written since the read began: what was read may predate the write.
                for h, part in got_hours.items():
                    if h not in state.hours and state.marked.get(h, 0) <= seq0:
                        state.hours[h] = part
                        state.weight += hour_units(part)
                        self._held += hour_units(part)
                        state.cols = None
                for h, p in got_posts.items():
                    if h not in state.posts and state.marked.get(h, 0) <= seq0:
                        state.posts[h] = p
                        state.weight += posts_units(p)
                        self._held += posts_units(p)
            if not state.loading:
                state.marked.clear()
            self._evict(bot_id, layout)
        # This answer uses what it read, written since or not: every write it may miss landed
        # while it was being read (so one answer may show some of a concurrent insert; the
        # next one shows all of it).
        hours.update((h, got_hours[h]) for h in want_hours)
        posts.update((h, got_posts[h]) for h in want_posts)
        return await asyncio.to_thread(_rows_of, layout, hours, posts)

    async def _load_hours(self, bot_id: str, want: list[int]) -> dict[int, Part]:
        """The aggregates of every hour from the first to the last of `want` (the hours between
        come with them)."""
        if not want:
            return {}
        first, last = want[0], want[-1] + 1
        span = {"id": bot_id, "lo": first * HOUR_MS, "hi": last * HOUR_MS}
        got = {int(r[0]): hour_of(r) for r in await self._store.query(HOURS_SQL, span)}
        return {h: got.get(h, EMPTY) for h in range(first, last)}

    async def _load_posts(self, bot_id: str, want: list[int]) -> dict[int, Posts]:
        if not want:
            return {}
        span = {"id": bot_id, "hours": want, "lo": want[0] * HOUR_MS, "hi": (want[-1] + 1) * HOUR_MS}
        rows = await self._store.query(POSTS_SQL, span)
        # Off the event loop: a long range's first read builds up to a thousand hours of posts.
        return await asyncio.to_thread(_posts_by_hour, want, rows)

    def _evict(self, keep: str, layout: Layout | None) -> None:
        """Past the limit: the bots read least recently go first; then, if the bot just read is
        still over it alone, what it holds outside `layout` (its statements, hours of other
        ranges), and at last all of it."""
        while (self._held > self.hours_limit or len(self._bots) > MAX_BOTS) and len(self._bots) > 1:
            bot_id = next(iter(self._bots))
            if bot_id == keep:
                self._bots.move_to_end(bot_id)
                continue
            self._forget(bot_id)
        state = self._bots.get(keep)
        if self._held > self.hours_limit and state is not None:
            self._held -= state.drop_statements()
            inside = range(layout.lo, layout.hi) if layout is not None else range(0)
            for h in [h for h in {*state.hours, *state.posts} if h not in inside]:
                self._held -= state.drop_hour(h)
            if self._held > self.hours_limit:
                self._forget(keep)
        self._gauge()
