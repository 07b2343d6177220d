"""What each kind of rule asks of the data, read from what the workers wrote.

A condition takes the rules of one kind (for the bots this evaluator holds) and returns, per
rule, a `Verdict`: firing or not, since when, and a sentence saying why. `None` means "cannot
tell" (no data to judge): the rule's state stays as it is.

- offline: the bot's newest post (`bot_latest`, one row per bot) is older than `minutes`;
- threshold: every post since `minutes` ago, and the last post before that, meet the
  condition (`apiPing` above 500; `ramUsage` above 90 % of `ramTotal`; `custom.<name>`);
- change: the metric's newest value against its value `hours` ago, in percent;
- shards_down: at least `count` of the bot's shards are down, by the rule the shards read uses
  (`runtime.shards`).

A new kind is one more function registered in `CONDITIONS` and its fields in
`schemas.alerts.Rule` and `registry.alerts`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from botpulse.runtime.clickhouse import Store
from botpulse.runtime.shards import shard_states
from botpulse.schemas.alerts import CUSTOM_PREFIX, METRICS, Rule


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """`firing`: an incident should be open; `holding`: an open one should stay open (a
    threshold opens after `minutes` of the condition and closes as soon as it stops)."""

    firing: bool
    holding: bool
    since: int  # ms: when the condition began (offline: the last post), or the latest sample
    detail: str
    value: float | None = None


class Context(msgspec.Struct, frozen=True):
    store: Store
    now: int  # ms, from the evaluator's clock
    latest: dict[str, int]  # bot id -> newest post (ms)
    heartbeat_ms: int


Condition = Callable[[Context, list[Rule]], Awaitable[dict[str, Verdict | None]]]


def _column(metric: str) -> str:
    """The SQL for a metric (checked names only: standard columns or a custom map key)."""
    if metric in METRICS:
        return f"toNullable(toFloat64({METRICS[metric]}))"
    name = metric[len(CUSTOM_PREFIX) :]
    # Validated to [A-Za-z0-9_.:-], so it cannot leave the quotes.
    return f"if(mapContains(custom, '{name}'), custom['{name}'], NULL)"


def _value(rule: Rule, sample: dict[str, Any]) -> float | None:
    value = sample.get(rule.metric)
    if value is None:
        return None
    if rule.of_metric:
        total = sample.get(rule.of_metric)
        if not total:
            return None
        return float(value) * 100.0 / float(total)
    return float(value)


def _meets(rule: Rule, value: float | None) -> bool:
    if value is None:
        return False
    return value > rule.value if rule.op == "above" else value < rule.value


def _describe_metric(rule: Rule) -> str:
    return f"{rule.metric} ({'% of ' + rule.of_metric if rule.of_metric else 'value'})"


async def offline(ctx: Context, rules: list[Rule]) -> dict[str, Verdict | None]:
    out: dict[str, Verdict | None] = {}
    for rule in rules:
        last = ctx.latest.get(rule.bot)
        if last is None:
            out[rule.id] = None  # never posted: nothing to go offline from
            continue
        limit = int(rule.minutes * 60_000)
        silent = ctx.now - last
        out[rule.id] = Verdict(
            firing=silent >= limit,
            holding=silent >= limit,
            since=last,
            detail=f"no post for {silent // 60_000} min (limit {rule.minutes:g} min)",
        )
    return out


def _metrics_of(rules: list[Rule]) -> list[str]:
    names: dict[str, None] = {}
    for rule in rules:
        names[rule.metric] = None
        if rule.of_metric:
            names[rule.of_metric] = None
    return list(names)


async def threshold(ctx: Context, rules: list[Rule]) -> dict[str, Verdict | None]:
    if not rules:
        return {}
    metrics = _metrics_of(rules)
    longest = max(int(r.minutes * 60_000) for r in rules)
    # The window, plus one heartbeat before it to find the last sample before the window.
    start = ctx.now - longest - ctx.heartbeat_ms
    columns = ", ".join(_column(m) for m in metrics)
    rows = await ctx.store.query(
        f"SELECT bot_id, toUnixTimestamp64Milli(ts), {columns} FROM bot_stats "
        "WHERE bot_id IN {ids:Array(String)} "
        "AND ts > fromUnixTimestamp64Milli({start:Int64}, 'UTC') "
        "AND ts <= fromUnixTimestamp64Milli({now:Int64}, 'UTC') ORDER BY bot_id, ts",
        {"ids": sorted({r.bot for r in rules}), "start": start, "now": ctx.now},
    )
    samples: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for row in rows:
        samples.setdefault(row[0], []).append((int(row[1]), dict(zip(metrics, row[2:], strict=True))))
    out: dict[str, Verdict | None] = {}
    for rule in rules:
        series = samples.get(rule.bot, [])
        window_start = ctx.now - int(rule.minutes * 60_000)
        before = [s for s in series if s[0] <= window_start]
        inside = [s for s in series if s[0] > window_start]
        if not series:
            out[rule.id] = None
            continue
        latest_ts, latest = series[-1]
        value = _value(rule, latest)
        if not before:
            # The data does not reach back over the whole window: it can only end a firing.
            meets = _meets(rule, value)
            out[rule.id] = (
                None
                if meets
                else Verdict(firing=False, holding=False, since=latest_ts, detail="", value=value)
            )
            continue
        judged = [before[-1], *inside]
        held = all(_meets(rule, _value(rule, s)) for _, s in judged)
        # It began at the first sample of the unbroken run that meets it.
        began = judged[0][0]
        for ts, sample in reversed(series):
            if not _meets(rule, _value(rule, sample)):
                break
            began = ts
        detail = (
            f"{_describe_metric(rule)} is {value:g}, {rule.op} {rule.value:g} "
            f"for {rule.minutes:g} min" if value is not None else f"{rule.metric} has no value"
        )  # fmt: skip
        out[rule.id] = Verdict(
            firing=held,
            holding=_meets(rule, value),
            since=began if held else latest_ts,
            detail=detail,
            value=value,
        )
    return out


async def change(ctx: Context, rules: list[Rule]) -> dict[str, Verdict | None]:
    out: dict[str, Verdict | None] = {}
    by_hours: dict[float, list[Rule]] = {}
    for rule in rules:
        by_hours.setdefault(rule.hours, []).append(rule)
    for hours, group in by_hours.items():
        metrics = _metrics_of(group)
        then = ctx.now - int(hours * 3_600_000)
        lookback = ctx.heartbeat_ms
        # Two short ranges by the (bot_id, ts) key: around `hours` ago, and the newest posts.
        pairs = ", ".join(
            f"argMaxIf({_column(m)}, ts, ts <= fromUnixTimestamp64Milli({{then:Int64}}, 'UTC')), "
            f"argMaxIf({_column(m)}, ts, ts > fromUnixTimestamp64Milli({{then:Int64}}, 'UTC'))"
            for m in metrics
        )
        rows = await ctx.store.query(
            f"SELECT bot_id, {pairs} FROM bot_stats WHERE bot_id IN {{ids:Array(String)}} AND ("
            "(ts > fromUnixTimestamp64Milli({then:Int64} - {lb:Int64}, 'UTC') "
            "AND ts <= fromUnixTimestamp64Milli({then:Int64}, 'UTC')) OR "
            "(ts > fromUnixTimestamp64Milli({now:Int64} - {lb:Int64}, 'UTC') "
            "AND ts <= fromUnixTimestamp64Milli({now:Int64}, 'UTC'))) GROUP BY bot_id",
            {"ids": sorted({r.bot for r in group}), "then": then, "now": ctx.now, "lb": lookback},
        )
        found = {row[0]: row[1:] for row in rows}
        for rule in group:
            row = found.get(rule.bot)
            if row is None:
                out[rule.id] = None
                continue
            i = metrics.index(rule.metric) * 2
            before, current = row[i], row[i + 1]
            if before is None or current is None or before == 0:
                out[rule.id] = None
                continue
            pct = (float(current) - float(before)) * 100.0 / abs(float(before))
            moved = -pct if rule.op == "drop" else pct
            word = "dropped" if rule.op == "drop" else "rose"
            out[rule.id] = Verdict(
                firing=moved > rule.percent,
                holding=moved > rule.percent,
                since=ctx.now,
                detail=f"{rule.metric} {word} {abs(pct):.1f}% in {hours:g} h ({before:g} → {current:g}); "
                f"limit {rule.percent:g}%",
                value=float(current),
            )
    return out


def _ids(shard_ids: list[int], most: int = 10) -> str:
    shown = ", ".join(str(s) for s in shard_ids[:most])
    return shown + (f" and {len(shard_ids) - most} more" if len(shard_ids) > most else "")


async def shards_down(ctx: Context, rules: list[Rule]) -> dict[str, Verdict | None]:
    states = await shard_states(ctx.store, [r.bot for r in rules], ctx.now, ctx.heartbeat_ms)
    out: dict[str, Verdict | None] = {}
    for rule in rules:
        shards = states.get(rule.bot)
        if not shards:
            out[rule.id] = None  # never posted per shard: no shards to count
            continue
        down = [shard_id for shard_id, up in shards if not up]
        firing = len(down) >= rule.count
        detail = f"{len(down)} of {len(shards)} shards down (limit {rule.count})"
        out[rule.id] = Verdict(
            firing=firing,
            holding=firing,
            since=ctx.now,
            detail=detail + (f": {_ids(down)}" if down else ""),
            value=float(len(down)),
        )
    return out


CONDITIONS: dict[str, Condition] = {
    "offline": offline,
    "threshold": threshold,
    "change": change,
    "shards_down": shards_down,
}
