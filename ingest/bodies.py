"""Request bodies -> stream payloads. Every refusal is a `BadInput` naming the field.

The structs and bounds live in `schemas/http.py`; this module folds the clients' aliases in,
collects the custom metrics (unknown top-level numeric properties), and converts the Statcord
shape (numbers as strings) to the same payloads DisStat posts produce.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec

from botpulse.schemas.http import (
    MAX_CUSTOM_METRICS,
    MAX_EXACT,
    STATS_ALIASES,
    STATS_FIELDS,
    CustomEntry,
    DBotsBody,
    PlainStatsBody,
    StatcordBody,
    StatsBody,
)
from botpulse.schemas.stream import CustomPayload, StatsPayload


class BadInput(Exception):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


_PATH = re.compile(r"^(.*?) - at `\$\.?(.*)`$")
_generic = msgspec.json.Decoder()
_plain_stats = msgspec.json.Decoder(PlainStatsBody)
_custom = msgspec.json.Decoder(CustomEntry)
_dbots = msgspec.json.Decoder(DBotsBody)
_statcord = msgspec.json.Decoder(StatcordBody)


def _validation(exc: msgspec.ValidationError, rename: dict[str, str] | None = None) -> BadInput:
    text = str(exc)
    match = _PATH.match(text) or re.match(r"^(Object missing required field `.*`)()$", text)
    if match is None:
        if text.startswith("Expected `object`"):
            return BadInput("The body must be a JSON object")
        return BadInput(text)
    problem, field = match.group(1), match.group(2)
    if rename:
        head = re.split(r"[.\[]", field, maxsplit=1)[0]
        if head in rename:
            field = rename[head] + field[len(head) :]
    if problem.startswith("Object missing required field"):
        missing = problem.split("`")[1]
        field = f"{field}.{missing}" if field else missing
        return BadInput(f"`{field}` is required", field)
    return BadInput(f"Invalid `{field}`: {problem[0].lower()}{problem[1:]}", field)


def _decode(decoder: msgspec.json.Decoder, body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _validation(exc) from None
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


def parse_stats(body: bytes) -> tuple[StatsPayload, list[CustomPayload]]:
    """A DisStat stats post: the stats payload (custom metrics in it) and its custom-graph entries."""
    try:
        return _stats_payload(_plain_stats.decode(body), {})
    except (msgspec.DecodeError, RecursionError):
        pass  # aliases, custom metrics or an error: the general path below, which names the field
    raw = _decode(_generic, body)
    if not isinstance(raw, dict):
        raise BadInput("The body must be a JSON object")
    known: dict[str, Any] = {}
    sent_as: dict[str, str] = {}
    metrics: dict[str, float] = {}
    for name, value in raw.items():
        field = STATS_ALIASES.get(name, name)
        if field in STATS_FIELDS:
            # The canonical name wins over an alias sent alongside it.
            if field not in known or name == field:
                known[field] = value
                sent_as[field] = name
        elif isinstance(value, int | float) and not isinstance(value, bool):
            metrics[name] = _metric(name, value)
        # Any other unknown property (string, object, …) is ignored, as DisStat does.
    if len(metrics) > MAX_CUSTOM_METRICS:
        raise BadInput(f"At most {MAX_CUSTOM_METRICS} custom metrics per post")
    try:
        stats = msgspec.convert(known, StatsBody)
    except msgspec.ValidationError as exc:
        raise _validation(exc, {k: v for k, v in sent_as.items() if k != v}) from None
    return _stats_payload(stats, metrics)


def _stats_payload(stats: StatsBody, metrics: dict[str, float]) -> tuple[StatsPayload, list[CustomPayload]]:
    payload = StatsPayload(
        guilds=stats.guilds,
        users=stats.users,
        shards=stats.shards,
        api_ping=stats.apiPing,
        ram_usage=stats.ramUsage,
        ram_total=stats.ramTotal,
        cpu=stats.cpu,
        bandwidth=stats.bandwidth,
        custom_metrics=metrics,
    )
    return payload, [custom_payload(e) for e in stats.custom or ()]


def parse_dbots(body: bytes) -> StatsPayload:
    dbots: DBotsBody = _decode(_dbots, body)
    return StatsPayload(guilds=dbots.guildCount, shards=dbots.shardCount, users=dbots.userCount)


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
