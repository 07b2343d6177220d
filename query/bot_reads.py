"""What a bot's answer (`GET /v1/bot/{botId}`) reads, planned in one place: the service runs
this plan (query/app.py `get_bot_info`) and bench/engine_reads.py times the very same
statements.

Two rounds. First one statement, `head_statement`: the bot's last post (`bot_latest`), what the
bot has beside its posts (`bot_extents`, migration 0038) and, when the range starts at the first
post, that post (`bot_stats_1d`). Then `plan` lists what the answer needs, run side by side: the
buckets, and only the reads the bot has rows for: its custom-graph names, properties and shards
(one statement, a scalar column each) and its custom-event totals when the range meets the
bot's events. When the caller gave the range's start (the dashboard always does), the buckets
need nothing from the head, so against a ClickHouse server they run beside it in the first round
(`head_and_buckets`) and a plain bot's answer takes about the longer of the two rather than
their sum. Embedded chDB, on data like an install's, ran the two side by side slower than one
after the other (`Store.reads_overlap`), so there they stay in the second round.

In the engine each statement has a fixed cost and every table a statement touches
costs milliseconds even when the bot has no rows there, so a bot with none of these (most bots)
costs two statements of two and one table. The side reads a bot is known to have (`Known`)
ride in its head statement instead, so a bot with everything costs three, as before; a bot's
first answer in a process reads them all from the tables themselves.

Where the process holds the only writer, the service passes its `BotMemory` (query/memory.py):
then the head, side reads and totals come from statements it keeps until a write touches the
bot, and the buckets from the bot's hours and the posts of its ragged hours it holds, so an
answer reads no table unless the bot was written since. Without it (a ClickHouse server, the bench's
engine child) every statement is read from the tables.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import msgspec

from botpulse.query.memory import BotMemory
from botpulse.query.shards import PROPS_COLUMN, SHARDS_COLUMN, Extras, extras_of
from botpulse.query.stats import buckets_of, buckets_statement, totals_of, totals_statement
from botpulse.runtime.clickhouse import Store

Statement = tuple[str, dict[str, Any]]

# The last post: `bot_latest` holds one row per bot once merged (the listing and the alert
# evaluator read the same). Unlike the newest `bot_stats` row it outlives the retention TTL, so
# `lastSeen` stays known after a bot's posts expired.
_LAST = "(SELECT (toUnixTimestamp64Milli(max(last_ts)), count()) FROM bot_latest WHERE bot_id = {id:String})"
_EXTENTS = (
    "(SELECT (max(has_names), max(has_props), max(has_shards), toUnixTimestamp64Milli(min(events_first)),"
    " toUnixTimestamp64Milli(max(events_last))) FROM bot_extents WHERE bot_id = {id:String})"
)
# The first post still held by the daily roll-up (the default start of a range), and its row
# count (0: none left).
_FIRST = (
    "(SELECT (toUnixTimestamp64Milli(min(first_ts)), count()) FROM bot_stats_1d WHERE bot_id = {id:String})"
)
FIRST_SQL = f"SELECT {_FIRST}"
NAMES_COLUMN = "(SELECT arraySort(groupUniqArray(name)) FROM custom_metric_names WHERE bot_id = {id:String})"
# The side reads a bot may have, by the `Head` flag that says it has them.
SIDE_COLUMNS = {"names": NAMES_COLUMN, "props": PROPS_COLUMN, "shards": SHARDS_COLUMN}


class Head(msgspec.Struct, frozen=True):
    last: int | None  # the last post (ms); None: the bot never posted
    first: int | None  # the first post in the daily roll-up; None when not asked or none left
    names: bool  # custom metric names took slots
    props: bool  # properties were posted
    shards: bool  # posts per shard were made
    events: tuple[int, int] | None  # oldest and newest custom event ever inserted (ms)
    # Side columns (`SIDE_COLUMNS` keys) already read with the head, by name.
    side: dict[str, Any] = {}

    def has(self) -> tuple[str, ...]:
        """The side reads this bot has rows for, in `SIDE_COLUMNS` order."""
        return tuple(c for c in SIDE_COLUMNS if getattr(self, c))


# A bot's first answer in a process reads its custom events' bounds from the table itself (see
# `Known`), and their count (0: none).
_EVENTS = (
    "(SELECT (toUnixTimestamp64Milli(min(ts)), toUnixTimestamp64Milli(max(ts)), count())"
    " FROM custom_events WHERE bot_id = {id:String})"
)


def _union(a: tuple[int, int] | None, b: tuple[int, int] | None) -> tuple[int, int] | None:
    if a is None or b is None:
        return a or b
    return min(a[0], b[0]), max(a[1], b[1])


class Sight(msgspec.Struct, frozen=True):
    """How to read a bot's head: the side reads to take in it, and whether this is the bot's
    first answer in this process (`Known`)."""

    side: tuple[str, ...] = ()
    first: bool = False


PLAIN = Sight()  # the head alone: no side reads in it, not a first sight


def head_statement(bot_id: str, *, with_first: bool, sight: Sight = PLAIN) -> Statement:
    """The first round: the bot's last post and extents, its first post when asked, the side
    reads of `sight`, and on a first sight the custom events' bounds from their table."""
    columns = [_LAST, _EXTENTS, *([_FIRST] if with_first else []), *(SIDE_COLUMNS[c] for c in sight.side)]
    if sight.first:
        columns.append(_EVENTS)
    return "SELECT " + ", ".join(columns), {"id": bot_id}


def head_of(row: tuple[Any, ...], *, with_first: bool, sight: Sight = PLAIN) -> Head:
    """The row of `head_statement` (made with the same `with_first` and `sight`) as a `Head`. A
    side read that came back with rows counts as had, whatever the flag said."""
    (last, posted), (names, props, shards, events_first, events_last) = row[0], row[1]
    first = None
    if with_first and row[2][1]:
        first = int(row[2][0])
    events = None if events_first is None else (int(events_first), int(events_last))
    rest = row[3 if with_first else 2 :]
    read = dict(zip(sight.side, rest[: len(sight.side)], strict=True))
    if sight.first:
        low, high, count = rest[len(sight.side)]
        events = _union(events, (int(low), int(high)) if count else None)
    flags = {"names": names, "props": props, "shards": shards}
    has = {c: bool(flags[c]) or bool(read.get(c)) for c in SIDE_COLUMNS}
    return Head(int(last) if posted else None, first, **has, events=events, side=read)


class _Fact(msgspec.Struct, frozen=True):
    side: tuple[str, ...]
    events: tuple[int, int] | None


class Known:
    """What this process learnt of each bot from the tables themselves. A bot's first answer
    reads every side read and its events' bounds directly (the cost of the answer before
    `bot_extents`), so a flag or bound `bot_extents` lacks (a cluster shard whose back-fill was
    missed, an insert in flight while 0038 ran) never hides rows; after that the side reads the
    bot has ride in its head statement and the rest come from `bot_extents`, whose views see
    every later insert. Each fact never turns false (nothing deletes a bot's names, properties,
    shards or events; a stale one only reads a table the bot has no rows in, which answers what
    leaving it out does). So a bot with nothing costs two statements, a bot with everything
    three, as before. Bounded: cleared when full (the bots then have a first sight again)."""

    def __init__(self, limit: int = 100_000) -> None:
        self._facts: dict[str, _Fact] = {}
        self._limit = limit

    def sight(self, bot_id: str) -> Sight:
        fact = self._facts.get(bot_id)
        return Sight(tuple(SIDE_COLUMNS), True) if fact is None else Sight(fact.side)

    def learn(self, bot_id: str, head: Head) -> Head:
        """`head` with what was learnt before added (the events' bounds), remembered."""
        fact = self._facts.get(bot_id)
        if fact is not None and fact.events is not None:
            head = msgspec.structs.replace(head, events=_union(head.events, fact.events))
        new = _Fact(head.has(), head.events)
        if new != fact:
            if fact is None and len(self._facts) >= self._limit:
                self._facts.clear()
            self._facts[bot_id] = new
        return head


def _patched_head(
    rows: list[tuple[Any, ...]], lo: int, hi: int, *, with_first: bool
) -> list[tuple[Any, ...]] | None:
    """The head statement's row after a stored insert of the bot's posts from `lo` to `hi` (ms),
    as the tables then answer: `bot_latest` (no TTL) keeps the newest post's time (`max(ts)`),
    and their row counts only say whether there is any. Nothing else in the head reads
    `bot_stats` or what it feeds. None (read it again) when the first post may move: the daily
    roll-up has a TTL, and the engine drops an insert's rows that are already past it, so a post
    older than the first one held may or may not become the first."""
    row = list(rows[0])
    if with_first:
        first, count = row[2]
        if not count or lo < int(first):
            return None
    last, posted = row[0]
    row[0] = (max(int(last), hi) if posted else hi, max(int(posted), 1))
    return [tuple(row)]


_HEAD_PATCHES = {w: functools.partial(_patched_head, with_first=w) for w in (False, True)}


def _unchanged_by_posts(rows: list[tuple[Any, ...]], lo: int, hi: int) -> list[tuple[Any, ...]]:
    """The side reads and custom totals read tables no post feeds (custom-metric names,
    properties, shards, custom events): a stored insert of posts leaves their rows as they are."""
    return rows


async def read_head(
    store: Store,
    bot_id: str,
    *,
    with_first: bool,
    known: Known | None = None,
    memory: BotMemory | None = None,
) -> Head:
    sight = known.sight(bot_id) if known is not None else PLAIN
    statement = head_statement(bot_id, with_first=with_first, sight=sight)
    if memory is not None:
        row = (await memory.query(*statement, patch=_HEAD_PATCHES[with_first]))[0]
    else:
        row = (await store.query(*statement))[0]
    head = head_of(row, with_first=with_first, sight=sight)
    return known.learn(bot_id, head) if known is not None else head


async def head_and_buckets(
    store: Store, bot_id: str, stats: Range, known: Known | None = None, memory: BotMemory | None = None
) -> tuple[Head, list[tuple[Any, ...]] | None]:
    """The first round when the range was given: the head and, where the engine overlaps reads
    (`Store.reads_overlap`), the buckets of `stats` beside it (the range starts where the caller
    said, so the head's first post is not needed). None for the buckets: they are still due
    (always, with a `memory`: it serves them in the second round)."""
    if memory is not None or not store.reads_overlap:
        return await read_head(store, bot_id, with_first=False, known=known, memory=memory), None
    head_task = asyncio.ensure_future(read_head(store, bot_id, with_first=False, known=known))
    buckets = buckets_statement(bot_id, stats.start, stats.end, stats.points)
    rows_task = asyncio.ensure_future(store.query(*buckets))
    try:
        # Whichever fails first ends the round: the other one may still be under way.
        done, _ = await asyncio.wait((head_task, rows_task), return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # raises the failure, if one ended the wait
        return head_task.result(), rows_task.result()
    except BaseException:
        # Either failing (or the request going away) stops the other: a cancelled read is
        # killed in the engine, and nothing is left running unawaited.
        for task in (head_task, rows_task):
            task.cancel()
        await asyncio.gather(head_task, rows_task, return_exceptions=True)
        raise


async def first_post(store: Store, bot_id: str) -> int | None:
    """The bot's first post still in the daily roll-up (the default start of its ranges)."""
    first, count = (await store.query(FIRST_SQL, {"id": bot_id}))[0][0]
    return int(first) if count else None


class Range(msgspec.Struct, frozen=True):
    start: int
    end: int
    points: int


class Plan(msgspec.Struct, frozen=True):
    """The second round. `side` reads the columns named in `side_columns` (a subset of `names`,
    `props`, `shards`, in that order); a read left out answers empty."""

    bot_id: str
    buckets: Statement | None
    side: Statement | None
    side_columns: tuple[str, ...]
    totals: Statement | None

    def statements(self) -> list[Statement]:
        return [s for s in (self.buckets, self.side, self.totals) if s is not None]


def plan(bot_id: str, head: Head, stats: Range | None, *, buckets_read: bool = False) -> Plan:
    """What the answer reads after `head`: the buckets (unless `buckets_read`: they ran beside
    the head) and totals of `stats` (None: no stats), and only the side reads the bot has that
    the head did not read already."""
    wanted = tuple(c for c in head.has() if c not in head.side)
    side = None
    if wanted:
        side = ("SELECT " + ", ".join(SIDE_COLUMNS[c] for c in wanted), {"id": bot_id})
    buckets = totals = None
    if stats is not None:
        if not buckets_read:
            buckets = buckets_statement(bot_id, stats.start, stats.end, stats.points)
        # `custom_events` holds rows in [start, end) only if the range meets the bot's events.
        if head.events is not None and stats.start <= head.events[1] and head.events[0] < stats.end:
            totals = totals_statement(bot_id, stats.start, stats.end)
    return Plan(bot_id, buckets, side, wanted, totals)


async def _held_buckets(
    store: Store, memory: BotMemory, bot_id: str, statement: Statement, stats: Range
) -> list[tuple[Any, ...]]:
    rows = await memory.buckets(bot_id, stats.start, stats.end, stats.points)
    return rows if rows is not None else await store.query(*statement)


class Answer(msgspec.Struct, frozen=True):
    names: list[str]
    extras: Extras
    stats: list[dict[str, Any]] | None
    totals: dict[str, dict[str, Any]]


async def run(
    store: Store,
    head: Head,
    p: Plan,
    stats: Range | None,
    now: int,
    window_ms: int,
    bucket_rows: list[tuple[Any, ...]] | None = None,
    memory: BotMemory | None = None,
) -> Answer:
    """The statements of `p` (planned from `head`), side by side (one engine handle each),
    decoded; `bucket_rows`: the buckets' rows when they were read beside the head. With a
    `memory`, the buckets come from what it holds (a range longer than it holds is read from
    the tables), the rest from the statements it keeps."""
    if memory is not None:
        reads = [memory.query(*s, patch=_unchanged_by_posts) for s in (p.side, p.totals) if s is not None]
    else:
        reads = [store.query(*s) for s in (p.side, p.totals) if s is not None]
    if p.buckets is not None:  # planned only with `stats`
        if memory is not None and stats is not None:
            reads.insert(0, _held_buckets(store, memory, p.bot_id, p.buckets, stats))
        else:
            reads.insert(0, store.query(*p.buckets))
    results = iter(await asyncio.gather(*reads))
    if p.buckets is not None:
        bucket_rows = next(results)
    side = dict(head.side)
    if p.side is not None:
        side.update(zip(p.side_columns, next(results)[0], strict=True))
    totals = totals_of(next(results)) if p.totals is not None else {}
    names = list(side.get("names", []))
    extras = extras_of(side.get("props", []), side.get("shards", []), now, window_ms)
    rows = None
    if stats is not None:
        rows = buckets_of(bucket_rows or [], stats.start, stats.end, stats.points, names)
    return Answer(names, extras, rows, totals)
