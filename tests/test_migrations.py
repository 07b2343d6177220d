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
