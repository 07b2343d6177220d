"""`GET /v1/top`: public bots ranked by any metric, or by the ratio of two.

A metric is one of the "last" fields (`guilds`, `users`, `shards`, `ramTotal`: the newest value
within the period), an averaged field (`apiPing`, `ramUsage`, `cpu`, `bandwidth`: the mean of
the period's posts) or a custom metric by name (the mean over the period's posts that carried
it). With `per`, the value is `metric / per`, for bots where both exist and `per` is not 0
(DCSServerBot's `topkdr`: `metric=kills&per=deaths`). Periods read the roll-ups: `hour`, `day`
and `week` the hourly one (whole hours back from now), `month` and `all` the daily one — except
`all` over "last" fields only (the default leaderboard), which reads `bot_latest`: one row per
bot, not per bot-day.
"""

from __future__ import annotations

from typing import Any

from botpulse.query.stats import AVG_FIELDS, LAST_FIELDS
from botpulse.runtime.clickhouse import Store

PERIODS: dict[str, tuple[str, int | None]] = {
    "hour": ("bot_stats_1h", 1),
    "day": ("bot_stats_1h", 24),
    "week": ("bot_stats_1h", 24 * 7),
    "month": ("bot_stats_1d", 24 * 30),
    "all": ("bot_stats_1d", None),
}
MAX_NAME = 64


class BadMetric(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def default_period(metric: str, per: str | None) -> str:
    """Latest values rank over all time (a bot that stopped posting keeps its last count);
    means rank over the last day."""
    return "all" if metric in LAST_FIELDS and (per is None or per in LAST_FIELDS) else "day"


def metric_sql(name: str, param: str, field: str) -> tuple[str, dict[str, Any]]:
    """The aggregate expression (over a roll-up's rows of one bot) for a metric name."""
    if name in LAST_FIELDS:
        return f"argMaxMerge({LAST_FIELDS[name]})", {}
    if name in AVG_FIELDS:
        return f"avgMerge({AVG_FIELDS[name]})", {}
    if not 1 <= len(name) <= MAX_NAME:
        raise BadMetric(field, f"{field}: a field or a custom metric name of 1 to {MAX_NAME} characters")
    bound = f"{{{param}:String}}"
    return f"sum(custom_sum[{bound}]) / nullIf(sum(custom_count[{bound}]), 0)", {param: name}


async def leaderboard(
    store: Store, metric: str, per: str | None, period: str, limit: int, ascending: bool
) -> list[dict[str, Any]]:
    table, hours = PERIODS[period]
    if period == "all" and metric in LAST_FIELDS and (per is None or per in LAST_FIELDS):
        table = "bot_latest"  # the same argMax states, merged per bot already
    value, params = metric_sql(metric, "m", "metric")
    if per is not None:
        divisor, more = metric_sql(per, "d", "per")
        params.update(more)
        value = f"toFloat64({value}) / nullIf(toFloat64({divisor}), 0)"
    custom = {name: field for name, field in ((metric, "metric"), (per, "per")) if name in params.values()}
    if custom:
        known = await store.query(
            "SELECT DISTINCT name FROM custom_metric_names WHERE name IN {names:Array(String)}",
            {"names": list(custom)},
        )
        for name, field in custom.items():
            if name not in {r[0] for r in known}:
                raise BadMetric(field, f"{field}: no field or custom metric is named {name[:64]!r}")
    since = ""
    if hours is not None:
        since = " WHERE bucket >= toStartOfHour(now()) - toIntervalHour({hours:UInt32} - 1)"
        params["hours"] = hours
    params["limit"] = limit
    order = "ASC" if ascending else "DESC"
    rows = await store.query(
        "SELECT b.id, b.username, b.avatar, s.v FROM"
        f" (SELECT bot_id, {value} AS v FROM {table}{since} GROUP BY bot_id) AS s"
        " INNER JOIN (SELECT id, username, avatar FROM bots FINAL WHERE deleted = 0 AND private = 0)"
        " AS b ON b.id = s.bot_id WHERE s.v IS NOT NULL AND isFinite(toFloat64(s.v))"
        f" ORDER BY s.v {order}, b.id ASC LIMIT {{limit:UInt32}}",
        params,
    )
    return [
        {"rank": n + 1, "id": r[0], "username": r[1], "avatar": r[2], "value": r[3]}
        for n, r in enumerate(rows)
    ]
