"""The roll-ups on a real chDB: the daily one holds exactly what the raw definition gives (last
values by time, averages, sums, first/last post, custom sums and counts), the hourly one the
same posts, and a block inserted again with its token, the worker's retry, counts once in
every roll-up, also when a view further down refused it the first time. (A retry after the
engine restarted is the crash test's, tests/test_workers_crash.py.)"""

from __future__ import annotations

import math
import random
import time

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from botpulse.runtime.clickhouse import Store, is_view_error
from botpulse.schemas.stats import STATS_COLUMNS, STATS_TABLE
from botpulse.schemas.stream import StatsPayload, StreamEvent
from botpulse.workers.rows import Block, rows_by_table
from botpulse.workers.writer import insert_settings

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

# What each daily bucket must hold, computed from the posts themselves.
RAW_DAILY = """
SELECT bot_id, toStartOfDay(ts) AS day, count(),
    toUnixTimestamp64Milli(min(ts)), toUnixTimestamp64Milli(max(ts)),
    argMax(guilds, ts), argMax(users, ts), argMax(shards, ts), argMax(ram_total, ts),
    avg(api_ping), avg(ram_usage), avg(cpu), avg(bandwidth),
    sumMap(CAST(custom, 'Map(String, Float64)')),
    sumMap(CAST(mapApply((k, v) -> (k, toUInt64(1)), custom), 'Map(String, UInt64)'))
FROM bot_stats GROUP BY bot_id, day ORDER BY bot_id, day
"""
ROLLUP = """
SELECT bot_id, bucket, sum(posts),
    toUnixTimestamp64Milli(min(first_ts)), toUnixTimestamp64Milli(max(last_ts)),
    argMaxMerge(guilds), argMaxMerge(users), argMaxMerge(shards), argMaxMerge(ram_total),
    avgMerge(api_ping), avgMerge(ram_usage), avgMerge(cpu), avgMerge(bandwidth),
    sumMap(custom_sum), sumMap(custom_count)
FROM {table} GROUP BY bot_id, bucket ORDER BY bot_id, bucket
"""


def _events(n: int, seed: int) -> list[StreamEvent]:
    """Posts of three bots over the last three days, in no time order, some fields absent,
    some with custom metrics."""
    rng = random.Random(seed)
    start = (int(time.time() * 1000) // DAY_MS - 2) * DAY_MS
    out = []
    for i in range(n):

        def maybe(value: object) -> object:
            return None if rng.random() < 0.2 else value

        custom = {"cmds": float(rng.randint(0, 9))} if rng.random() < 0.5 else {}
        if rng.random() < 0.3:
            custom["queue"] = rng.randint(0, 40) / 4
        out.append(
            StreamEvent(
                event_id=f"e{seed}-{i}",
                received_ms=start + rng.randrange(0, 3 * DAY_MS - HOUR_MS),
                bot_id=f"bot{i % 3}",
                account_id="acc",
                payload=StatsPayload(
                    guilds=maybe(rng.randint(1, 10_000)),
                    users=maybe(rng.randint(1, 10**6)),
                    shards=maybe(rng.randint(1, 8)),
                    api_ping=maybe(rng.randint(10, 400) / 8),
                    ram_usage=maybe(float(rng.randint(1, 2**30))),
                    ram_total=maybe(float(2**31)),
                    cpu=maybe(rng.randint(0, 800) / 8),
                    bandwidth=maybe(float(rng.randint(0, 10**6))),
                    custom_metrics=custom,
                ),  # type: ignore[arg-type]
            )
        )
    return out


def _block(events: list[StreamEvent]) -> Block:
    return rows_by_table([(e.event_id.encode(), e) for e in events])[STATS_TABLE][0]


def _insert(store: Store, block: Block, token: str) -> None:
    """As the worker's writer inserts: its settings, column-oriented, token `<token>:bot_stats`."""
    store.insert_sync(
        STATS_TABLE, block, STATS_COLUMNS, insert_settings(f"{token}:{STATS_TABLE}", cluster=False),
        column_oriented=True,
    )  # fmt: skip


def _same(rollup: list[tuple], raw: list[tuple]) -> None:
    """Equal row by row; averages to floating-point rounding (partial sums merge in another order)."""
    assert len(rollup) == len(raw)
    for got, want in zip(rollup, raw, strict=True):
        assert got[:9] == want[:9], (got, want)  # keys, posts, first/last post, last values
        for g, w in zip(got[9:13], want[9:13], strict=True):
            assert (g is None and w is None) or math.isclose(g, w, rel_tol=1e-12), (got, want)
        assert got[13].keys() == want[13].keys()
        assert all(math.isclose(got[13][k], want[13][k], rel_tol=1e-12) for k in want[13])
        assert got[14] == want[14]


def _check_against_raw(store: Store, posts: int) -> None:
    raw = store.query_rows(RAW_DAILY)
    assert sum(r[2] for r in raw) == posts
    _same(store.query_rows(ROLLUP.format(table="bot_stats_1d")), raw)
    hourly = store.query_rows(
        "SELECT bot_id, toStartOfDay(bucket) AS day, sum(posts) FROM bot_stats_1h GROUP BY bot_id, day"
        " ORDER BY bot_id, day"
    )
    assert hourly == [r[:3] for r in raw]


def test_every_rollup_is_fed_from_the_posts_and_the_minute_one_is_gone(store):
    # The views each table's inserts feed, as the engine resolves them (not the DDL's text).
    feeds = dict(
        store.query_rows(
            "SELECT name, arraySort(dependencies_table) FROM system.tables WHERE database = currentDatabase()"
            " AND name IN ('bot_stats', 'bot_stats_1h', 'bot_stats_1d')"
        )
    )
    assert feeds == {
        "bot_stats": ["bot_latest_mv", "bot_stats_1d_mv", "bot_stats_1h_mv"],
        "bot_stats_1h": [],
        "bot_stats_1d": [],
    }
    tables = {n for (n,) in store.query_rows("SHOW TABLES")}
    assert not {"bot_stats_1m", "bot_stats_1m_mv"} & tables  # dropped by 0037: read by nothing


def test_daily_rollup_equals_the_raw_definition_over_blocks_in_any_time_order(store):
    events = _events(600, seed=1)
    for i in range(0, 600, 150):  # four blocks, each spanning all three days
        _insert(store, _block(events[i : i + 150]), f"tok{i}")
    _check_against_raw(store, 600)


def test_a_block_inserted_again_with_its_token_counts_once_at_every_level(store):
    events = _events(300, seed=2)
    first, second = _block(events[:200]), _block(events[200:])
    _insert(store, first, "a")
    _insert(store, second, "b")
    _check_against_raw(store, 300)
    before = {t: store.query_rows(ROLLUP.format(table=t)) for t in ("bot_stats_1h", "bot_stats_1d")}
    _insert(store, first, "a")  # the worker's retry after a crash between insert and ack
    _insert(store, second, "b")
    assert store.query_rows("SELECT count() FROM bot_stats") == [(300,)]
    _check_against_raw(store, 300)
    assert {t: store.query_rows(ROLLUP.format(table=t)) for t in before} == before


@pytest.mark.parametrize("level", ["bot_stats_1h", "bot_stats_1d"])
def test_a_block_a_view_further_down_refused_is_stored_once_by_its_retry(store, level):
    """A view reading `level` refuses the block after bot_stats (and the roll-ups before it)
    stored it: the writer retries the whole block with its token (never split), which must
    complete what is missing and double nothing, in every roll-up."""
    store.command_sync("CREATE TABLE refuse (on UInt8) ENGINE = MergeTree ORDER BY tuple()")
    store.command_sync("INSERT INTO refuse VALUES (1)")
    store.command_sync(
        f"CREATE MATERIALIZED VIEW picky ENGINE = MergeTree ORDER BY tuple() AS SELECT "
        f"throwIf((SELECT count() FROM refuse) > 0, 'refused for the test') AS x FROM {level}"
    )
    events = _events(240, seed=3)
    block = _block(events)
    with pytest.raises(DatabaseError) as refused:
        _insert(store, block, "v")
    assert is_view_error(refused.value), str(refused.value)[:500]
    assert store.query_rows("SELECT count() FROM bot_stats") == [(240,)]  # the table stored it
    store.command_sync("TRUNCATE TABLE refuse")  # the operator fixes the view
    _insert(store, block, "v")
    assert store.query_rows("SELECT count() FROM bot_stats") == [(240,)]
    _check_against_raw(store, 240)
    _insert(store, block, "v")  # and once more: a repeat still changes nothing
    _check_against_raw(store, 240)
