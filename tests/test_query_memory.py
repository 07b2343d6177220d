"""query/memory.py: a bot's answers from memory are the tables' answers, through writes that land
before, between and during its reads; and a warm dashboard read reads no table at all."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import settings as settings_
from hypothesis import strategies as st

from botpulse.query import memory as memory_mod
from botpulse.query.app import BOT_MEMORY, build_app
from botpulse.query.memory import HOURS_SQL, POSTS_SQL, BotMemory, Columns, Layout, Posts, bucket_rows
from botpulse.query.stats import buckets_of, ragged_hours
from botpulse.registry.catalog import Bot, create_account, now, write_bot
from botpulse.workers.rows import COLUMNS, NAMES_COLUMNS, STATS_COLUMNS
from tests.test_query_stats import T0, get, reference, stat, ts

HOUR = 3_600_000
DAY = 24 * HOUR
BOTS = ("7001", "7002")


def columns_of(rows: list[list[Any]]) -> list[list[Any]]:
    """Rows as the worker inserts them: one list per column, times in plain milliseconds."""
    cols = [list(c) for c in zip(*rows, strict=True)]
    cols[1] = [int(t.timestamp() * 1000 + 0.5) for t in cols[1]]
    return cols


@pytest.fixture
async def two(settings, store, redis) -> AsyncIterator[dict[str, Any]]:
    account, _ = await create_account(store, redis, "memory")
    created = now()
    for bot in BOTS:
        await write_bot(store, redis, Bot(bot, account.id, bot, None, False, 10, None, created))
    n = int(created.timestamp() * 1000)
    held = TestClient(TestServer(build_app(settings, store), host="127.0.0.1"))
    off = msgspec.structs.replace(settings, query_memory_hours=0)
    tables = TestClient(TestServer(build_app(off, store), host="127.0.0.1"))
    await held.start_server()
    await tables.start_server()
    assert held.app[BOT_MEMORY] is not None and tables.app[BOT_MEMORY] is None
    yield {"held": held, "tables": tables, "store": store, "now": n}
    await tables.close()
    await held.close()


def aligned(n: int, days: int, points: int) -> dict[str, Any]:
    end = -(-n // HOUR) * HOUR
    return {"returnStats": "true", "start": end - days * DAY, "end": end, "dataPoints": points}


async def same_answers(w: dict[str, Any], bot: str, q: dict[str, Any]) -> dict[str, Any]:
    s1, held = await get(w["held"], f"/v1/bot/{bot}", **q)
    s2, tables = await get(w["tables"], f"/v1/bot/{bot}", **q)
    assert s1 == s2 == 200, (held, tables)
    assert held.keys() == tables.keys()
    for k in held:
        if k != "stats":
            assert held[k] == tables[k], k
    for a, b in zip(held.get("stats", []), tables.get("stats", []), strict=True):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(b[k], float):
                assert a[k] == pytest.approx(b[k], rel=1e-9), k
            elif k == "custom":
                assert a[k].keys() == b[k].keys()
                for name, v in a[k].items():
                    assert v == (pytest.approx(b[k][name], rel=1e-9) if v is not None else None), name
            else:
                assert a[k] == b[k], k
    return held


def traced(store, monkeypatch) -> list[str]:
    """The statements the store runs from now on (their first words, enough to tell)."""
    seen: list[str] = []
    real = store.query

    async def query(sql, params=None, settings=None):
        seen.append(sql)
        return await real(sql, params, settings)

    monkeypatch.setattr(store, "query", query)
    return seen


async def test_answers_from_memory_are_the_tables_answers_through_writes(two):
    store, n = two["store"], two["now"]
    rng = random.Random(11)
    ranges = [
        aligned(n, 30, 90), aligned(n, 3, 72), aligned(n, 2, 6), aligned(n, 1, 1),
        # Any range: whole hours and the pieces of the ragged ones.
        {"returnStats": "true", "start": n - 30 * DAY - 1_234_567, "end": n - 1_234, "dataPoints": 90},
        {"returnStats": "true", "start": n - 3 * HOUR + 17, "end": n + HOUR, "dataPoints": 7},
        {"returnStats": "true", "start": n - 2 * HOUR, "end": n + 1, "dataPoints": 500},
        # From the first post (the head's, patched by each post the worker stores).
        {"returnStats": "true", "end": n + HOUR, "dataPoints": 12},
        {},
    ]  # fmt: skip
    memory: BotMemory = two["held"].app[BOT_MEMORY]
    t = n - 31 * DAY
    for round_ in range(8):
        # Every round posts into hours already held, older ones, the current one and the next.
        rows = []
        for bot in BOTS:
            for _ in range(rng.randrange(20, 200)):
                t_post = rng.choice(
                    [t + rng.randrange(31 * DAY), n - rng.randrange(2 * HOUR), n + rng.randrange(HOUR)]
                )
                custom = {"votes": float(rng.randrange(9))} if rng.random() < 0.3 else {}
                rows.append(
                    stat(
                        bot, t_post, guilds=rng.choice([None, rng.randrange(99)]), cpu=rng.random(),
                        api_ping=rng.choice([None, rng.random()]), custom=custom,
                        ram_total=rng.choice([None, rng.random() * 8]),
                    )
                )  # fmt: skip
        if round_ % 2:  # as the worker does: column-oriented, times in ms
            await store.insert("bot_stats", columns_of(rows), COLUMNS["bot_stats"], column_oriented=True)
        else:
            await store.insert("bot_stats", rows, STATS_COLUMNS)
        for bot in BOTS:
            for q in ranges:
                await same_answers(two, bot, q)
    # Reads with nothing written between them load nothing more.
    loads = memory.loads
    for bot in BOTS:
        for q in ranges:
            await same_answers(two, bot, q)
    assert memory.loads == loads
    # A post held nowhere (another bot) leaves both bots' hours alone.
    await store.insert("bot_stats", [stat("9999", n, guilds=1)], STATS_COLUMNS)
    await same_answers(two, BOTS[0], ranges[0])
    assert memory.loads == loads


async def test_a_warm_dashboard_read_reads_no_table(two, monkeypatch):
    store, n, bot = two["store"], two["now"], BOTS[0]
    rows = [stat(bot, n - k * 600_000, guilds=k, cpu=k / 7) for k in range(400)]
    await store.insert("bot_stats", rows, STATS_COLUMNS)
    q = aligned(n, 30, 90)
    # The first answer reads every side read in its head (a first sight, query/bot_reads.py
    # `Known`), the second its usual head: both statements are then held.
    await same_answers(two, bot, q)
    await same_answers(two, bot, q)
    seen = traced(store, monkeypatch)
    _, body = await get(two["held"], f"/v1/bot/{bot}", **q)
    assert seen == [], seen
    assert body["lastSeen"] == n and body["stats"][-1]["guilds"] == 0
    # A post in the current hour, as the worker inserts it: that one hour is read again, nothing
    # else (the head takes the post in: its newest time is the post's).
    post = columns_of([stat(bot, n + 1, guilds=777)])
    await store.insert("bot_stats", post, COLUMNS["bot_stats"], column_oriented=True)
    _, body = await get(two["held"], f"/v1/bot/{bot}", **q)
    assert seen == [HOURS_SQL], seen
    seen.clear()
    assert (await same_answers(two, bot, q)) == body
    assert body["lastSeen"] == n + 1 and body["stats"][-1]["guilds"] == 777
    seen.clear()
    await get(two["held"], f"/v1/bot/{bot}", **q)
    assert seen == []
    # A write to another table of the bot's (a custom metric's name) drops its statements, not
    # its hours.
    await store.insert("custom_metric_names", [[bot, "votes", ts(n)]], NAMES_COLUMNS)
    _, body = await get(two["held"], f"/v1/bot/{bot}", **q)
    assert seen and HOURS_SQL not in seen, seen
    assert body["customGraphs"] == ["votes"]
    assert (await same_answers(two, bot, q)) == body


@pytest.mark.parametrize("during", ["hours", "posts", "head"])
async def test_a_write_landing_during_a_read_is_never_masked(two, monkeypatch, during):
    # The read's rows predate the write, which is stored (and heard) before the read returns:
    # kept, they would hide the write from every later answer.
    store, n, bot = two["store"], two["now"], BOTS[1]
    q = aligned(n, 2, 48)
    if during == "posts":  # the hour written to is a ragged one: its posts are read
        q = {"returnStats": "true", "start": n - 2 * DAY, "end": n - HOUR + 6, "dataPoints": 47}
    await store.insert("bot_stats", [stat(bot, n - HOUR, guilds=1)], STATS_COLUMNS)
    # Past the bot's first sight, so the armed read's head statement is the one asked after it.
    await get(two["tables"], f"/v1/bot/{bot}", **q)
    await get(two["held"], f"/v1/bot/{bot}", **q)
    store.command_sync("SELECT 1")  # nothing held: the armed read loads the hours again
    real = store.query
    armed = [True]

    async def query(sql, params=None, settings=None):
        rows = await real(sql, params, settings)
        is_target = {"hours": sql is HOURS_SQL, "posts": sql is POSTS_SQL}.get(during, "bot_latest" in sql)
        if armed[0] and is_target:
            armed[0] = False
            await store.insert(
                "bot_stats",
                columns_of([stat(bot, n - HOUR + 5, guilds=2)]),
                COLUMNS["bot_stats"],
                column_oriented=True,
            )
        return rows

    monkeypatch.setattr(store, "query", query)
    _, first = await get(two["held"], f"/v1/bot/{bot}", **q)
    assert not armed[0]
    assert first["lastSeen"] in (n - HOUR, n - HOUR + 5)  # either is an answer of that moment
    body = await same_answers(two, bot, q)
    assert body["lastSeen"] == n - HOUR + 5
    assert [b["guilds"] for b in body["stats"] if b["guilds"] is not None] == [2]


async def test_the_memory_is_bounded_and_a_command_drops_it(two, monkeypatch):
    store, n = two["store"], two["now"]
    memory: BotMemory = two["held"].app[BOT_MEMORY]
    for bot in BOTS:
        await store.insert("bot_stats", [stat(bot, n - k * HOUR, guilds=k) for k in range(60)], STATS_COLUMNS)
    monkeypatch.setattr(memory, "hours_limit", 72)
    # Longer than the memory holds: read from the tables, nothing held.
    await same_answers(two, BOTS[0], aligned(n, 4, 96))
    assert memory.loads == 0
    # Two bots of 48 hours each do not fit in 72: the one read least recently goes.
    await same_answers(two, BOTS[0], aligned(n, 2, 48))
    await same_answers(two, BOTS[1], aligned(n, 2, 48))
    assert memory.loads == 2
    await same_answers(two, BOTS[1], aligned(n, 2, 48))
    assert memory.loads == 2
    await same_answers(two, BOTS[0], aligned(n, 2, 48))
    assert memory.loads == 3
    # A command (DDL, a migration) may change anything: everything is read again.
    store.command_sync("SELECT 1")
    await same_answers(two, BOTS[0], aligned(n, 2, 48))
    assert memory.loads == 4
    # And a bot's copy is read again once it is MAX_AGE_S old (rows leaving by TTL).
    monkeypatch.setattr(memory_mod, "MAX_AGE_S", 0.0)
    await asyncio.sleep(0.01)
    await same_answers(two, BOTS[0], aligned(n, 2, 48))
    assert memory.loads == 5


def test_hours_merge_into_buckets_as_the_raw_definition_says():
    # Pure: a "last" field takes the newest hour's non-null value, a mean weighs hours by their
    # counts, an hour without posts adds nothing.
    empty = memory_mod.EMPTY
    h0 = (2, (5, None, None, 1.0), ((3.0, 2), (0.0, 0), (1.0, 1), (0.0, 0)), {"v": 4.0}, {"v": 2})
    h1 = (1, (None, 7, None, None), ((9.0, 1), (0.0, 0), (0.0, 0), (0.0, 0)), {"v": 1.0}, {"v": 1})
    layout = Layout(10 * HOUR, 13 * HOUR, 1)
    assert layout.ragged == [] and layout.whole == [10, 11, 12]
    rows = layout.rows(Columns({10: h0, 11: h1, 12: empty}, 10, 13), {})
    assert rows == [(0, 3, 5, 7, None, 1.0, 4.0, None, 1.0, None, {"v": 5.0}, {"v": 3})]
    assert Layout(10 * HOUR, 13 * HOUR, 3).rows(Columns({10: empty, 11: empty, 12: empty}, 10, 13), {}) == []
    # Given h1 before h0: h0's guilds win, its null users leave h1's.
    assert bucket_rows([(0, h1), (0, h0)])[0][2:4] == (5, 7)


def _post_row(r: list[Any]) -> tuple[Any, ...]:
    """A `stat()` row as POSTS_SQL gives it: time in ms, the "last" fields, the averaged ones, custom."""
    ms = int(r[1].timestamp() * 1000 + 0.5)
    last, avg = [r[3], r[4], r[5], r[8]], [r[6], r[7], r[9], r[10]]
    return (ms, *last, *avg, r[11])


# Times in ms that land on minutes, on hours and a millisecond either side of them as often as
# anywhere: where a bucket edge or an hour's edge meets a post is where a plan can go wrong.
_TIMES = st.one_of(
    st.integers(0, 6 * HOUR),
    st.integers(0, 6 * 60).map(lambda m: m * 60_000),
    st.tuples(st.integers(0, 6), st.integers(-1, 1)).map(lambda h: max(0, h[0] * HOUR + h[1])),
)


@settings_(max_examples=300, deadline=None)
@given(
    _TIMES,
    st.one_of(st.integers(1, 3 * HOUR), st.integers(1, 180).map(lambda m: m * 60_000)),
    st.integers(1, 40),
    st.data(),
)
def test_any_range_from_hours_and_ragged_posts_is_the_raw_definition(start, length, n, data):
    # Pure: every hour's aggregate and every ragged hour's pieces, merged, give what the
    # plain-Python reading of the definition gives for any range and any number of buckets.
    edges = [start + -((-i * length) // n) for i in range(n + 1)]
    near = st.sampled_from(edges).flatmap(lambda e: st.integers(max(0, e - 1), e + 1))
    posts = data.draw(
        st.lists(
            st.tuples(
                st.one_of(_TIMES, near), st.sampled_from([None, 1, 2, 3]), st.sampled_from([None, 0.5, 2.0])
            ),
            max_size=80,
            unique_by=lambda p: p[0],  # one post per ms: "last" is then well defined
        )
    )
    rows = [stat("1", T0 + t, guilds=g, cpu=c, custom={"v": c} if c else {}) for t, g, c in sorted(posts)]
    by_hour: dict[int, list[tuple[Any, ...]]] = {}
    for r in rows:
        p = _post_row(r)
        by_hour.setdefault(p[0] // HOUR, []).append(p)
    start, end = T0 + start, T0 + start + length
    layout = Layout(start, end, n)
    hours = {}
    posts_held = {}
    for h in range(layout.lo, layout.hi):
        held = Posts(by_hour.get(h, []))
        hours[h] = held.part(h * HOUR, (h + 1) * HOUR)  # what HOURS_SQL gives for the hour
        posts_held[h] = held
    assert set(layout.ragged) | set(layout.whole) == set(range(layout.lo, layout.hi))
    assert layout.ragged == ragged_hours(start, end, n)  # the hours the tables' plans read posts of
    got = buckets_of(layout.rows(Columns(hours, layout.lo, layout.hi), posts_held), start, end, n, [])
    want = reference(rows, start, end, n)
    bounds = [b["time"] for b in want] + [end]
    for i, (g, e) in enumerate(zip(got, want, strict=True)):
        for k in e:
            assert g[k] == (pytest.approx(e[k], rel=1e-9) if isinstance(e[k], float) else e[k]), (k, g, e)
        votes = [r[11]["v"] for r in rows if bounds[i] <= _post_row(r)[0] < bounds[i + 1] and r[11]]
        assert g["custom"].get("v") == (pytest.approx(sum(votes) / len(votes)) if votes else None), i


async def test_an_average_state_reads_as_its_sum_and_count(store):
    # The engine's own states of bot_stats_1h's type, AggregateFunction(avg, Nullable(Float64)):
    # none seen, a count of one VarUInt byte and one of two, and two states merged.
    one = "SELECT avgState(toNullable(toFloat64(number) / 4)) AS s FROM numbers({n:UInt32})"
    rows = await store.query(
        f"SELECT hex(avgMergeState(s)) FROM ({one.replace('{n:UInt32}', '100')} UNION ALL"
        f" {one.replace('{n:UInt32}', '300')})"
    )
    (merged,) = rows[0]
    rows = await store.query(
        "SELECT hex(avgState(toNullable(toFloat64(number)))), hex(avgState(CAST(NULL AS Nullable(Float64))))"
        " FROM numbers(300)"
    )
    many, none = rows[0]
    assert memory_mod.avg_state(many) == (44850.0, 300)
    assert memory_mod.avg_state(none) == (0.0, 0)
    assert memory_mod.avg_state(merged) == ((4950 + 44850) / 4, 400)


async def test_the_limit_binds_whatever_the_ranges_asked(two, monkeypatch):
    # Hours far apart cost only what is held (the columns cover the range read, not the span
    # between), and one bot read over many ranges is trimmed to the limit like many bots are.
    store, n, bot = two["store"], two["now"], BOTS[0]
    memory: BotMemory = two["held"].app[BOT_MEMORY]
    monkeypatch.setattr(memory, "hours_limit", 200)
    await store.insert(
        "bot_stats", [stat(bot, n - k * HOUR, guilds=k) for k in range(0, 2000, 7)], STATS_COLUMNS
    )
    far = {"returnStats": "true", "start": 0, "end": HOUR, "dataPoints": 1}
    for q in (far, aligned(n, 1, 24), far):
        await same_answers(two, bot, q)
    state = memory._bots[bot]
    assert state.cols is None or state.cols.hi - state.cols.lo <= 24
    end = -(-n // HOUR) * HOUR
    for k in range(12):  # twelve 4-day ranges, one after another: 1,152 hours asked
        q = {
            "returnStats": "true",
            "start": end - (k + 1) * 96 * HOUR,
            "end": end - k * 96 * HOUR,
            "dataPoints": 8,
        }
        await same_answers(two, bot, q)
        assert memory.held <= 200, k
        assert memory.held == sum(s.weight for s in memory._bots.values())
    # Past MAX_RANGE_HOURS (or the limit) a range is read from the tables.
    loads = memory.loads
    await same_answers(two, bot, aligned(n, 10, 10))
    assert memory.loads == loads


async def test_posts_of_one_millisecond_answer_as_the_tables_do(two):
    # One gateway call stamps a bot's posts with one time: the first post's "last" values stand
    # (the engine's argMax keeps the first of equal times), the averages take them all.
    store, n, bot = two["store"], two["now"], BOTS[1]
    t = n - 2 * HOUR + 1_000
    await store.insert(
        "bot_stats", [stat(bot, t, guilds=1, cpu=1.0), stat(bot, t, guilds=2, cpu=3.0)], STATS_COLUMNS
    )
    for q in (aligned(n, 1, 24), {"returnStats": "true", "start": t - 17, "end": t + 5, "dataPoints": 3}):
        body = await same_answers(two, bot, q)
        (hit,) = [b for b in body["stats"] if b["guilds"] is not None]
        assert (hit["guilds"], hit["cpu"]) == (1, 2.0)


async def test_a_failing_watcher_never_fails_a_stored_insert(two, monkeypatch):
    store, n, bot = two["store"], two["now"], BOTS[0]
    memory: BotMemory = two["held"].app[BOT_MEMORY]
    q = aligned(n, 1, 24)
    await same_answers(two, bot, q)

    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(memory, "inserted", broken)
    await store.insert("bot_stats", [stat(bot, n - 5, guilds=42)], STATS_COLUMNS)  # does not raise
    assert memory.held == 0  # told that everything changed instead
    monkeypatch.undo()
    body = await same_answers(two, bot, q)
    assert body["stats"][-1]["guilds"] == 42


def _weighed(memory: BotMemory) -> int:
    """What the memory holds, weighed afresh from its contents."""
    return sum(
        sum(memory_mod.hour_units(p) for p in s.hours.values())
        + sum(memory_mod.posts_units(p) for p in s.posts.values())
        + sum(1 + len(rows) for rows, _ in s.statements.values())
        for s in memory._bots.values()
    )


async def test_the_count_of_what_is_held_never_drifts(two):
    # Viewers of one bot asking at once after each post: the same statements miss together.
    store, n, bot = two["store"], two["now"], BOTS[0]
    memory: BotMemory = two["held"].app[BOT_MEMORY]
    q = {"returnStats": "true", "start": n - DAY - 1_234, "end": n + 1, "dataPoints": 30}
    for k in range(4):
        custom = {f"m{i}": float(i) for i in range(k * 3)}
        await store.insert(
            "bot_stats", [stat(bot, n - k * 7 * 60_000, guilds=k, custom=custom)], STATS_COLUMNS
        )
        answers = await asyncio.gather(*(get(two["held"], f"/v1/bot/{bot}", **q) for _ in range(4)))
        assert len({str(a) for a in answers}) == 1
        assert memory.held == _weighed(memory) == sum(s.weight for s in memory._bots.values()), k
    await same_answers(two, bot, q)
    # Custom metrics weigh what they hold: the hour posted to with 9 of them counts 10.
    state = memory._bots[bot]
    hour = (n - 3 * 7 * 60_000) // HOUR
    if hour in state.hours:
        assert memory_mod.hour_units(state.hours[hour]) == 1 + len(state.hours[hour][4]) >= 10


async def test_an_insert_that_failed_drops_what_it_would_have_patched(two, monkeypatch):
    # A failed insert may or may not have been stored: the head is read again, never patched.
    store, n, bot = two["store"], two["now"], BOTS[1]
    q = aligned(n, 1, 24)
    await store.insert(
        "bot_stats", columns_of([stat(bot, n - 10, guilds=1)]), COLUMNS["bot_stats"], column_oriented=True
    )
    await same_answers(two, bot, q)
    await same_answers(two, bot, q)
    bad = columns_of([stat(bot, n - 5, guilds=2)])
    bad[3] = ["not a number"]  # refused for its data (by the client, before the engine)
    with pytest.raises(ValueError):
        await store.insert("bot_stats", bad, COLUMNS["bot_stats"], column_oriented=True)
    seen = traced(store, monkeypatch)
    _, body = await get(two["held"], f"/v1/bot/{bot}", **q)
    assert any("bot_latest" in sql for sql in seen), seen
    assert body["lastSeen"] == n - 10
    assert (await same_answers(two, bot, q))["lastSeen"] == n - 10


async def test_a_post_older_than_the_first_reads_the_head_again(two, monkeypatch):
    # The daily roll-up has a TTL: whether an old post becomes the first one is the engine's to
    # say, so the head is read again; a newer post only moves the newest time, patched.
    store, n, bot = two["store"], two["now"], BOTS[0]
    q = {"returnStats": "true", "end": n + HOUR, "dataPoints": 6}  # from the first post
    await store.insert(
        "bot_stats", columns_of([stat(bot, n - DAY, guilds=1)]), COLUMNS["bot_stats"], column_oriented=True
    )
    await same_answers(two, bot, q)
    await same_answers(two, bot, q)
    seen = traced(store, monkeypatch)
    await store.insert(
        "bot_stats", columns_of([stat(bot, n - 5, guilds=2)]), COLUMNS["bot_stats"], column_oriented=True
    )
    await get(two["held"], f"/v1/bot/{bot}", **q)
    assert not any("bot_latest" in sql for sql in seen), seen
    await store.insert(
        "bot_stats",
        columns_of([stat(bot, n - 2 * DAY, guilds=3)]),
        COLUMNS["bot_stats"],
        column_oriented=True,
    )
    seen.clear()
    _, body = await get(two["held"], f"/v1/bot/{bot}", **q)
    assert any("bot_latest" in sql for sql in seen), seen
    assert body["range"]["start"] == n - 2 * DAY and body["lastSeen"] == n - 5
    assert (await same_answers(two, bot, q))["range"]["start"] == n - 2 * DAY
