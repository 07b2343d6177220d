"""The query service's request bodies and answers as msgspec structs: what the OpenAPI document
(`query/spec.py`) is generated from and what schemathesis checks the live answers against.

Account and bot writes are still parsed field by field by `registry.model` (which names the field
at fault); the body structs here carry the same fields and bounds (tests/test_openapi.py checks
the field sets against `registry.model`'s).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from botpulse.schemas.alerts import DeliveryEntry, DestinationType

BotId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="A bot's id.")]
# registry.model: non-empty after stripping, at most 256 characters, no control characters.
Text = Annotated[
    str, Meta(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$")
]
# registry.model: an http(s) URL with a host, no whitespace, at most 2048 characters.
Url = Annotated[
    str,
    Meta(
        max_length=2048,
        pattern=r"^https?://[^\s\x00-\x1f\x7f/?#@:\[\]\\]+(:[0-9]{1,4})?([/?#][^\s\x00-\x1f\x7f]*)?$",
    ),
]
Slots = Annotated[int, Meta(ge=0, le=1000)]
AccountId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="An account's id (`acc_…`).")]
Millis = Annotated[int, Meta(description="Unix time in milliseconds.")]
Connection = Literal["connected", "disconnected"]


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
    customGraphs: list[str]
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


class Listing(msgspec.Struct):
    bots: list[ListedBot]
    count: int
    offset: int
    total: int
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


class Leaderboard(msgspec.Struct):
    metric: str
    bots: list[Ranked]


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


class BotCreate(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    id: BotId
    username: Text
    avatar: Url | None = None
    private: bool = False


class BotPatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """At least one field."""

    username: Text | UnsetType = UNSET
    avatar: Url | UnsetType | None = UNSET
    private: bool | UnsetType = UNSET


class WebhookPatch(msgspec.Struct, forbid_unknown_fields=True):
    voteWebhookURL: Url | None


# --- operator -------------------------------------------------------------------------------------
class AccountCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Text


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


class AdminBotCreate(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    id: BotId
    account: Text
    username: Text
    avatar: Url | None = None
    private: bool = False
    voteWebhookURL: Url | None = None
    customSlots: Slots | UnsetType = UNSET


class AdminBotPatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """At least one field."""

    account: Text | UnsetType = UNSET
    username: Text | UnsetType = UNSET
    avatar: Url | UnsetType | None = UNSET
    private: bool | UnsetType = UNSET
    voteWebhookURL: Url | UnsetType | None = UNSET
    customSlots: Slots | UnsetType = UNSET


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


class KeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=100)]
    scope: Literal["ingest", "read", "manage"]
    bots: list[str] | None = None


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


class LimitsPatch(msgspec.Struct, forbid_unknown_fields=True):
    bots: int | None = None
    keys: int | None = None
    customEventTypes: int | None = None
    registryWritesPerMin: int | None = None
    postsPerMin: int | None = None


# --- alerts (query/alerts_api.py; registry/alerts.py checks the bodies, naming the field) -----------
RuleId = Annotated[str, Meta(pattern=r"^alr_[0-9a-f]{16}$", description="An alert rule's id.")]
DestinationId = Annotated[str, Meta(pattern=r"^dst_[0-9a-f]{16}$", description="A destination's id.")]
# registry.alerts: non-empty after stripping, at most 100 characters, no control characters.
AlertName = Annotated[
    str, Meta(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$")
]
AlertMetric = Annotated[
    str,
    Meta(
        pattern=r"^(guilds|users|shards|apiPing|ramUsage|ramTotal|cpu|bandwidth|custom\.[A-Za-z0-9_.:-]{1,64})$",
        description="A standard metric, or a custom one as `custom.<name>`.",
    ),
]
RuleKind = Literal["offline", "threshold", "change"]
RuleOp = Literal["above", "below", "drop", "rise"]
Minutes = Annotated[float, Meta(ge=1, le=7 * 1440)]
HHMM = Annotated[str, Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]


class QuietHoursSpec(msgspec.Struct, forbid_unknown_fields=True):
    start: HHMM
    end: HHMM
    timezone: Annotated[str, Meta(description="An IANA time zone.", examples=["Europe/Berlin"])] = "UTC"


Destinations = Annotated[list[DestinationId], Meta(min_length=1, max_length=10)]


class _RuleOptions(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """The fields a rule may have besides its name, bot, kind and destinations (which of them
    apply depends on the kind; docs/alerts.md)."""

    minutes: Minutes | UnsetType = UNSET
    metric: AlertMetric | UnsetType = UNSET
    op: RuleOp | UnsetType = UNSET
    value: Annotated[float, Meta(ge=-1e15, le=1e15)] | UnsetType = UNSET
    ofMetric: AlertMetric | UnsetType | None = UNSET
    percent: Annotated[float, Meta(ge=0.01, le=100)] | UnsetType = UNSET
    hours: Annotated[float, Meta(ge=1 / 60, le=24 * 30)] | UnsetType = UNSET
    muted: bool | UnsetType = UNSET
    mutedUntil: Annotated[int, Meta(ge=0, lt=10**14, description="Unix ms.")] | UnsetType | None = UNSET
    quietHours: QuietHoursSpec | UnsetType | None = UNSET
    minIntervalMinutes: Annotated[float, Meta(ge=0, le=7 * 1440)] | UnsetType = UNSET


class RuleCreate(_RuleOptions, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """`POST /v1/alerts/rules`."""

    name: AlertName
    bot: BotId
    kind: RuleKind
    destinations: Destinations


class RuleChanges(_RuleOptions, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """`PATCH /v1/alerts/rules/{id}`: at least one field; `bot` and `kind` stay (make a new rule)."""

    name: AlertName | UnsetType = UNSET
    destinations: Destinations | UnsetType = UNSET


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


class DestinationCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: AlertName
    type: DestinationType
    url: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=2048,
            pattern=r"^\S+$",
            description="https (http only with BOTPULSE_ALERTS_ALLOW_HTTP); a Discord webhook URL for "
            "`discord`. Checked against the SSRF rules (docs/alerts.md).",
        ),
    ]


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
