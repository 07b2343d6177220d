"""Request bodies the account API accepts (bots, keys, limits, alerts and the operator's admin
API, all served by the query service), as msgspec structs: the one place their fields, types and
bounds are declared. The handlers decode each body with its struct (`registry.model.decode`, a
400 naming the field otherwise) and the OpenAPI document shows the same struct (`query/spec.py`),
so the two cannot disagree.

A bound JSON Schema can state (a length, a pattern, a range, a choice, no unknown fields) lives
in the struct's `Meta`. What it cannot state is checked after decoding, once, in `registry/`: a
URL's port (`model.check_url`), "nothing to change" (`model.require_changes`), which fields a kind
of rule takes, a time zone that exists (`alerts.rule_from_body`), a Discord webhook path and the
SSRF rules for destinations.

A pattern's `description` is also what the refusal says it expected ("Invalid `id`: expected a
bot's id (…)"), so each reads after "expected".
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from botpulse.schemas.alerts import CUSTOM_PREFIX, METRICS, DestinationType, RuleKind
from botpulse.schemas.registry import BOT_ID_PATTERN
from botpulse.schemas.stream import MAX_SHARD_LIMIT

# The end of the text in both regex dialects: Python's `$` (msgspec runs `re.search`) also matches
# before a trailing newline, JSON Schema's (ECMA-262) does not, and `\Z` is Python's only.
END = r"$(?!\n)"
# Not blank, and no control characters anywhere.
_PLAIN = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*" + END

MAX_TEXT = 256
MAX_NAME = 100
MAX_URL = 2048
MAX_SLOTS = 1000
MAX_KEY_BOTS = 100
MAX_LIMIT = 10_000_000
# Types are bounded like custom metrics: every stats answer holds a total per type.
MAX_EVENT_TYPES = 1000
MAX_RULE_DESTINATIONS = 10

BotId = Annotated[
    str, Meta(pattern=BOT_ID_PATTERN, description="A bot's id (1-64 characters of `A-Z a-z 0-9 _ . : -`).")
]
Text = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_TEXT,
        pattern=_PLAIN,
        description=f"Text of 1-{MAX_TEXT} characters, not blank, without control characters.",
    ),
]
Name = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_NAME,
        pattern=_PLAIN,
        description=f"A name of 1-{MAX_NAME} characters, not blank, without control characters.",
    ),
]
# An http(s) URL with a host (user info, an IPv6 literal and a port allowed), no whitespace or
# control characters. The scheme is case-insensitive, as URL parsers read it. That the port is
# at most 65535 is `model.check_url`'s part.
Url = Annotated[
    str,
    Meta(
        max_length=MAX_URL,
        pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://([^\s\x00-\x1f\x7f/?#@]*@)?"
        r"([^\s\x00-\x1f\x7f/?#@:\[\]\\]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{0,5})?"
        r"([/?#][^\s\x00-\x1f\x7f]*)?" + END,
        description=f"An http or https URL with a host, of at most {MAX_URL} characters, without spaces.",
    ),
]
Slots = Annotated[int, Meta(ge=0, le=MAX_SLOTS)]
Scope = Literal["ingest", "read", "manage"]


# --- bots -----------------------------------------------------------------------------------------
class BotCreate(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """`POST /v1/bots`: a bot of the calling account."""

    id: BotId
    username: Text
    avatar: Url | None = None
    private: bool = False


class BotPatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """`PATCH /v1/bot/{botId}`: at least one field; `avatar: null` removes the avatar."""

    username: Text | UnsetType = UNSET
    avatar: Url | UnsetType | None = UNSET
    private: bool | UnsetType = UNSET


class WebhookPatch(msgspec.Struct, forbid_unknown_fields=True):
    """`PATCH /bots/{botId}/api` (DBots): `null` removes the vote webhook."""

    voteWebhookURL: Url | None


# --- keys -----------------------------------------------------------------------------------------
class KeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /v1/account/keys`: a named key; `bots` limits an ingest key to some of the account's bots."""

    name: Name
    scope: Scope
    bots: Annotated[list[BotId], Meta(max_length=MAX_KEY_BOTS)] | None = None


# --- operator -------------------------------------------------------------------------------------
class AccountCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Text


class AdminBotCreate(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A bot of any account; `customSlots` absent: BOTPULSE_DEFAULT_CUSTOM_SLOTS."""

    id: BotId
    account: Text
    username: Text
    avatar: Url | None = None
    private: bool = False
    voteWebhookURL: Url | None = None
    customSlots: Slots | UnsetType = UNSET


class AdminBotPatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """At least one field; `account` moves the bot to that account."""

    account: Text | UnsetType = UNSET
    username: Text | UnsetType = UNSET
    avatar: Url | UnsetType | None = UNSET
    private: bool | UnsetType = UNSET
    voteWebhookURL: Url | UnsetType | None = UNSET
    customSlots: Slots | UnsetType = UNSET


Limit = Annotated[int, Meta(ge=1, le=MAX_LIMIT)]


class LimitsPatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """At least one field; `null` puts a limit back to the operator's setting."""

    # The fields of `registry.quotas.FIELDS` (tests/test_openapi.py checks).

    bots: Limit | UnsetType | None = UNSET
    keys: Limit | UnsetType | None = UNSET
    customEventTypes: Annotated[int, Meta(ge=1, le=MAX_EVENT_TYPES)] | UnsetType | None = UNSET
    registryWritesPerMin: Limit | UnsetType | None = UNSET
    postsPerMin: Limit | UnsetType | None = UNSET


# --- alerts (docs/alerts.md; the checks across fields are `registry.alerts.rule_from_body`'s) -------
DestinationId = Annotated[
    str,
    Meta(pattern=r"^dst_[0-9a-f]{16}" + END, description="A destination's id (`dst_` and 16 hex digits)."),
]
AlertMetric = Annotated[
    str,
    Meta(
        pattern=f"^({'|'.join(map(re.escape, METRICS))}|{re.escape(CUSTOM_PREFIX)}[A-Za-z0-9_.:-]{{1,64}})"
        + END,
        description=f"One of {', '.join(METRICS)}, or a custom metric as `custom.<name>`.",
    ),
]
RuleOp = Literal["above", "below", "drop", "rise"]
Minutes = Annotated[float, Meta(ge=1, le=7 * 1440)]
ShardCount = Annotated[
    int,
    Meta(
        ge=1,
        le=MAX_SHARD_LIMIT,
        description="shards_down: fire when at least this many of the bot's shards are down "
        f"(1 to {MAX_SHARD_LIMIT}, the most shards a bot can have).",
    ),
]
HHMM = Annotated[str, Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]" + END, description="A time as HH:MM.")]


class QuietHoursSpec(msgspec.Struct, forbid_unknown_fields=True):
    start: HHMM
    end: HHMM
    timezone: Annotated[
        str, Meta(min_length=1, max_length=64, description="An IANA time zone.", examples=["Europe/Berlin"])
    ] = "UTC"


Destinations = Annotated[list[DestinationId], Meta(min_length=1, max_length=MAX_RULE_DESTINATIONS)]


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
    count: ShardCount | UnsetType = UNSET
    muted: bool | UnsetType = UNSET
    mutedUntil: Annotated[int, Meta(ge=0, lt=10**14, description="Unix ms.")] | UnsetType | None = UNSET
    quietHours: QuietHoursSpec | UnsetType | None = UNSET
    minIntervalMinutes: Annotated[float, Meta(ge=0, le=7 * 1440)] | UnsetType = UNSET


class RuleCreate(_RuleOptions, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """`POST /v1/alerts/rules`."""

    name: Name
    bot: BotId
    kind: RuleKind
    destinations: Destinations


class RuleChanges(_RuleOptions, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """`PATCH /v1/alerts/rules/{id}`: at least one field; `bot` and `kind` stay (make a new rule)."""

    name: Name | UnsetType = UNSET
    destinations: Destinations | UnsetType = UNSET


class DestinationCreate(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /v1/alerts/destinations`."""

    name: Name
    type: DestinationType
    url: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=MAX_URL,
            pattern=r"^\S+" + END,
            description=f"A URL of at most {MAX_URL} characters without spaces: https (http only with "
            "BOTPULSE_ALERTS_ALLOW_HTTP), a Discord webhook URL for `discord`. Checked against the "
            "SSRF rules (docs/alerts.md).",
        ),
    ]
