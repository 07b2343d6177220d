"""Stream events -> table rows. Pure functions; the stats columns and their order come from
schemas/stats.py (`rows_by_table` fills them in that order, tests/test_stats_columns.py checks)."""

from __future__ import annotations

from collections.abc import Sequence

from botpulse.schemas.stats import STATS_COLUMNS, STATS_TABLE
from botpulse.schemas.stream import CustomPayload, StatsPayload, StreamEvent

CUSTOM_TABLE = "custom_events"
NAMES_TABLE = "custom_metric_names"

CUSTOM_COLUMNS = [
    "bot_id", "ts", "event_id", "type", "value1", "value2", "value3",
    "value1_num", "value2_num", "value3_num",
]  # fmt: skip
NAMES_COLUMNS = ["bot_id", "name", "first_seen"]

COLUMNS = {STATS_TABLE: STATS_COLUMNS, CUSTOM_TABLE: CUSTOM_COLUMNS, NAMES_TABLE: NAMES_COLUMNS}

Row = list[object]
# A table's rows as columns (in COLUMNS order), the shape the worker inserts: the client then
# serializes column by column instead of transposing rows first.
Block = list[list[object]]

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


def custom_row(e: StreamEvent, p: CustomPayload) -> Row:
    return [
        e.bot_id, e.received_ms, e.event_id, p.type, p.value1, p.value2, p.value3,
        _num(p.value1), _num(p.value2), _num(p.value3),
    ]  # fmt: skip


def rows_by_table(entries: Sequence[tuple[bytes, StreamEvent]]) -> dict[str, tuple[Block, list[bytes]]]:
    """The columns of each event table, with the stream id of the entry each row came from (so
    a batch rejected for its data can be split and the bad entry named). Built column by
    column in one pass: no per-row list, no transposition in the client."""
    s_ids: list[bytes] = []
    bot: list[object] = []
    ts: list[object] = []
    eid: list[object] = []
    guilds: list[object] = []
    users: list[object] = []
    shards: list[object] = []
    ping: list[object] = []
    ram: list[object] = []
    ram_total: list[object] = []
    cpu: list[object] = []
    bandwidth: list[object] = []
    custom: list[object] = []
    c_ids: list[bytes] = []
    c_rows: list[Row] = []
    for entry_id, e in entries:
        p = e.payload
        if type(p) is StatsPayload:
            s_ids.append(entry_id)
            bot.append(e.bot_id)
            ts.append(e.received_ms)
            eid.append(e.event_id)
            guilds.append(p.guilds)
            users.append(p.users)
            shards.append(p.shards)
            ping.append(p.api_ping)
            ram.append(p.ram_usage)
            ram_total.append(p.ram_total)
            cpu.append(p.cpu)
            bandwidth.append(p.bandwidth)
            custom.append(p.custom_metrics)
        elif isinstance(p, CustomPayload):
            c_rows.append(custom_row(e, p))
            c_ids.append(entry_id)
    stats = [bot, ts, eid, guilds, users, shards, ping, ram, ram_total, cpu, bandwidth, custom]
    return {STATS_TABLE: (stats, s_ids), CUSTOM_TABLE: (to_block(c_rows, CUSTOM_COLUMNS), c_ids)}


def to_block(rows: Sequence[Row], columns: Sequence[str]) -> Block:
    if not rows:
        return [[] for _ in columns]
    return [list(c) for c in zip(*rows, strict=True)]


def block_rows(block: Block) -> int:
    return len(block[0]) if block else 0


def slice_block(block: Block, start: int, stop: int) -> Block:
    return [c[start:stop] for c in block]


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
