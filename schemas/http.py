"""Request bodies the gateway accepts, as msgspec structs: the one place their fields, types and
bounds are declared. `ingest/bodies.py` turns them into stream payloads.

Standard counts are non-negative integers up to 2^53 (what every client can represent exactly);
`null` means absent. Custom-graph values (`value1..3`) are number, string or null: numbers are
kept as their exact decimal text (Discord ids above 2^53 arrive as JSON numbers).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

MAX_EXACT = 2**53
MAX_STRING = 256
MAX_CUSTOM_ENTRIES = 100
MAX_CUSTOM_METRICS = 100

Count = Annotated[int, Meta(ge=0, le=MAX_EXACT)]
# Below 2^53, not up to it: an integer such as 2^53 + 1 becomes the float 2^53 when decoded, and
# must still be refused.
Amount = Annotated[float, Meta(ge=0, lt=MAX_EXACT)]
GraphType = Annotated[str, Meta(min_length=1, max_length=64)]
MetricName = Annotated[str, Meta(min_length=1, max_length=64)]
ShortText = Annotated[str, Meta(max_length=MAX_STRING)]
# Checked by hand after decoding (see ingest/bodies.py): a bool is not a value, a big int stays exact.
GraphValue = ShortText | int | float | None


class CustomEntry(msgspec.Struct, forbid_unknown_fields=False):
    """`POST /v1/bot/{id}/custom`, and each element of `custom` in a stats post."""

    type: GraphType
    value1: GraphValue = None
    value2: GraphValue = None
    value3: GraphValue = None


class StatsBody(msgspec.Struct, forbid_unknown_fields=False):
    """`POST /v1/bot/{id}` after aliases are folded in (`totalRam`, `total_ram` -> `ramTotal`;
    `cpuUsage`, `cpu_usage` -> `cpu`; `ram_usage` -> `ramUsage`; `customData` -> `custom`).
    Other top-level numeric properties are custom metrics, collected outside this struct."""

    guilds: Count
    users: Count | None = None
    shards: Count | None = None
    apiPing: Amount | None = None
    ramUsage: Amount | None = None
    ramTotal: Amount | None = None
    cpu: Amount | None = None
    bandwidth: Amount | None = None
    custom: Annotated[list[CustomEntry], Meta(max_length=MAX_CUSTOM_ENTRIES)] | None = None


class PlainStatsBody(StatsBody, forbid_unknown_fields=True):
    """A stats post with no alias and no custom metric: the common case, decoded in one pass."""


STATS_FIELDS = frozenset(StatsBody.__struct_fields__)
STATS_ALIASES = {
    "totalRam": "ramTotal",
    "total_ram": "ramTotal",
    "cpuUsage": "cpu",
    "cpu_usage": "cpu",
    "ram_usage": "ramUsage",
    "customData": "custom",
}


class DBotsBody(msgspec.Struct, forbid_unknown_fields=False):
    """`POST /bots/{id}/stats` (the DBots shape)."""

    guildCount: Count
    shardCount: Count | None = None
    userCount: Count | None = None


# Statcord sends every number as a string (a custom field handler may return a number).
NumberText = Annotated[str, Meta(max_length=64)] | int | float


class StatcordPopular(msgspec.Struct, forbid_unknown_fields=False):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    count: NumberText


class StatcordBody(msgspec.Struct, forbid_unknown_fields=False):
    """`POST /v3/stats` (Statcord v3, as statcord.js and statcord.py post it)."""

    id: Annotated[str, Meta(min_length=1, max_length=64)] | int
    key: Annotated[str, Meta(min_length=1, max_length=MAX_STRING)]
    servers: NumberText
    users: NumberText | None = None
    commands: NumberText | None = None
    active: Annotated[list[ShortText | int], Meta(max_length=100_000)] | None = None
    popular: Annotated[list[StatcordPopular], Meta(max_length=MAX_CUSTOM_ENTRIES)] | None = None
    memactive: NumberText | None = None
    memload: NumberText | None = None
    cpuload: NumberText | None = None
    bandwidth: NumberText | None = None
    custom1: NumberText | None = None
    custom2: NumberText | None = None


# --- answers ------------------------------------------------------------------------------------
# The bodies both services answer with; the handlers encode these structs, and the OpenAPI
# document (`docs/api/openapi.json`) is generated from them.


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """Every refusal: what is wrong, and the input at fault when one is."""

    message: str
    field: str | None = None
    # Seconds to wait before trying again (also the `Retry-After` header), on 429 and 503.
    retryAfter: int | None = None
    # Why the service refused (on 503s: backlog_full, redis_oom, redis_readonly, registry_not_ready…).
    reason: str | None = None


class StatcordError(ErrorBody, omit_defaults=True, kw_only=True):
    """A refusal on the Statcord route: statcord.js reads `error`, statcord.py `timeleft` (429)."""

    error: bool
    timeleft: int | None = None
    wait: int | None = None


class Empty(msgspec.Struct):
    """`{}`: the post was stored."""


class DBotsAccepted(msgspec.Struct):
    guildCount: int


class StatcordAccepted(msgspec.Struct):
    error: bool
    message: str


class Health(msgspec.Struct, omit_defaults=True):
    """`/healthz` and `/readyz`: `ok`, `ready` or `unavailable` (with the reason)."""

    status: str
    message: str | None = None
    # On `unavailable`: every part that is down (the message joins them).
    problems: list[str] | None = None
