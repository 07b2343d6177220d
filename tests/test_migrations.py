"""Versioned DDL: applied once, recorded, a second run is a no-op; cluster rendering."""

from __future__ import annotations

from pathlib import Path

from botpulse.runtime.migrations import available, describe, migrate, render

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "schema.txt"


def test_second_run_is_a_no_op(store):
    # The fixture already migrated this database.
    recorded = {r[0] for r in store.query_rows("SELECT version FROM schema_migrations FINAL")}
    assert recorded == {m.version for m in available()}
    assert migrate(store) == []
    tables = {r[0] for r in store.query_rows("SHOW TABLES")}
    assert {"bot_stats", "custom_events", "accounts", "bots", "audit_log", "bot_stats_1h"} <= tables


def test_time_series_tables_are_partitioned_monthly_ordered_by_bot_and_ts_with_ttl(store, settings):
    for table in ("bot_stats", "custom_events"):
        (ddl,) = store.query_rows(
            "SELECT create_table_query FROM system.tables WHERE database = {db:String} AND name = {t:String}",
            {"db": settings.clickhouse_database, "t": table},
        )[0]
        assert "PARTITION BY toYYYYMM(ts)" in ddl
        assert "ORDER BY (bot_id, " in ddl
        assert f"toIntervalDay({settings.retention_days})" in ddl
        assert "DateTime64(3, 'UTC')" in ddl
        assert "non_replicated_deduplication_window = 10000" in ddl


def test_the_query_services_old_copy_of_the_posts_is_dropped_and_bot_stats_kept(store):
    # An install that ran the retired 0030: a copy of the posts fed by a view from bot_stats.
    # Recent times: older rows would fall to the retention TTL as they are written.
    insert = (
        "INSERT INTO bot_stats (bot_id, ts, event_id, guilds)"
        " SELECT 'm1', now64(3) + {s:UInt32}, {e:String}, {g:UInt64}"
    )
    store.command_sync("CREATE TABLE bot_stats_posts AS bot_stats ENGINE = MergeTree ORDER BY (bot_id, ts)")
    store.command_sync(
        "CREATE MATERIALIZED VIEW bot_stats_posts_mv TO bot_stats_posts AS SELECT * FROM bot_stats"
    )
    store.command_sync(insert, {"s": 0, "e": "e1", "g": 7})
    store.command_sync(
        "ALTER TABLE schema_migrations DELETE WHERE version = {v:String} SETTINGS mutations_sync = 2",
        {"v": "0032_drop_query_posts"},
    )
    assert migrate(store) == ["0032_drop_query_posts"]
    tables = {r[0] for r in store.query_rows("SHOW TABLES")}
    assert not {"bot_stats_posts", "bot_stats_posts_mv"} & tables
    store.command_sync(insert, {"s": 1, "e": "e2", "g": 8})
    assert store.query_rows("SELECT guilds FROM bot_stats WHERE bot_id = 'm1' ORDER BY ts") == [(7,), (8,)]


def test_bot_stats_is_read_in_small_granules(store, settings):
    (ddl,) = store.query_rows(
        "SELECT create_table_query FROM system.tables WHERE database = {db:String} AND name = 'bot_stats'",
        {"db": settings.clickhouse_database},
    )[0]
    assert "index_granularity = 128" in ddl


def test_single_server_rendering_has_no_cluster_parts():
    sql = available()[0].sql
    statements = render(sql, cluster=None, database="botpulse", ttl_days=30)
    text = "\n".join(statements)
    assert "ON CLUSTER" not in text and "Replicated" not in text and "Distributed" not in text
    assert "${" not in text
    assert "INTERVAL 30 DAY" in text


def test_cluster_rendering_uses_replicated_local_tables_behind_distributed():
    statements = render(available()[0].sql, cluster="c1", database="bp", ttl_days=30)
    text = "\n".join(statements)
    assert "CREATE TABLE IF NOT EXISTS bot_stats_local ON CLUSTER `c1`" in text
    assert "ReplicatedMergeTree" in text
    assert (
        "CREATE TABLE IF NOT EXISTS bot_stats ON CLUSTER `c1` AS bot_stats_local "
        "ENGINE = Distributed(`c1`, `bp`, bot_stats_local, cityHash64(bot_id))"
    ) in statements
    # Distributed tables come after every local table they front.
    local_at = max(i for i, s in enumerate(statements) if "_local ON CLUSTER" in s and "Distributed" not in s)
    first_distributed = min(i for i, s in enumerate(statements) if "ENGINE = Distributed" in s)
    assert first_distributed > local_at
    rollups = "\n".join(render(available()[1].sql, cluster="c1", database="bp", ttl_days=30))
    assert "TO bot_stats_1h_local" in rollups and "FROM bot_stats_local" in rollups


def test_every_migration_from_empty_gives_the_committed_schema(store):
    # The fixture migrated this database from empty. After a schema change, regenerate the
    # committed copy: `botpulse migrate --print-schema > schemas/schema.txt` on a fresh database.
    assert describe(store) == SCHEMA.read_text()


def test_migrations_are_kept_and_numbered_without_gaps_from_0030():
    # 0003-0029 were never used; every version a deployed database may have applied stays in
    # the repository (a superseded one with an empty body).
    # Numbers from 0033 on are handed out to branches developed side by side and may land out of
    # order, so a number can be missing for a while; none may be used twice or go backwards.
    numbers = [int(m.version.split("_", 1)[0]) for m in available()]
    assert numbers[:2] == [1, 2]
    assert numbers[2:5] == [30, 31, 32]
    assert numbers == sorted(set(numbers))


def _statement(version: str, starts: str) -> str:
    """The statement of migration `version` (single-server rendering) that starts with `starts`."""
    (migration,) = [m for m in available() if m.version == version]
    (statement,) = [
        s
        for s in render(migration.sql, cluster=None, database="botpulse", ttl_days=30)
        if s.startswith(starts)
    ]
    return statement


def _forget(store, version: str) -> None:
    store.command_sync(
        "ALTER TABLE schema_migrations DELETE WHERE version = {v:String} SETTINGS mutations_sync = 2",
        {"v": version},
    )


_POST = (
    "INSERT INTO bot_stats (bot_id, ts, event_id, guilds, api_ping, custom)"
    " SELECT 'm2', now64(3) - {s:UInt32}, {e:String}, {g:UInt64}, {p:Float64}, map('q', {p:Float64})"
)


def test_the_unread_minute_rollup_is_dropped_and_the_others_still_fill(store):
    # An install from before 0037: the minute roll-up and its view, fed by every insert.
    store.command_sync(_statement("0002_rollups", "CREATE TABLE IF NOT EXISTS bot_stats_1m"))
    store.command_sync(_statement("0002_rollups", "CREATE MATERIALIZED VIEW IF NOT EXISTS bot_stats_1m_mv"))
    store.command_sync(_POST, {"s": 0, "e": "e1", "g": 1, "p": 2.0})
    assert store.query_rows("SELECT sum(posts) FROM bot_stats_1m") == [(1,)]
    _forget(store, "0037_drop_minute_rollup")
    assert migrate(store) == ["0037_drop_minute_rollup"]
    assert not {"bot_stats_1m", "bot_stats_1m_mv"} & {r[0] for r in store.query_rows("SHOW TABLES")}
    store.command_sync(_POST, {"s": 1, "e": "e2", "g": 2, "p": 4.0})
    for table in ("bot_stats_1h", "bot_stats_1d"):
        assert store.query_rows(f"SELECT sum(posts) FROM {table}") == [(2,)], table


def test_cluster_rendering_of_the_minute_rollups_drop_names_the_local_table():
    (drop,) = [m for m in available() if m.version == "0037_drop_minute_rollup"]
    text = "\n".join(render(drop.sql, cluster="c1", database="bp", ttl_days=30))
    assert "DROP VIEW IF EXISTS bot_stats_1m_mv ON CLUSTER `c1`" in text
    assert "DROP TABLE IF EXISTS bot_stats_1m_local ON CLUSTER `c1`" in text
    assert "DROP TABLE IF EXISTS bot_stats_1m ON CLUSTER `c1`" in text and "${" not in text


_EXTENTS = (
    "SELECT bot_id, toUnixTimestamp64Milli(min(events_first)), toUnixTimestamp64Milli(max(events_last)),"
    " max(has_props), max(has_shards), max(has_names) FROM bot_extents GROUP BY bot_id ORDER BY bot_id"
)
_DAY = 86_400_000


def _write_every_kind(store, now_ms: int) -> None:
    """Rows for bots 'e' (events, two inserts), 'p' (properties), 's' (shards), 'n' (names) and
    'all' (one row of each table); recent times, so no TTL takes them."""
    event = "INSERT INTO custom_events (bot_id, ts, event_id, type, value1) VALUES"
    at = "fromUnixTimestamp64Milli({t:Int64}, 'UTC')"
    store.command_sync(f"{event} ('e', {at}, 'e1', 'cmd', 'a')", {"t": now_ms - 2 * _DAY})
    store.command_sync(
        f"{event} ('e', {at}, 'e2', 'cmd', 'b'), ('all', {at}, 'e3', 'cmd', 'c')", {"t": now_ms}
    )
    store.command_sync(
        f"INSERT INTO bot_props VALUES ('p', 'version', {at}, '1'), ('all', 'v', {at}, '2')", {"t": now_ms}
    )
    store.command_sync(
        f"INSERT INTO shard_stats (bot_id, shard_id, ts, event_id, up) VALUES ('s', 0, {at}, 'h1', 1),"
        f" ('all', 3, {at}, 'h2', 0)",
        {"t": now_ms},
    )
    store.command_sync(
        f"INSERT INTO custom_metric_names VALUES ('n', 'votes', {at}), ('all', 'm', {at})", {"t": now_ms}
    )


def _expected(now_ms: int) -> list[tuple]:
    return [
        ("all", now_ms, now_ms, 1, 1, 1),
        ("e", now_ms - 2 * _DAY, now_ms, 0, 0, 0),
        ("n", None, None, 0, 0, 1),
        ("p", None, None, 1, 0, 0),
        ("s", None, None, 0, 1, 0),
    ]


def test_bot_extents_say_what_each_bot_has_also_once_merged(store):
    now_ms = store.query_rows("SELECT toUnixTimestamp64Milli(now64(3))")[0][0]
    _write_every_kind(store, now_ms)
    # Before a merge, several rows per bot (one per insert and view); the reads aggregate them.
    assert store.query_rows("SELECT count() FROM bot_extents WHERE bot_id = 'all'")[0][0] == 4
    assert store.query_rows(_EXTENTS) == _expected(now_ms)
    # Merged, one row per bot: min/max skip the other views' NULLs, the flags keep their 1.
    store.command_sync("OPTIMIZE TABLE bot_extents FINAL")
    assert store.query_rows("SELECT count() FROM bot_extents")[0][0] == 5
    raw = store.query_rows(
        "SELECT bot_id, toUnixTimestamp64Milli(events_first), toUnixTimestamp64Milli(events_last),"
        " has_props, has_shards, has_names FROM bot_extents ORDER BY bot_id"
    )
    assert raw == _expected(now_ms)


def test_bot_extents_are_back_filled_from_data_written_before_0038(store):
    # An install from before 0038: no bot_extents, data in the four tables it describes.
    for view in ("events", "props", "shards", "names"):
        store.command_sync(f"DROP VIEW bot_extents_{view}_mv")
    store.command_sync("DROP TABLE bot_extents")
    now_ms = store.query_rows("SELECT toUnixTimestamp64Milli(now64(3))")[0][0]
    _write_every_kind(store, now_ms)
    _forget(store, "0038_bot_extents")
    _forget(store, "0039_bot_extents_backfill")
    assert migrate(store) == ["0038_bot_extents", "0039_bot_extents_backfill"]
    assert store.query_rows(_EXTENTS) == _expected(now_ms)
    # A back-fill run again (an interrupted migration repeated) changes nothing; new rows flow in.
    for statement in render(
        next(m.sql for m in available() if m.version == "0039_bot_extents_backfill"),
        cluster=None, database="botpulse", ttl_days=30,
    ):  # fmt: skip
        if statement.startswith("INSERT"):
            store.command_sync(statement)
    assert store.query_rows(_EXTENTS) == _expected(now_ms)
    store.command_sync("INSERT INTO bot_props VALUES ('e', 'v', now64(3), '3')")
    assert store.query_rows(_EXTENTS)[1] == ("e", now_ms - 2 * _DAY, now_ms, 1, 0, 0)


def test_cluster_rendering_of_bot_extents_feeds_the_local_table_from_local_tables():
    (extents,) = [m for m in available() if m.version == "0038_bot_extents"]
    statements = render(extents.sql, cluster="c1", database="bp", ttl_days=30)
    text = "\n".join(statements)
    assert "CREATE TABLE IF NOT EXISTS bot_extents_local ON CLUSTER `c1`" in text
    assert "ReplicatedAggregatingMergeTree" in text and "${" not in text
    for source in ("custom_events", "bot_props", "shard_stats", "custom_metric_names"):
        (view,) = [
            s for s in statements if s.startswith("CREATE MATERIALIZED VIEW") and f"FROM {source}_local" in s
        ]
        assert "ON CLUSTER `c1` TO bot_extents_local" in view, view
    assert not [s for s in statements if s.startswith("INSERT")]
    # The back-fill (0039) goes through the Distributed tables: one run reads every shard and
    # routes each bot's row to its shard.
    (backfill,) = [m for m in available() if m.version == "0039_bot_extents_backfill"]
    inserts = render(backfill.sql, cluster="c1", database="bp", ttl_days=30)
    assert len(inserts) == 4 and all(s.startswith("INSERT INTO bot_extents (") for s in inserts)
    assert not any("_local" in s for s in inserts), inserts
    assert statements[-1] == (
        "CREATE TABLE IF NOT EXISTS bot_extents ON CLUSTER `c1` AS bot_extents_local "
        "ENGINE = Distributed(`c1`, `bp`, bot_extents_local, cityHash64(bot_id))"
    )
