"""Request bodies -> stream payloads. Every refusal is a `BadInput` naming the field.

The structs and bounds live in `schemas/http.py`; this module folds the clients' aliases in,
collects the custom metrics (unknown top-level numeric properties) and the extra properties
(unknown top-level strings and booleans), reads the shard a post is for (`shardId`) or the
shards it reports (`shards` array), and converts the Statcord shape (numbers as strings) to the
same payloads DisStat posts produce.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec

from botpulse.schemas.http import (
    MAX_CUSTOM_METRICS,
    MAX_EXACT,
    MAX_PROP_VALUE,
    MAX_PROPS_PER_POST,
    SHARD_ALIASES,
    SHARD_COUNT_FIELDS,
    SHARD_ID_FIELDS,
    STATS_ALIASES,
    STATS_FIELDS,
    CustomEntry,
    DBotsBody,
    PlainStatsBody,
    StatcordBody,
    StatsBody,
)
from botpulse.schemas.refusals import explain
from botpulse.schemas.stream import CustomPayload, ShardEntry, ShardsPayload, StatsPayload


class BadInput(Exception):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


_generic = msgspec.json.Decoder()
_plain_stats = msgspec.json.Decoder(PlainStatsBody)
_custom = msgspec.json.Decoder(CustomEntry)
_dbots = msgspec.json.Decoder(DBotsBody)
_statcord = msgspec.json.Decoder(StatcordBody)


def _validation(exc: msgspec.ValidationError, struct: Any, rename: dict[str, str] | None = None) -> BadInput:
    return BadInput(*explain(exc, struct, rename))


def _decode(decoder: msgspec.json.Decoder, body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _validation(exc, decoder.type) from None
    except msgspec.DecodeError as exc:
        raise BadInput(f"Invalid JSON: {exc}") from None
    except RecursionError:
        raise BadInput("Invalid JSON: nested too deeply") from None


def _text(value: str | int | float | None) -> str | None:
    """A custom-graph value as text; integers keep every digit (Discord ids above 2^53)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return repr(value)


def custom_payload(entry: CustomEntry) -> CustomPayload:
    return CustomPayload(
        type=entry.type, value1=_text(entry.value1), value2=_text(entry.value2), value3=_text(entry.value3)
    )


def parse_custom(body: bytes) -> CustomPayload:
    return custom_payload(_decode(_custom, body))


def _metric(name: str, value: int | float) -> float:
    if not 1 <= len(name) <= 64:
        raise BadInput("Custom metric names must be 1 to 64 characters", name[:64])
    if not math.isfinite(value) or abs(value) > MAX_EXACT:
        raise BadInput(f"Invalid `{name}`: a custom metric must be a finite number within ±2^53", name)
    return float(value)


class StatsPost(msgspec.Struct, frozen=True):
    """A parsed stats post. `shard` is set for a post made by one shard (`shardId`): its values
    are that shard's, and the gateway adds them to the bot's totals (ingest/shards.py). `shards`
    holds the entries of a post that reports every shard at once; `stats` is then the total."""

    stats: StatsPayload
    entries: list[CustomPayload]
    shard: ShardEntry | None = None
    shards: ShardsPayload | None = None


DEFAULT_SHARD_LIMIT = 2048


def parse_stats(body: bytes, shard_limit: int = DEFAULT_SHARD_LIMIT) -> StatsPost:
    """A DisStat stats post: the stats payload (custom metrics and properties in it), its
    custom-graph entries and its shard values."""
    try:
        stats = _plain_stats.decode(body)
        return StatsPost(_payload(stats, {}, {}), _entries(stats))
    except (msgspec.DecodeError, RecursionError):
        pass  # aliases, custom metrics, shards or an error: the general path below names the field
    raw = _decode(_generic, body)
    if not isinstance(raw, dict):
        raise BadInput("Request body must be a JSON object")
    known: dict[str, Any] = {}
    sent_as: dict[str, str] = {}
    metrics: dict[str, float] = {}
    props: dict[str, str] = {}
    shard_id: int | None = None
    shard_list: list[ShardEntry] | None = None
    for name, value in raw.items():
        if name in SHARD_ID_FIELDS:
            shard_id = _shard_id(value, name, shard_limit)
            continue
        if name in SHARD_COUNT_FIELDS:
            name = "shards"
        if name == "shards" and isinstance(value, list):
            shard_list = _shard_list(value, shard_limit)
            continue
        field = STATS_ALIASES.get(name, name)
        if field in STATS_FIELDS:
            # The canonical name wins over an alias sent alongside it.
            if field not in known or name == field:
                known[field] = value
                sent_as[field] = name
        elif isinstance(value, int | float) and not isinstance(value, bool):
            metrics[name] = _metric(name, value)
        elif isinstance(value, str | bool):
            props[name] = _prop(name, value)
        # Any other unknown property (object, array, null) is ignored, as DisStat does.
    if len(metrics) > MAX_CUSTOM_METRICS:
        raise BadInput(f"At most {MAX_CUSTOM_METRICS} custom metrics per post")
    if shard_id is not None:
        props.pop("status", None)  # the shard's status, not a property
    if len(props) > MAX_PROPS_PER_POST:
        raise BadInput(f"At most {MAX_PROPS_PER_POST} extra (non-numeric) properties per post")
    if shard_id is not None and shard_list is not None:
        raise BadInput("A post carries either `shardId` or a `shards` array, not both", "shardId")
    if shard_list is not None:
        _fill_totals(known, shard_list)
    try:
        stats = msgspec.convert(known, StatsBody)
    except msgspec.ValidationError as exc:
        raise _validation(exc, StatsBody, {k: v for k, v in sent_as.items() if k != v}) from None
    if shard_list is not None:
        shard_count = stats.shards if stats.shards is not None else len(shard_list)
        stats.shards = max(shard_count, len(shard_list))
    post = StatsPost(_payload(stats, metrics, props), _entries(stats))
    if shard_id is not None:
        if metrics:
            raise BadInput(
                "Custom metrics cannot be posted per shard: post them without `shardId`", next(iter(metrics))
            )
        if stats.shards is not None and shard_id >= stats.shards:
            raise BadInput(f"Invalid `shardId`: {shard_id} is not below the shard count", "shardId")
        status, up = _status(raw.get("status"), "status")
        shard = ShardEntry(shard_id, up, status, stats.guilds, stats.users, stats.apiPing)
        return StatsPost(post.stats, post.entries, shard=shard)
    if shard_list is not None:
        return StatsPost(post.stats, post.entries, shards=ShardsPayload(shard_list))
    return post


def _payload(stats: StatsBody, metrics: dict[str, float], props: dict[str, str]) -> StatsPayload:
    # Positional, in `StatsPayload`'s field order (msgspec's keyword path is the slower one; every
    # stats post passes here).
    return StatsPayload(
        stats.guilds, stats.users, stats.shards, stats.apiPing, stats.ramUsage, stats.ramTotal, stats.cpu,
        stats.bandwidth, metrics, props,
    )  # fmt: skip


def _entries(stats: StatsBody) -> list[CustomPayload]:
    # Most posts carry no entries: no comprehension to run for them.
    return [custom_payload(e) for e in stats.custom] if stats.custom else []


def _prop(name: str, value: str | bool) -> str:
    if not 1 <= len(name) <= 64:
        raise BadInput("Property names must be 1 to 64 characters", name[:64])
    text = ("true" if value else "false") if isinstance(value, bool) else value
    if len(text) > MAX_PROP_VALUE:
        raise BadInput(f"Invalid `{name}`: a property value is at most {MAX_PROP_VALUE} characters", name)
    return text


# --- shards ----------------------------------------------------------------------------------
# discord.js `Status` numbers, by name; only `ready` is up.
_JS_STATUS = (
    "ready", "connecting", "reconnecting", "idle", "nearly", "disconnected", "waiting_for_guilds",
    "identifying", "resuming",
)  # fmt: skip
UP_STATUSES = frozenset({"ready", "connected", "online", "up", "ok", "resumed"})
MAX_STATUS = 32


def _shard_id(value: Any, field: str, limit: int) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 10:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise BadInput(f"Invalid `{field}`: a shard id is a whole number from 0 to {limit - 1}", field)
    return value


def _status(value: Any, field: str) -> tuple[str | None, bool]:
    """(normalised status text, up) for a status as clients send it: a word (`ready`,
    `disconnected`, …), a discord.js `Status` number, or a boolean `online`-style flag."""
    if value is None:
        return None, True
    if isinstance(value, bool):
        return ("up" if value else "down"), value
    if isinstance(value, int):
        if not 0 <= value < len(_JS_STATUS):
            raise BadInput(f"Invalid `{field}`: unknown shard status {value}", field)
        text = _JS_STATUS[value]
    elif isinstance(value, str) and 1 <= len(value) <= MAX_STATUS:
        text = value.strip().lower().replace(" ", "_")
    else:
        raise BadInput(f"Invalid `{field}`: a shard status is a word of up to {MAX_STATUS} letters", field)
    return text, text in UP_STATUSES


def _shard_count(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_EXACT:
        raise BadInput(f"Invalid `{field}`: expected a whole number from 0 to 2^53", field)
    return value


def _latency(value: Any, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < MAX_EXACT:
        raise BadInput(f"Invalid `{field}`: expected a number from 0 to 2^53", field)
    return float(value)


def _shard_list(items: list[Any], limit: int) -> list[ShardEntry]:
    """A `shards` array: objects `{id, status, guilds, users, latency}` (aliases in
    `SHARD_ALIASES`; an object without an id takes its index), or plain numbers, each the guild
    count of the shard at that index (top.gg's `shards`)."""
    if len(items) > limit:
        raise BadInput(f"At most {limit} shards per bot", "shards")
    entries: dict[int, ShardEntry] = {}
    for i, item in enumerate(items):
        where = f"shards[{i}]"
        if isinstance(item, int) and not isinstance(item, bool):
            entries[i] = ShardEntry(i, guilds=_shard_count(item, where))
            continue
        if not isinstance(item, dict):
            raise BadInput(f"Invalid `{where}`: expected an object or a guild count", where)
        values: dict[str, Any] = {}
        for key, value in item.items():
            if key in SHARD_ALIASES:
                values.setdefault(SHARD_ALIASES[key], value)
        shard_id = _shard_id(values["id"], f"{where}.id", limit) if "id" in values else i
        if shard_id in entries:
            raise BadInput(f"Invalid `{where}.id`: shard {shard_id} appears twice", f"{where}.id")
        status, up = _status(values.get("status"), f"{where}.status")
        entries[shard_id] = ShardEntry(
            shard_id,
            up,
            status,
            _shard_count(values.get("guilds"), f"{where}.guilds"),
            _shard_count(values.get("users"), f"{where}.users"),
            _latency(values.get("latency"), f"{where}.latency"),
        )
    return [entries[k] for k in sorted(entries)]


def _fill_totals(known: dict[str, Any], shards: list[ShardEntry]) -> None:
    """A post with a `shards` array and no top-level count: the totals are the shards' sums
    (latency: their mean)."""
    for field, attr in (("guilds", "guilds"), ("users", "users")):
        values = [getattr(s, attr) for s in shards if getattr(s, attr) is not None]
        if known.get(field) is None and values:
            known[field] = sum(values)
    pings = [s.api_ping for s in shards if s.api_ping is not None]
    if known.get("apiPing") is None and pings:
        known["apiPing"] = sum(pings) / len(pings)


class DBotsPost(msgspec.Struct, frozen=True):
    stats: StatsPayload
    shard: ShardEntry | None = None


def parse_dbots(body: bytes, shard_limit: int = DEFAULT_SHARD_LIMIT) -> DBotsPost:
    """DBots stats; with `shardId` (discord.bots.gg) the counts are that shard's."""
    dbots: DBotsBody = _decode(_dbots, body)
    stats = StatsPayload(guilds=dbots.guildCount, shards=dbots.shardCount, users=dbots.userCount)
    if dbots.shardId is None:
        return DBotsPost(stats)
    shard_id = _shard_id(dbots.shardId, "shardId", shard_limit)
    if dbots.shardCount is not None and shard_id >= dbots.shardCount:
        raise BadInput(f"Invalid `shardId`: {shard_id} is not below `shardCount`", "shardId")
    return DBotsPost(stats, ShardEntry(shard_id, guilds=dbots.guildCount, users=dbots.userCount))


_NUMBER = re.compile(r"^\s*-?\d+(\.\d+)?([eE][+-]?\d+)?\s*$")


def _number(value: str | int | float | None, field: str, *, count: bool = False) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        if not _NUMBER.match(value):
            raise BadInput(f"Invalid `{field}`: expected a number (as a string), got {value[:20]!r}", field)
        value = float(value)
    if not math.isfinite(value) or not 0 <= value <= MAX_EXACT:
        raise BadInput(f"Invalid `{field}`: expected a number from 0 to 2^53", field)
    if count and value != int(value):
        raise BadInput(f"Invalid `{field}`: expected a whole number", field)
    return value


def _count(value: str | int | float | None, field: str) -> int | None:
    number = _number(value, field, count=True)
    return None if number is None else int(number)


class StatcordPost(msgspec.Struct, frozen=True):
    bot_id: str
    key: str
    stats: StatsPayload
    entries: list[CustomPayload]


STATCORD_KEY_PREFIX = "statcord.com-"


def parse_statcord(body: bytes) -> StatcordPost:
    """Statcord v3: RAM total is derived as memactive / (memload / 100); `commands`, the number of
    `active` users and non-zero `custom1`/`custom2` become custom metrics; each `popular` command
    becomes a custom-graph entry of type `popular_command` (value1 name, value2 count)."""
    post: StatcordBody = _decode(_statcord, body)
    guilds = _count(post.servers, "servers")
    mem_active = _number(post.memactive, "memactive")
    mem_load = _number(post.memload, "memload")
    if mem_load is not None and mem_load > 100:
        raise BadInput("Invalid `memload`: a percentage from 0 to 100", "memload")
    ram_total = mem_active / (mem_load / 100) if mem_active and mem_load else None
    if ram_total is not None and not (math.isfinite(ram_total) and ram_total <= MAX_EXACT):
        # A tiny memload makes the derived total absurd (or infinite): refuse the input at fault.
        raise BadInput(
            "Invalid `memload`: too small for `memactive` (derived total RAM over 2^53)", "memload"
        )
    metrics: dict[str, float] = {}
    commands = _count(post.commands, "commands")
    if commands is not None:
        metrics["commands"] = float(commands)
    if post.active is not None:
        metrics["active_users"] = float(len(post.active))
    for name in ("custom1", "custom2"):
        value = _number(getattr(post, name), name)
        if value:
            metrics[name] = value
    entries = [
        CustomPayload(type="popular_command", value1=p.name, value2=str(_count(p.count, "popular.count")))
        for p in post.popular or ()
    ]
    key = post.key.removeprefix(STATCORD_KEY_PREFIX)
    stats = StatsPayload(
        guilds=guilds,
        users=_count(post.users, "users"),
        ram_usage=mem_active,
        ram_total=ram_total,
        cpu=_number(post.cpuload, "cpuload"),
        bandwidth=_number(post.bandwidth, "bandwidth"),
        custom_metrics=metrics,
    )
    return StatcordPost(bot_id=str(post.id), key=key, stats=stats, entries=entries)
