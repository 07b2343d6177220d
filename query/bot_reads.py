"""What a bot's answer (`GET /v1/bot/{botId}`) reads, planned in one place: the service runs
this plan (query/app.py `get_bot_info`) and bench/engine_reads.py times the very same
statements.

Two rounds. First one statement, `head_statement`: the bot's last post (`bot_latest`), what the
bot has beside its posts (`bot_extents`, migration 0038) and, when the range starts at the first
post, that post (`bot_stats_1d`). Then `plan` lists what the answer needs, run side by side: the
buckets, and only the reads the bot has rows for: its custom-graph names, properties and shards
(one statement, a scalar column each) and its custom-event totals when the range meets the
bot's events. In the engine each statement has a fixed cost and every table a statement touches
costs milliseconds even when the bot has no rows there, so a bot with none of these (most bots)
costs two statements of two and one table. The side reads a bot is known to have (`Known`)
ride in its head statement instead, so a bot with everything costs three, as before.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

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


def head_statement(bot_id: str, *, with_first: bool, side: tuple[str, ...] = ()) -> Statement:
    """The first round: the bot's last post and extents, its first post when asked, and the
    side reads in `side` (those the bot is known to have, see `Known`)."""
    columns = [_LAST, _EXTENTS, *([_FIRST] if with_first else []), *(SIDE_COLUMNS[c] for c in side)]
    return "SELECT " + ", ".join(columns), {"id": bot_id}


def head_of(row: tuple[Any, ...], *, with_first: bool, side: tuple[str, ...] = ()) -> Head:
    """The row of `head_statement` (made with the same `with_first` and `side`) as a `Head`."""
    (last, posted), (names, props, shards, events_first, events_last) = row[0], row[1]
    first = None
    if with_first and row[2][1]:
        first = int(row[2][0])
    events = None if events_first is None else (int(events_first), int(events_last))
    read = dict(zip(side, row[3 if with_first else 2 :], strict=True))
    return Head(int(last) if posted else None, first, bool(names), bool(props), bool(shards), events, read)


class Known:
    """The side reads each bot is known to have, so that they ride in its head statement. Each
    is a fact that never turns false (`bot_extents` flags only ever become 1, and nothing
    deletes a bot's names, properties or shards); were one stale, reading a column the bot has
    no rows in answers what leaving it out does. A bot with everything thus costs the
    statements it did before the two rounds, a bot with nothing two. Bounded: cleared when full."""

    def __init__(self, limit: int = 100_000) -> None:
        self._sides: dict[str, tuple[str, ...]] = {}
        self._limit = limit

    def side(self, bot_id: str) -> tuple[str, ...]:
        return self._sides.get(bot_id, ())

    def learn(self, bot_id: str, head: Head) -> None:
        has = head.has()
        if has and self._sides.get(bot_id) != has:
            if len(self._sides) >= self._limit:
                self._sides.clear()
            self._sides[bot_id] = has


async def read_head(store: Store, bot_id: str, *, with_first: bool, known: Known | None = None) -> Head:
    side = known.side(bot_id) if known is not None else ()
    row = (await store.query(*head_statement(bot_id, with_first=with_first, side=side)))[0]
    head = head_of(row, with_first=with_first, side=side)
    if known is not None:
        known.learn(bot_id, head)
    return head


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

    buckets: Statement | None
    side: Statement | None
    side_columns: tuple[str, ...]
    totals: Statement | None

    def statements(self) -> list[Statement]:
        return [s for s in (self.buckets, self.side, self.totals) if s is not None]


def plan(bot_id: str, head: Head, stats: Range | None) -> Plan:
    """What the answer reads after `head`: the buckets and totals of `stats` (None: no stats),
    and only the side reads the bot has that the head did not read already."""
    wanted = tuple(c for c in head.has() if c not in head.side)
    side = None
    if wanted:
        side = ("SELECT " + ", ".join(SIDE_COLUMNS[c] for c in wanted), {"id": bot_id})
    buckets = totals = None
    if stats is not None:
        buckets = buckets_statement(bot_id, stats.start, stats.end, stats.points)
        # `custom_events` holds rows in [start, end) only if the range meets the bot's events.
        if head.events is not None and stats.start <= head.events[1] and head.events[0] < stats.end:
            totals = totals_statement(bot_id, stats.start, stats.end)
    return Plan(buckets, side, wanted, totals)


class Answer(msgspec.Struct, frozen=True):
    names: list[str]
    extras: Extras
    stats: list[dict[str, Any]] | None
    totals: dict[str, dict[str, Any]]


async def run(store: Store, head: Head, p: Plan, stats: Range | None, now: int, window_ms: int) -> Answer:
    """The statements of `p` (planned from `head`), side by side (one engine handle each), decoded."""
    results = iter(await asyncio.gather(*(store.query(*s) for s in p.statements())))
    bucket_rows = next(results) if p.buckets is not None else []
    side = dict(head.side)
    if p.side is not None:
        side.update(zip(p.side_columns, next(results)[0], strict=True))
    totals = totals_of(next(results)) if p.totals is not None else {}
    names = list(side.get("names", []))
    extras = extras_of(side.get("props", []), side.get("shards", []), now, window_ms)
    rows = None
    if stats is not None:
        rows = buckets_of(bucket_rows, stats.start, stats.end, stats.points, names)
    return Answer(names, extras, rows, totals)
