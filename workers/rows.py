"""Stream events -> table rows. Pure functions: the one place that knows column order."""

from __future__ import annotations

import datetime as dt

from schemas.stream import CustomPayload, StatsPayload, StreamEvent

STATS_COLUMNS = [
    "bot_id", "ts", "event_id", "guilds", "users", "shards",
    "api_ping", "ram_usage", "ram_total", "cpu", "bandwidth", "custom",
]  # fmt: skip
CUSTOM_COLUMNS = [
    "bot_id", "ts", "event_id", "type", "value1", "value2", "value3",
    "value1_num", "value2_num", "value3_num",
]  # fmt: skip


def _ts(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def _num(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def split_rows(events: list[StreamEvent]) -> tuple[list[list[object]], list[list[object]]]:
    stats: list[list[object]] = []
    custom: list[list[object]] = []
    for e in events:
        p = e.payload
        if isinstance(p, StatsPayload):
            stats.append([
                e.bot_id, _ts(e.received_ms), e.event_id, p.guilds, p.users, p.shards,
                p.api_ping, p.ram_usage, p.ram_total, p.cpu, p.bandwidth, p.custom_metrics,
            ])  # fmt: skip
        elif isinstance(p, CustomPayload):
            custom.append([
                e.bot_id, _ts(e.received_ms), e.event_id, p.type, p.value1, p.value2, p.value3,
                _num(p.value1), _num(p.value2), _num(p.value3),
            ])  # fmt: skip
    return stats, custom
