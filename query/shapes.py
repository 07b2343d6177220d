"""The query service's answers as msgspec structs: what the OpenAPI document (`query/spec.py`) is
generated from and what schemathesis checks the live answers against.

The request bodies are `schemas/account.py`'s structs, which the handlers decode with (one
definition for the validation and the document).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from botpulse.schemas.account import QuietHoursSpec, RuleOp
from botpulse.schemas.alerts import DeliveryEntry, DestinationType, RuleKind

AccountId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="An account's id (`acc_…`).")]
Millis = Annotated[int, Meta(description="Unix time in milliseconds.")]
Connection = Literal["connected", "disconnected"]
# `connectionStatus` refined by the shards (query/shards.py): `degraded` when some are down.
ConnectionState = Literal["connected", "degraded", "disconnected"]


# --- reading --------------------------------------------------------------------------------------
class Range(msgspec.Struct):
    start: Millis
    end: Millis
    dataPoints: int


class Bucket(msgspec.Struct):
    time: Millis
    guilds: int | None
    users: int | None
    shards: int | None
    ramTotal: float | None
    apiPing: float | None
    ramUsage: float | None
    cpu: float | None
    bandwidth: float | None
    custom: dict[str, float | None]


class TopValue(msgspec.Struct):
    value: str
    count: int


class CustomTotal(msgspec.Struct):
    count: int
    top: list[TopValue]


class BotInfo(msgspec.Struct, omit_defaults=True):
    id: str
    username: str
    avatar: str | None
    private: bool
    createdAt: Millis
    lastSeen: Millis | None
    connectionStatus: Connection
    # Added beside `connectionStatus` (clients that know only it keep reading it): with the
    # shards of a bot that posts per shard, `degraded` when some are down; `shardsUp` and
    # `shardsTotal` are null for a bot that never did.
    connectionState: ConnectionState
    shardsUp: int | None
    shardsTotal: int | None
    customGraphs: list[str]
    # The latest value of each extra (non-numeric) property the bot posts, e.g. `version`.
    properties: dict[str, str]
    # With returnStats=true:
    range: Range | UnsetType = UNSET
    stats: list[Bucket] | UnsetType = UNSET
    customTotals: dict[str, CustomTotal] | UnsetType = UNSET


class BotTop(msgspec.Struct):
    id: str
    type: str
    start: Millis
    end: Millis
    count: int
    top: list[TopValue]


class Period(msgspec.Struct):
    from_: Millis = msgspec.field(name="from")
    to: Millis


class BotUptime(msgspec.Struct):
    id: str
    start: Millis
    end: Millis
    uptime: Annotated[int, Meta(description="Milliseconds up inside the range.")]
    percentage: float
    offline: list[Period]
    offlineTruncated: bool


class ListedBot(msgspec.Struct, omit_defaults=True):
    """A listed bot; `fields` chooses which properties are present."""

    id: str | UnsetType = UNSET
    username: str | UnsetType = UNSET
    avatar: str | UnsetType | None = UNSET
    private: bool | UnsetType = UNSET
    createdAt: Millis | UnsetType = UNSET
    lastSeen: Millis | UnsetType | None = UNSET
    connectionStatus: Connection | UnsetType = UNSET
    guilds: int | UnsetType | None = UNSET
    users: int | UnsetType | None = UNSET
    shards: int | UnsetType | None = UNSET
    # Only when `fields` asks for them (`statistics.list` gives them by default):
    updatedAt: str | UnsetType = msgspec.field(default=UNSET, name="_updatedAt")
    version: str | UnsetType | None = UNSET


class Listing(msgspec.Struct):
    bots: list[ListedBot]
    count: int
    offset: int
    total: int
    success: bool


class StatisticsRecord(ListedBot, omit_defaults=True):
    """A record of `statistics.list`: a listed bot with Rocket.Chat's `_id` for its id."""

    id: str | UnsetType = msgspec.field(default=UNSET, name="_id")


class StatisticsList(msgspec.Struct):
    statistics: list[StatisticsRecord]
    count: int
    offset: int
    total: int
    success: bool


class RocketChatError(msgspec.Struct):
    """A refusal of `statistics.list`, in Rocket.Chat's shape."""

    status: Literal["error"]
    message: str
    success: bool


class ListingError(msgspec.Struct):
    """A refused listing (the Rocket.Chat-style shape the listing's clients read)."""

    success: bool
    error: str
    message: str


class Ranked(msgspec.Struct):
    rank: int
    id: str
    username: str
    avatar: str | None
    value: float


class Leaderboard(msgspec.Struct, omit_defaults=True):
    metric: str
    period: Literal["hour", "day", "week", "month", "all"]
    bots: list[Ranked]
    per: str | UnsetType = UNSET  # with `per`: each value is metric / per


# --- shards ---------------------------------------------------------------------------------------
class ShardRow(msgspec.Struct):
    id: int
    status: Literal["up", "down"]
    reportedStatus: str | None
    firstSeen: Millis
    lastSeen: Millis
    guilds: int | None
    users: int | None
    latency: float | None


class ShardGrid(msgspec.Struct):
    id: str
    connectionState: ConnectionState | None  # null: the bot never posted per shard
    shardsUp: int
    shardsTotal: int
    shards: list[ShardRow]


class ShardUptime(msgspec.Struct):
    id: int
    uptime: Annotated[int, Meta(description="Milliseconds up inside the range.")]
    percentage: float


class ShardUptimes(msgspec.Struct):
    id: str
    start: Millis
    end: Millis
    shards: list[ShardUptime]


# --- Datagram -------------------------------------------------------------------------------------
class UptimeItem(msgspec.Struct, omit_defaults=True):
    uptime: int | None
    partner_node_id: str
    message: str | UnsetType = UNSET  # "Bot not found" for an id the key does not own


class DetailItem(msgspec.Struct, omit_defaults=True):
    connection_status: Connection | None
    total_uptime: int | None
    partner_node_id: str
    message: str | UnsetType = UNSET


class UptimeOne(msgspec.Struct):
    data: UptimeItem


class UptimeMany(msgspec.Struct):
    data: list[UptimeItem]


class DetailOne(msgspec.Struct):
    data: DetailItem


class DetailMany(msgspec.Struct):
    data: list[DetailItem]


# --- accounts and bots ----------------------------------------------------------------------------
class BotView(msgspec.Struct):
    id: str
    account: str
    username: str
    avatar: str | None
    private: bool
    customSlots: int
    customMetrics: list[str]
    voteWebhookURL: str | None
    createdAt: Millis


class AccountView(msgspec.Struct):
    id: str
    name: str
    keyPrefix: str | None
    createdAt: Millis


class AccountWithBots(AccountView):
    bots: list[BotView]


class Token(msgspec.Struct):
    token: Annotated[str, Meta(description="The new API key, shown this once.")]


class Change(msgspec.Struct):
    at: str
    by: str
    changes: dict[str, dict[str, Any]]


class BotLog(msgspec.Struct):
    id: str = msgspec.field(name="_id")
    changes: list[Change] = msgspec.field()


class ApiView(msgspec.Struct):
    id: str = msgspec.field(name="_id")
    voteWebhookURL: str | None = msgspec.field()
    keyPrefix: str | None = msgspec.field()


# --- operator -------------------------------------------------------------------------------------
class CreatedAccount(AccountView):
    key: Annotated[str, Meta(description="The account's API key, shown this once.")]


class AccountRow(AccountView):
    bots: int


class AccountList(msgspec.Struct):
    accounts: list[AccountRow]


class AccountToken(msgspec.Struct):
    account: str
    token: str


class BotList(msgspec.Struct):
    bots: list[BotView]


class Removed(msgspec.Struct):
    id: str
    removed: bool


class Synced(msgspec.Struct):
    bots: int
    generation: Annotated[
        str,
        Meta(
            description="`<accounts ms>:<bots ms>`: the newest row versions in ClickHouse.",
            examples=["1796229531986:1796229532826"],
        ),
    ]


# --- named keys and limits (registry/apikeys.py, registry/quotas.py) ----------------------------------
KeyId = Annotated[str, Meta(pattern=r"^key_[0-9a-f]{16}$", description="A named key's id.")]


class KeyView(msgspec.Struct):
    """A key as listed: never the key itself, only its first characters."""

    id: str
    name: str
    scope: Literal["ingest", "read", "manage"]
    bots: list[str]
    bot: str | None
    keyPrefix: str
    createdAt: int | None
    lastUsedAt: int | None


class CreatedKey(KeyView):
    key: Annotated[str, Meta(description="The new key, shown this once.")]


class KeyList(msgspec.Struct):
    keys: list[KeyView]


class Revoked(msgspec.Struct):
    id: str
    revoked: bool


class BotToken(msgspec.Struct):
    token: Annotated[str, Meta(description="The bot's new ingest token, shown this once.")]
    id: str
    scope: Literal["ingest"]
    bots: list[str]


class AccountLimits(msgspec.Struct):
    account: str
    limits: dict[str, Any]


# --- alerts (query/alerts_api.py) ------------------------------------------------------------------
RuleId = Annotated[str, Meta(pattern=r"^alr_[0-9a-f]{16}$", description="An alert rule's id.")]


class RuleState(msgspec.Struct):
    status: Literal["firing", "ok"]
    incident: str | None
    since: Millis | None
    detail: str | None


class RuleView(msgspec.Struct, omit_defaults=True, kw_only=True, forbid_unknown_fields=True):
    """A rule as stored (`schemas.alerts.Rule` without its account); fields left at their
    default are absent. Unknown fields are refused so the handlers (which convert their views to
    these structs) cannot answer a field the document does not list."""

    id: str
    bot: str
    name: str
    kind: RuleKind
    destinations: list[str]
    minutes: float | UnsetType = UNSET
    metric: str | UnsetType = UNSET
    op: RuleOp | UnsetType = UNSET
    value: float | UnsetType = UNSET
    ofMetric: str | UnsetType = UNSET
    percent: float | UnsetType = UNSET
    hours: float | UnsetType = UNSET
    count: int | UnsetType = UNSET
    muted: bool | UnsetType = UNSET
    mutedUntil: Millis | UnsetType = UNSET
    quietHours: QuietHoursSpec | UnsetType = UNSET
    minIntervalMinutes: float | UnsetType = UNSET
    createdAt: Millis
    updatedAt: Millis


class RuleWithState(RuleView, omit_defaults=True, kw_only=True, forbid_unknown_fields=True):
    state: RuleState


class RuleList(msgspec.Struct):
    rules: list[RuleView]


class DeliveryLog(msgspec.Struct):
    rule: str
    deliveries: list[DeliveryEntry]


class DestinationView(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    name: str
    type: DestinationType
    url: Annotated[str, Meta(description="A Discord URL without its token.")]
    createdAt: Millis


class CreatedDestination(DestinationView, omit_defaults=True, kw_only=True, forbid_unknown_fields=True):
    secret: (
        Annotated[str, Meta(description="A webhook's signing secret (`whsec_…`), shown this once.")]
        | UnsetType
    ) = UNSET


class DestinationList(msgspec.Struct):
    destinations: list[DestinationView]
