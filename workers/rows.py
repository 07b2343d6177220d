"""Stream events -> table rows. Pure functions; the stats columns and their order come from
schemas/stats.py (`rows_by_table` fills them in that order, tests/test_stats_columns.py checks)."""

from __future__ import annotations

from collections.abc import Sequence

from botpulse.schemas.stats import STATS_COLUMNS, STATS_TABLE
from botpulse.schemas.stream import CustomPayload, ShardsPayload, StatsPayload, StreamEvent

CUSTOM_TABLE = "custom_events"
NAMES_TABLE = "custom_metric_names"
PROPS_TABLE = "bot_props"
SHARDS_TABLE = "shard_stats"

CUSTOM_COLUMNS = [
    "bot_id", "ts", "event_id", "type", "value1", "value2", "value3",
    "value1_num", "value2_num", "value3_num",
]  # fmt: skip
NAMES_COLUMNS = ["bot_id", "name", "first_seen"]
PROPS_COLUMNS = ["bot_id", "name", "ts", "value"]
SHARDS_COLUMNS = ["bot_id", "shard_id", "ts", "event_id", "up", "status", "guilds", "users", "api_ping"]

COLUMNS = {
    STATS_TABLE: STATS_COLUMNS,
    CUSTOM_TABLE: CUSTOM_COLUMNS,
    NAMES_TABLE: NAMES_COLUMNS,
    PROPS_TABLE: PROPS_COLUMNS,
    SHARDS_TABLE: SHARDS_COLUMNS,
}

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


def rows_by_table(
    entries: Sequence[tuple[bytes, StreamEvent]], names: dict[tuple[str, str], int] | None = None
) -> dict[str, tuple[Block, list[bytes]]]:
    """The columns of each event table, with the stream id of the entry each row came from (so
    a batch rejected for its data can be split and the bad entry named). Built column by
    column in one pass: no per-row list, no transposition in the client. `names`, when given,
    collects in the same pass what `name_rows` would from these events ((bot, custom metric
    name) -> earliest ms; `name_block` turns it into rows)."""
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
    # Properties and shard entries: several rows per event, each carrying its entry's stream id.
    p_ids: list[bytes] = []
    p_rows: list[Row] = []
    h_ids: list[bytes] = []
    h_rows: list[Row] = []
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
            if p.custom_metrics and names is not None:
                _first_seen(names, e, p)
            if p.props:
                for name, value in p.props.items():
                    p_rows.append([e.bot_id, name, e.received_ms, value])
                    p_ids.append(entry_id)
        elif isinstance(p, CustomPayload):
            c_rows.append(custom_row(e, p))
            c_ids.append(entry_id)
        elif isinstance(p, ShardsPayload):
            for s in p.shards:
                h_rows.append([
                    e.bot_id, s.id, e.received_ms, f"{e.event_id}:{s.id}", int(s.up), s.status,
                    s.guilds, s.users, s.api_ping,
                ])  # fmt: skip
                h_ids.append(entry_id)
    stats = [bot, ts, eid, guilds, users, shards, ping, ram, ram_total, cpu, bandwidth, custom]
    return {
        STATS_TABLE: (stats, s_ids),
        CUSTOM_TABLE: (to_block(c_rows, CUSTOM_COLUMNS), c_ids),
        PROPS_TABLE: (to_block(p_rows, PROPS_COLUMNS), p_ids),
        SHARDS_TABLE: (to_block(h_rows, SHARDS_COLUMNS), h_ids),
    }


def to_block(rows: Sequence[Row], columns: Sequence[str]) -> Block:
    if not rows:
        return [[] for _ in columns]
    return [list(c) for c in zip(*rows, strict=True)]


def block_rows(block: Block) -> int:
    return len(block[0]) if block else 0


def slice_block(block: Block, start: int, stop: int) -> Block:
    return [c[start:stop] for c in block]


def _first_seen(first: dict[tuple[str, str], int], e: StreamEvent, p: StatsPayload) -> None:
    for name in p.custom_metrics:
        key = (e.bot_id, name)
        if key not in first or e.received_ms < first[key]:
            first[key] = e.received_ms


def name_block(first: dict[tuple[str, str], int]) -> list[Row]:
    """One row per (bot, custom metric name) of `first` (name -> earliest ms), sorted."""
    return [[bot, name, ms] for (bot, name), ms in sorted(first.items())]


def name_rows(events: Sequence[StreamEvent]) -> list[Row]:
    """One row per (bot, custom metric name) first seen in these events, at its earliest time."""
    first: dict[tuple[str, str], int] = {}
    for e in events:
        if isinstance(e.payload, StatsPayload) and e.payload.custom_metrics:
            _first_seen(first, e, e.payload)
    return name_block(first)
