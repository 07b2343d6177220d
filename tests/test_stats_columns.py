"""The stats columns table (schemas/stats.py) is the one home of the stats contract: these tests
hold every other place that spells a stat against it."""

from __future__ import annotations

from pathlib import Path

from botpulse.query.leaderboard import metric_sql
from botpulse.query.listing import FILTER_FIELDS, OUTPUT_FIELDS
from botpulse.query.stats import AVG_FIELDS as QUERY_AVG
from botpulse.query.stats import LAST_FIELDS as QUERY_LAST
from botpulse.schemas.http import StatsBody
from botpulse.schemas.stats import AVG_FIELDS, LAST_FIELDS, LISTED_FIELDS, STATS_COLUMNS, STATS_FIELDS
from botpulse.schemas.stream import StatsPayload, StreamEvent
from botpulse.workers.rows import COLUMNS, STATS_TABLE, rows_by_table

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "schema.txt"


def _tables() -> dict[str, dict[str, str]]:
    """schemas/schema.txt (checked against the migrations by test_migrations) as table -> columns."""
    tables: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in SCHEMA.read_text().splitlines():
        if not line.startswith(" "):
            current = tables.setdefault(line.split(":", 1)[0], {})
        else:
            name, type_ = line.strip().split(" ", 1)
            current[name] = type_
    return tables


def test_bot_stats_columns_are_the_table_in_order_with_its_types():
    bot_stats = _tables()["bot_stats"]
    assert list(bot_stats) == STATS_COLUMNS
    for f in STATS_FIELDS:
        assert bot_stats[f.column] == f"Nullable({f.clickhouse_type})", f.column


def test_rollups_aggregate_each_field_by_its_kind():
    tables = _tables()
    for rollup in ("bot_stats_1h", "bot_stats_1d"):
        for f in STATS_FIELDS:
            nullable = f"Nullable({f.clickhouse_type})"
            expected = (
                f"AggregateFunction(argMax, {nullable}, DateTime64(3, 'UTC'))"
                if f.kind == "last"
                else f"AggregateFunction(avg, {nullable})"
            )
            assert tables[rollup][f.column] == expected, (rollup, f.column)


def test_stream_payload_and_request_body_spell_the_same_fields():
    # After the stats: the custom metrics and the extra (non-numeric) properties.
    assert list(StatsPayload.__struct_fields__) == [
        *(f.column for f in STATS_FIELDS), "custom_metrics", "props",
    ]  # fmt: skip
    assert list(StatsBody.__struct_fields__) == [*(f.api for f in STATS_FIELDS), "custom"]


def test_worker_rows_fill_each_column_from_its_payload_attribute():
    assert COLUMNS[STATS_TABLE] == STATS_COLUMNS
    payload = StatsPayload(
        guilds=1, users=2, shards=3, api_ping=4.5, ram_usage=5.5, ram_total=6.5, cpu=7.5, bandwidth=8.5,
        custom_metrics={"x": 9.0},
    )  # fmt: skip
    event = StreamEvent("e1", 1_700_000_000_000, "42", "acc", payload)
    block, ids = rows_by_table([(b"1-0", event)])[STATS_TABLE]
    assert ids == [b"1-0"]
    row = {column: values[0] for column, values in zip(STATS_COLUMNS, block, strict=True)}
    assert row["bot_id"] == "42" and row["ts"] == event.received_ms and row["event_id"] == "e1"
    assert row["custom"] == {"x": 9.0}
    for f in STATS_FIELDS:
        assert row[f.column] == getattr(payload, f.column), f.column


def test_query_service_reads_the_table():
    assert set(LAST_FIELDS) | set(AVG_FIELDS) == {f.api for f in STATS_FIELDS}
    assert QUERY_LAST == LAST_FIELDS and QUERY_AVG == AVG_FIELDS
    # Leaderboards rank on any field: the newest value of a "last" one, the mean of an "avg" one.
    for f in STATS_FIELDS:
        merge = "argMaxMerge" if f.kind == "last" else "avgMerge"
        assert metric_sql(f.api, "m", "metric") == (f"{merge}({f.column})", {}), f.api
    for api, column in LISTED_FIELDS.items():
        assert FILTER_FIELDS[api] == (column, "number")
        assert api in OUTPUT_FIELDS
    assert list(LISTED_FIELDS) == ["guilds", "users", "shards"]
