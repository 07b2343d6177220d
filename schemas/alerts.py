"""Alert contracts shared by the account API (query) and the evaluator (alerts): rules,
destinations, the delivery jobs and log entries the evaluator keeps in Redis, and their keys.

A rule is stored as the JSON of `Rule` (API field names, camelCase); adding a kind of rule
(as `shards_down` did) means a new `kind` value here, its fields in the request bodies
(`schemas/account.py`), the checks across them in `registry.alerts`, and its condition in
`alerts.conditions.CONDITIONS`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

RuleKind = Literal["offline", "threshold", "change", "shards_down"]
DestinationType = Literal["discord", "webhook"]
Event = Literal["opened", "resolved"]
# Standard metrics under their API names -> bot_stats columns. Custom metrics are "custom.NAME".
METRICS = {
    "guilds": "guilds",
    "users": "users",
    "shards": "shards",
    "apiPing": "api_ping",
    "ramUsage": "ram_usage",
    "ramTotal": "ram_total",
    "cpu": "cpu",
    "bandwidth": "bandwidth",
}
CUSTOM_PREFIX = "custom."


class QuietHours(msgspec.Struct, frozen=True, kw_only=True):
    """Notifications due between `start` and `end` (HH:MM, local to `timezone`) wait until `end`."""

    start: str
    end: str
    # IANA names are short; the cap keeps a long one from reaching the tz database lookup.
    timezone: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "UTC"


class Rule(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    id: str
    account: str
    bot: str
    name: str
    kind: RuleKind
    destinations: list[str]
    # offline: silence in minutes; threshold: how long the condition must hold.
    minutes: float = 0.0
    # threshold / change
    metric: str = ""
    op: Literal["above", "below", "drop", "rise", ""] = ""
    value: float = 0.0
    # threshold: `value` is a percentage of this metric (ramUsage above 90 % of ramTotal).
    of_metric: str | None = None
    # change: by more than `percent` % over the last `hours`.
    percent: float = 0.0
    hours: float = 0.0
    # shards_down: at least this many of the bot's shards are down.
    count: int = 0
    muted: bool = False
    muted_until: int | None = None  # ms since the epoch
    quiet_hours: QuietHours | None = None
    min_interval_minutes: float = 0.0
    created_at: int = 0
    updated_at: int = 0

    def muted_at(self, now_ms: int) -> bool:
        return self.muted or (self.muted_until is not None and now_ms < self.muted_until)


class Destination(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    id: str
    account: str
    name: str
    type: DestinationType
    url: str
    created_at: int = 0


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """One notification of one incident event to one destination (retried until delivered,
    refused, or past the retry bound)."""

    id: str
    rule: str
    destination: str
    incident: str
    event: Event
    bot: str
    # When the incident opened (ms) and, for "resolved", when it closed.
    since: int
    until: int | None
    detail: str
    value: float | None
    created: int


class DeliveryEntry(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=False):
    at: int
    destination: str
    destination_type: str
    incident: str
    event: str
    attempt: int
    outcome: Literal["delivered", "retrying", "failed", "refused"]
    status: int | None
    latency_ms: int | None
    error: str | None


# --- Redis keys ---------------------------------------------------------------------------------
ALERT_SLOTS = 64  # rules are split between evaluators by their bot, in this many leased slots
MEMBERS_KEY = "bp:alerts:members"
JOBS_KEY = "bp:alerts:jobs"  # ZSET job id -> due (ms)
RULES_VERSION_KEY = "bp:alerts:rules-version"  # bumped by every rule or destination write
DELIVERY_LOG_MAX = 200


def slot_key(slot: int) -> str:
    return f"bp:alerts:slot:{slot}"


def state_key(rule_id: str) -> str:
    return f"bp:alerts:state:{rule_id}"


def job_key(job_id: str) -> str:
    return f"bp:alerts:job:{job_id}"


def claim_key(job_id: str) -> str:
    return f"bp:alerts:claim:{job_id}"


def log_key(rule_id: str) -> str:
    return f"bp:alerts:log:{rule_id}"
