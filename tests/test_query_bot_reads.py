"""`GET /v1/bot/{botId}` reads only what the bot has (query/bot_reads.py, `bot_extents` of
migration 0038) and answers exactly what the statements before that change answered, for every
kind of bot and range; also on data written before the migration (its back-fill)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from botpulse.query.app import build_app
from botpulse.query.bot_reads import Known, Range, plan, read_head
from botpulse.query.shards import connection_state, extras_of
from botpulse.query.stats import buckets, custom_totals
from botpulse.query.uptime import connection_status
from botpulse.registry.catalog import Bot, create_account, now, write_bot
from botpulse.runtime.clickhouse import ReadRefused
from botpulse.runtime.migrations import migrate
from botpulse.runtime.settings import Settings
from botpulse.workers.rows import CUSTOM_COLUMNS, NAMES_COLUMNS, PROPS_COLUMNS, SHARDS_COLUMNS, STATS_COLUMNS
from tests.test_query_stats import get, stat, ts

MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000

# Today's statements (before 0038), kept here as the reference: the last post is the newest
# `bot_stats` row (given a start) or, with the first post, from the daily roll-up; names,
# properties and shards are read for every bot, totals for every range.
_OLD_LAST = (
    "(SELECT groupArray(toUnixTimestamp64Milli(ts)) FROM (SELECT ts FROM bot_stats"
    " WHERE bot_id = {id:String} ORDER BY ts DESC LIMIT 1))"
)
_OLD_FIRST_LAST = (
    "(SELECT (toUnixTimestamp64Milli(min(first_ts)), toUnixTimestamp64Milli(max(last_ts)), count())"
    " FROM bot_stats_1d WHERE bot_id = {id:String})"
)
_OLD_REST = (
    "(SELECT arraySort(groupUniqArray(name)) FROM custom_metric_names WHERE bot_id = {id:String}),"
    " (SELECT groupArray((name, v)) FROM (SELECT name, argMax(value, ts) AS v FROM bot_props"
    " WHERE bot_id = {id:String} GROUP BY name ORDER BY name)),"
    " (SELECT groupArray((shard_id, last, up)) FROM (SELECT shard_id,"
    " toUnixTimestamp64Milli(max(last_ts)) AS last, argMaxMerge(up) AS up FROM shard_latest"
    " WHERE bot_id = {id:String} GROUP BY shard_id))"
)

KINDS = ["plain", "names", "props", "shards", "events", "all", "nothing"]
_VIEWS = ("events", "props", "shards", "names")


def _id(kind: str) -> str:
    return str(1000 + KINDS.index(kind))


async def _write(store, kind: str, n: int) -> None:
    """The rows of one kind of bot; `n` is now (ms). Posts 3 days, 2 hours and 1 minute ago;
    custom events 2 days and 90 minutes ago."""
    bot = _id(kind)
    if kind == "nothing":
        return
    custom = {"votes": 3.0} if kind in ("names", "all") else {}
    posts = [stat(bot, n - 3 * DAY, guilds=5, cpu=1.0, custom=custom), stat(bot, n - 2 * HOUR, users=9)]
    await store.insert("bot_stats", posts, STATS_COLUMNS)  # two inserts: two parts
    await store.insert("bot_stats", [stat(bot, n - MIN, guilds=6, cpu=3.0, custom=custom)], STATS_COLUMNS)
    if kind in ("names", "all"):
        names = [[bot, "votes", ts(n - 3 * DAY)], [bot, "unposted", ts(n - 3 * DAY)]]
        await store.insert("custom_metric_names", names, NAMES_COLUMNS)
    if kind in ("props", "all"):
        await store.insert("bot_props", [[bot, "version", ts(n - DAY), "1.0"]], PROPS_COLUMNS)
        props = [[bot, "version", ts(n - MIN), "1.1"], [bot, "lib", ts(n - MIN), "disstat"]]
        await store.insert("bot_props", props, PROPS_COLUMNS)
    if kind in ("shards", "all"):
        shards = [
            [bot, 0, ts(n - MIN), uuid.uuid4().hex, 1, "ready", 10, 100, 40.0],
            [bot, 1, ts(n - MIN), uuid.uuid4().hex, 0, "down", 11, 110, None],
            [bot, 2, ts(n - 3 * DAY), uuid.uuid4().hex, 1, "ready", 1, 1, 1.0],  # no longer known
        ]
        await store.insert("shard_stats", shards, SHARDS_COLUMNS)
    if kind in ("events", "all"):
        events = [
            [bot, ts(n - 2 * DAY), uuid.uuid4().hex, "command", "help", None, None, None, None, None],
            [bot, ts(n - 2 * DAY), uuid.uuid4().hex, "command", "ping", None, None, None, None, None],
        ]
        await store.insert("custom_events", events, CUSTOM_COLUMNS)
        late = [bot, ts(n - 90 * MIN), uuid.uuid4().hex, "vote", None, None, None, None, None, None]
        await store.insert("custom_events", [late], CUSTOM_COLUMNS)


@pytest.fixture(params=[False, True], ids=["live", "backfilled"])
async def fleet(request, settings, store, redis) -> AsyncIterator[dict[str, Any]]:
    backfilled = request.param
    if backfilled:  # an install from before 0038: the data is there, bot_extents is not
        for view in _VIEWS:
            store.command_sync(f"DROP VIEW bot_extents_{view}_mv")
        store.command_sync("DROP TABLE bot_extents")
    account, _ = await create_account(store, redis, "fleet")
    created = now()
    n = int(created.timestamp() * 1000)
    for kind in KINDS:
        await write_bot(store, redis, Bot(_id(kind), account.id, kind, None, False, 10, None, created))
        await _write(store, kind, n)
    if backfilled:
        store.command_sync(
            "ALTER TABLE schema_migrations DELETE WHERE version"
            " IN ('0038_bot_extents', '0039_bot_extents_backfill') SETTINGS mutations_sync = 2"
        )
        assert migrate(store) == ["0038_bot_extents", "0039_bot_extents_backfill"]
    client = TestClient(TestServer(build_app(settings, store), host="127.0.0.1"))
    await client.start_server()
    # As against a ClickHouse server, where other processes write: no answers from memory.
    server = TestClient(TestServer(build_app(without_memory(settings), store), host="127.0.0.1"))
    await server.start_server()
    yield {
        "client": client,
        "server": server,
        "store": store,
        "now": n,
        "created": n,
        "window": settings.heartbeat_window_ms,
    }
    await server.close()
    await client.close()


def without_memory(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, query_memory_hours=0)


async def _today(store, bot: str, created: int, q: dict[str, Any], window: int) -> dict[str, Any]:
    """The answer's data fields as the statements before 0038 gave them."""
    stats = q.get("returnStats") == "true"
    with_start = stats and "start" in q
    row = store.query_rows(f"SELECT {_OLD_LAST if with_start else _OLD_FIRST_LAST}, {_OLD_REST}", {"id": bot})
    seen, names, props, shards = row[0]
    if with_start:
        first, last = None, (int(seen[0]) if seen else None)
    else:
        first, last = (int(seen[0]), int(seen[1])) if seen[2] else (None, None)
    now_ms = int(now().timestamp() * 1000)
    extras = extras_of(props, shards, now_ms, window)
    status = connection_status(last, window)
    body: dict[str, Any] = {
        "lastSeen": last,
        "connectionStatus": status,
        "connectionState": connection_state(status, extras.shards),
        "shardsUp": extras.shards.up if extras.shards else None,
        "shardsTotal": extras.shards.total if extras.shards else None,
        "customGraphs": list(names),
        "properties": extras.properties,
    }
    if stats:
        start = int(q["start"]) if with_start else (first if first is not None else created)
        end, points = int(q["end"]), int(q["dataPoints"])
        body["range"] = {"start": start, "end": end, "dataPoints": points}
        body["stats"] = await buckets(store, bot, start, end, points, list(names))
        body["customTotals"] = await custom_totals(store, bot, start, end)
    return body


def _ranges(n: int) -> dict[str, dict[str, Any] | None]:
    """Named queries; None: no stats. `end` is always given, so both answers see one range."""
    aligned_end = -(-n // HOUR) * HOUR
    return {
        "no stats": None,
        "from the first post": {"end": n + 1},
        "30 d hour-aligned": {"start": aligned_end - 30 * DAY, "end": aligned_end, "dataPoints": 90},
        "any range": {"start": n - 3 * DAY + 17, "end": n + 1, "dataPoints": 7},
        "before the events": {"start": n - 10 * DAY, "end": n - 2 * DAY, "dataPoints": 4},
        "after the events": {"start": n - 90 * MIN + 1, "end": n + 1, "dataPoints": 3},
        "from the last event": {"start": n - 90 * MIN, "end": n + 1, "dataPoints": 3},
        "up to the first event": {"start": n - 10 * DAY, "end": n - 2 * DAY + 1, "dataPoints": 5},
    }


async def _asks_as_before(client, fleet, kind: str, name: str, rng: dict[str, Any] | None) -> dict[str, Any]:
    """Ask `client` for a bot of `kind` over `rng` (None: no stats) and hold the answer's data
    fields to what the statements before 0038 gave; the body."""
    q: dict[str, Any] = {} if rng is None else {"returnStats": "true", "dataPoints": 6, **rng}
    q = {k: str(v) for k, v in q.items()}
    status, body = await get(client, f"/v1/bot/{_id(kind)}", **q)
    assert status == 200, body
    want = await _today(fleet["store"], _id(kind), fleet["created"], q, fleet["window"])
    assert {k: body[k] for k in want} == want, (kind, name)
    return body


async def test_every_kind_of_bot_gets_the_answer_it_got_before(fleet, settings):
    c, store = fleet["client"], fleet["store"]
    compared = 0
    # In both orders, each on a fresh service: a bot's first answer reads its side reads in the
    # second round, the later ones in the head (`Known`); stats or not come first either way.
    fresh = TestClient(TestServer(build_app(settings, store), host="127.0.0.1"))
    await fresh.start_server()
    try:
        for client, order in ((c, list), (fresh, reversed), (fleet["server"], list)):
            for kind in KINDS:
                for name, rng in order(list(_ranges(fleet["now"]).items())):
                    body = await _asks_as_before(client, fleet, kind, name, rng)
                    assert ("stats" in body) is (rng is not None)
                    compared += 1
    finally:
        await fresh.close()
    assert compared == 3 * len(KINDS) * 8
    # The cases hold what they claim: a bot of each kind has what its name says.
    _, body = await get(
        c, f"/v1/bot/{_id('all')}", returnStats="true", start=fleet["now"] - DAY, end=fleet["now"]
    )
    assert body["customGraphs"] == ["unposted", "votes"]
    assert body["properties"] == {"lib": "disstat", "version": "1.1"}
    assert (body["shardsUp"], body["shardsTotal"], body["connectionState"]) == (1, 2, "degraded")
    assert body["customTotals"] == {"vote": {"count": 1, "top": []}}
    _, body = await get(c, f"/v1/bot/{_id('nothing')}", returnStats="true", dataPoints=2)
    assert body["lastSeen"] is None and body["range"]["start"] == fleet["created"]


async def test_the_plan_reads_only_what_the_bot_has(fleet):
    store, n = fleet["store"], fleet["now"]
    aligned_end = -(-n // HOUR) * HOUR
    month = Range(aligned_end - 30 * DAY, aligned_end, 90)
    expected = {  # after the head: buckets, then side reads, then totals
        "plain": (None, False),
        "nothing": (None, False),
        "names": (("names",), False),
        "props": (("props",), False),
        "shards": (("shards",), False),
        "events": (None, True),
        "all": (("names", "props", "shards"), True),
    }
    for kind, (side, totals) in expected.items():
        head = await read_head(store, _id(kind), with_first=False)
        p = plan(_id(kind), head, month)
        assert (p.side_columns or None, p.totals is not None) == (side, totals), kind
        assert len(p.statements()) == 1 + (side is not None) + totals, kind
        assert plan(_id(kind), head, None).statements() == ([p.side] if side else []), kind
        # A first sight reads every side read in the head, from the tables themselves; after it
        # the head carries the ones the bot has: the same values, no statement of their own.
        known = Known()
        first = await read_head(store, _id(kind), with_first=False, known=known)
        assert tuple(first.side) == ("names", "props", "shards") and first.events == head.events, kind
        again = await read_head(store, _id(kind), with_first=True, known=known)
        assert tuple(again.side) == (side or ()) and (again.first is not None) is (kind != "nothing"), kind
        rest = [p.buckets, *([p.totals] if totals else [])]
        for h in (first, again):
            assert plan(_id(kind), h, month).statements() == rest, kind
        if side:
            side_rows = store.query_rows(*p.side)[0]
            assert tuple(again.side.values()) == tuple(side_rows), kind
    head = await read_head(store, _id("events"), with_first=False)
    assert head.events == (n - 2 * DAY, n - 90 * MIN)
    # Totals only when [start, end) meets [first event, last event].
    for (start, end), reads in [
        ((n - 10 * DAY, n - 2 * DAY), False),  # ends where the first event is: excluded
        ((n - 10 * DAY, n - 2 * DAY + 1), True),
        ((n - 90 * MIN, n), True),  # starts at the last event: included
        ((n - 90 * MIN + 1, n), False),
        ((n - DAY, n - DAY + HOUR), True),  # between two events: the bounds cannot tell
    ]:
        assert (plan(_id("events"), head, Range(start, end, 4)).totals is not None) is reads, (start, end)


async def test_what_bot_extents_lacks_is_read_from_the_tables_on_a_first_sight(fleet, settings):
    # As if a cluster shard's back-fill had been missed, or an insert was in flight while 0038
    # ran: no bot_extents rows at all. A service's first answer for each bot reads the tables
    # themselves, and what it learnt holds for its later answers.
    store, n = fleet["store"], fleet["now"]
    store.command_sync("TRUNCATE TABLE bot_extents")
    fresh = TestClient(TestServer(build_app(settings, store), host="127.0.0.1"))
    await fresh.start_server()
    try:
        for kind in KINDS:
            for name, rng in _ranges(n).items():
                await _asks_as_before(fresh, fleet, kind, name, rng)
    finally:
        await fresh.close()
    _, body = await get(fleet["client"], f"/v1/bot/{_id('all')}", returnStats="true", start=n - DAY, end=n)
    assert body["customTotals"] == {"vote": {"count": 1, "top": []}}  # the cases hold something


async def test_last_seen_outlives_the_retention_of_the_posts(settings, store, redis):
    # `bot_latest` keeps the last post after `bot_stats` and the roll-ups expired it (TTL).
    account, _ = await create_account(store, redis, "old")
    created = now()
    await write_bot(store, redis, Bot("77", account.id, "Old", None, False, 10, None, created))
    long_ago = int(created.timestamp() * 1000) - (settings.retention_days + 5) * DAY
    await store.insert("bot_stats", [stat("77", long_ago, guilds=1)], STATS_COLUMNS)
    for table in ("bot_stats", "bot_stats_1h", "bot_stats_1d"):
        store.command_sync(f"OPTIMIZE TABLE {table} FINAL")
        assert store.query_rows(f"SELECT count() FROM {table} WHERE bot_id = '77'") == [(0,)], table
    client = TestClient(TestServer(build_app(settings, store), host="127.0.0.1"))
    await client.start_server()
    try:
        for q in ({}, {"returnStats": "true", "dataPoints": "2"}):
            _, body = await get(client, "/v1/bot/77", **q)
            assert body["lastSeen"] == long_ago and body["connectionStatus"] == "disconnected"
        # No post left: the range still starts at the bot's creation, as before.
        assert body["range"]["start"] == int(created.timestamp() * 1000)
    finally:
        await client.close()


def _traced(store, monkeypatch, fail: str | None = None, slow: str | None = None) -> list[tuple[str, str]]:
    """Record when the answer's head and buckets reads start and end, on the real store;
    `fail`: that read is refused, as when the engine's read slots are full; `slow`: that read
    waits first, so it is still under way when the other fails."""
    events: list[tuple[str, str]] = []
    real = store.query

    async def query(sql, params=None, settings=None):
        kind = (
            "head"
            if "bot_latest" in sql
            else "buckets"
            if "FROM bot_stats_1h" in sql or "FROM bot_stats WHERE" in sql
            else "other"
        )
        if kind == "other":  # the bot's record, the side reads, the totals
            return await real(sql, params, settings)
        events.append(("start", kind))
        try:
            if kind == slow:
                await asyncio.sleep(30)
            if kind == fail:
                await asyncio.sleep(0.05)  # the other read is under way meanwhile
                raise ReadRefused("Too many reads at once, try again shortly", "query_max_queued")
            rows = await real(sql, params, settings)
        except asyncio.CancelledError:
            events.append(("cancelled", kind))
            raise
        events.append(("end", kind))
        return rows

    monkeypatch.setattr(store, "query", query)
    return events


async def test_a_given_start_reads_the_buckets_beside_the_head_where_reads_overlap(fleet, monkeypatch):
    c, n, store = fleet["server"], fleet["now"], fleet["store"]
    events = _traced(store, monkeypatch)
    aligned_end = -(-n // HOUR) * HOUR
    q = {"returnStats": "true", "start": aligned_end - 30 * DAY, "end": aligned_end, "dataPoints": 90}
    one_after_the_other = [("start", "head"), ("end", "head"), ("start", "buckets"), ("end", "buckets")]
    # As the store says: embedded chDB one after the other (side by side was slower there).
    status, before = await get(c, f"/v1/bot/{_id('all')}", **q)
    assert status == 200 and len(before["stats"]) == 90
    if not store.reads_overlap:
        assert events == one_after_the_other, events
    else:
        assert sorted(events[:2]) == [("start", "buckets"), ("start", "head")], events
    # Against a server: both start before either ends, the buckets do not wait for the head,
    # and the answer is the same.
    monkeypatch.setattr(store, "reads_overlap", True)
    events.clear()
    status, body = await get(c, f"/v1/bot/{_id('all')}", **q)
    assert status == 200 and body == before
    assert sorted(events[:2]) == [("start", "buckets"), ("start", "head")], events
    assert sorted(events[2:]) == [("end", "buckets"), ("end", "head")], events
    # From the first post, the range needs the head's answer: the buckets come after it.
    events.clear()
    status, body = await get(c, f"/v1/bot/{_id('plain')}", returnStats="true", end=n + 1)
    assert status == 200 and body["range"]["start"] == n - 3 * DAY
    assert events == one_after_the_other


@pytest.mark.parametrize("fail", ["head", "buckets"])
async def test_a_failed_read_of_the_first_round_stops_the_other(fleet, monkeypatch, fail):
    other = {"head": "buckets", "buckets": "head"}[fail]
    events = _traced(fleet["store"], monkeypatch, fail=fail, slow=other)
    monkeypatch.setattr(fleet["store"], "reads_overlap", True)
    n = fleet["now"]
    q = {"returnStats": "true", "start": n - DAY, "end": n, "dataPoints": 4}
    status, body = await get(fleet["server"], f"/v1/bot/{_id('plain')}", **q)
    # The refusal answers as any refused read does, and the read still under way was stopped
    # (a cancelled engine read is killed), not left running behind the answer.
    assert status == 503 and body["limit"] == "query_max_queued", body
    assert ("cancelled", other) in events and ("end", other) not in events, events
