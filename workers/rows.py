"""Stream events -> table rows. Pure functions: the one place that knows column order."""

from __future__ import annotations

from collections.abc import Sequence

from schemas.stream import CustomPayload, StatsPayload, StreamEvent

STATS_TABLE = "bot_stats"
CUSTOM_TABLE = "custom_events"
NAMES_TABLE = "custom_metric_names"

STATS_COLUMNS = [
    "bot_id", "ts", "event_id", "guilds", "users", "shards",
    "api_ping", "ram_usage", "ram_total", "cpu", "bandwidth", "custom",
]  # fmt: skip
CUSTOM_COLUMNS = [
    "bot_id", "ts", "event_id", "type", "value1", "value2", "value3",
    "value1_num", "value2_num", "value3_num",
]  # fmt: skip
NAMES_COLUMNS = ["bot_id", "name", "first_seen"]

COLUMNS = {STATS_TABLE: STATS_COLUMNS, CUSTOM_TABLE: CUSTOM_COLUMNS, NAMES_TABLE: NAMES_COLUMNS}

Row = list[object]

# Time columns are DateTime64(3): the client writes an int as ticks, i.e. Unix milliseconds,
# which spares a datetime object per row.


def _num(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def stats_row(e: StreamEvent, p: StatsPayload) -> Row:
    return [
        e.bot_id, e.received_ms, e.event_id, p.guilds, p.users, p.shards,
        p.api_ping, p.ram_usage, p.ram_total, p.cpu, p.bandwidth, p.custom_metrics,
    ]  # fmt: skip


def custom_row(e: StreamEvent, p: CustomPayload) -> Row:
    return [
        e.bot_id, e.received_ms, e.event_id, p.type, p.value1, p.value2, p.value3,
        _num(p.value1), _num(p.value2), _num(p.value3),
    ]  # fmt: skip


def rows_by_table(entries: Sequence[tuple[bytes, StreamEvent]]) -> dict[str, tuple[list[Row], list[bytes]]]:
    """The rows of each event table, each with the stream id of the entry it came from (so a
    batch rejected for its data can be split and the bad entry named)."""
    out: dict[str, tuple[list[Row], list[bytes]]] = {STATS_TABLE: ([], []), CUSTOM_TABLE: ([], [])}
    for entry_id, e in entries:
        p = e.payload
        if isinstance(p, StatsPayload):
            out[STATS_TABLE][0].append(stats_row(e, p))
            out[STATS_TABLE][1].append(entry_id)
        elif isinstance(p, CustomPayload):
            out[CUSTOM_TABLE][0].append(custom_row(e, p))
            out[CUSTOM_TABLE][1].append(entry_id)
    return out


def name_rows(events: Sequence[StreamEvent]) -> list[Row]:
    """One row per (bot, custom metric name) first seen in these events, at its earliest time."""
    first: dict[tuple[str, str], int] = {}
    for e in events:
        if isinstance(e.payload, StatsPayload):
            for name in e.payload.custom_metrics:
                key = (e.bot_id, name)
                if key not in first or e.received_ms < first[key]:
                    first[key] = e.received_ms
    return [[bot, name, ms] for (bot, name), ms in sorted(first.items())]


def split_rows(events: list[StreamEvent]) -> tuple[list[Row], list[Row]]:
    """Stats rows and custom-event rows of `events` (without entry ids)."""
    tables = rows_by_table([(b"", e) for e in events])
    return tables[STATS_TABLE][0], tables[CUSTOM_TABLE][0]
