"""Alert rules and destinations: what a valid one looks like, and their rows in ClickHouse.

The account API (query.alerts_api) writes them; the evaluator (botpulse.alerts) reads them.
Every write bumps `RULES_VERSION_KEY` in Redis so evaluators reload at once instead of at
their next periodic refresh. The delivery log (written by the evaluator) is read here too.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import re
import secrets
import zoneinfo
from collections.abc import Iterable
from typing import Any

import msgspec
import redis.asyncio as aioredis
from yarl import URL

from botpulse.registry.model import Invalid, NotFound, decode_object
from botpulse.runtime.clickhouse import Store
from botpulse.runtime.logs import get_logger
from botpulse.runtime.settings import Settings
from botpulse.schemas.alerts import (
    CUSTOM_PREFIX,
    METRICS,
    RULES_VERSION_KEY,
    DeliveryEntry,
    Destination,
    QuietHours,
    Rule,
    log_key,
)
from botpulse.schemas.registry import BOT_ID

log = get_logger(__name__)

MAX_NAME = 100
MAX_URL = 2048
MAX_DESTINATIONS = 10
MAX_RULES_PER_ACCOUNT = 500
MAX_DESTINATIONS_PER_ACCOUNT = 50
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_CUSTOM_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_DISCORD_PATH = re.compile(r"^/api(/v\d+)?/webhooks/(\d{1,25})/([A-Za-z0-9_.-]{1,200})/?$")
# Where Discord serves webhooks; BOTPULSE_ALERTS_DISCORD_HOSTS adds others (a relay, tests).
DISCORD_HOSTS = frozenset(
    f"{sub}{domain}" for domain in ("discord.com", "discordapp.com") for sub in ("", "canary.", "ptb.")
)
MAX_TIMEZONE = 64  # as `QuietHours.timezone` caps it; the longest IANA name is about 30
OPS = ("above", "below", "drop", "rise")
_ID = re.compile(r"^(alr|dst)_[0-9a-f]{16}$")

RULE_FIELDS = (
    "name", "bot", "kind", "destinations", "minutes", "metric", "op", "value", "ofMetric",
    "percent", "hours", "muted", "mutedUntil", "quietHours", "minIntervalMinutes",
)  # fmt: skip
# Fields a PATCH may change (bot and kind fix what a rule is: make a new rule instead).
RULE_PATCH = tuple(f for f in RULE_FIELDS if f not in ("bot", "kind"))
DESTINATION_FIELDS = ("name", "type", "url")


def now_ms() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1000)


# --- validation ---------------------------------------------------------------------------------
def _only(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for name in body:
        if name not in allowed:
            raise Invalid(f"Unknown field {name!r}; expected one of: {', '.join(allowed)}", name)


def _name(value: object, field: str = "name") -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"{field} must be a non-empty string", field)
    if len(value) > MAX_NAME:
        raise Invalid(f"{field} must be at most {MAX_NAME} characters", field)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise Invalid(f"{field} must not contain control characters", field)
    return value


def _number(body: dict[str, Any], field: str, low: float, high: float) -> float:
    value = body[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Invalid(f"{field} must be a number from {low:g} to {high:g}", field)
    if not low <= value <= high:
        raise Invalid(f"{field} must be a number from {low:g} to {high:g}", field)
    return float(value)


def _metric(value: object, field: str) -> str:
    if isinstance(value, str) and value in METRICS:
        return value
    if (
        isinstance(value, str)
        and value.startswith(CUSTOM_PREFIX)
        and _CUSTOM_NAME.match(value[len(CUSTOM_PREFIX) :])
    ):
        return value
    raise Invalid(f"{field} must be one of {', '.join(METRICS)} or custom.<name>", field)


def _quiet(value: object) -> QuietHours | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Invalid("quietHours must be an object {start, end, timezone} or null", "quietHours")
    _only(value, ("start", "end", "timezone"))
    for part in ("start", "end"):
        if not isinstance(value.get(part), str) or not _HHMM.match(value[part]):
            raise Invalid(f"quietHours.{part} must be a time HH:MM", f"quietHours.{part}")
    tz = value.get("timezone", "UTC")
    try:
        if not isinstance(tz, str) or not 0 < len(tz) <= MAX_TIMEZONE:
            raise ValueError
        zoneinfo.ZoneInfo(tz)
    # OSError: a name the file system refuses (too long, odd characters) is no zone either.
    except (ValueError, OSError, zoneinfo.ZoneInfoNotFoundError):
        raise Invalid("quietHours.timezone must be an IANA time zone such as Europe/Berlin",
                      "quietHours.timezone") from None  # fmt: skip
    if value["start"] == value["end"]:
        raise Invalid("quietHours.start and quietHours.end must differ", "quietHours.end")
    return QuietHours(start=value["start"], end=value["end"], timezone=tz)


def _fields(body: dict[str, Any], base: dict[str, Any], heartbeat_window_s: int) -> dict[str, Any]:
    """`base` (a rule's current fields, API names) updated with `body`, checked as a whole."""
    spec = dict(base)
    if "name" in body:
        spec["name"] = _name(body["name"])
    if "bot" in body:
        if not isinstance(body["bot"], str) or not BOT_ID.match(body["bot"]):
            raise Invalid("bot must be a bot id (1-64 characters of A-Z a-z 0-9 _ . : -)", "bot")
        spec["bot"] = body["bot"]
    if "kind" in body:
        if body["kind"] not in ("offline", "threshold", "change"):
            raise Invalid("kind must be one of offline, threshold, change", "kind")
        spec["kind"] = body["kind"]
    if "destinations" in body:
        dests = body["destinations"]
        if (
            not isinstance(dests, list)
            or not 1 <= len(dests) <= MAX_DESTINATIONS
            or not all(isinstance(d, str) and _ID.match(d) and d.startswith("dst_") for d in dests)
        ):
            raise Invalid(
                f"destinations must be a list of 1 to {MAX_DESTINATIONS} destination ids (dst_…)",
                "destinations",
            )
        spec["destinations"] = list(dict.fromkeys(dests))
    for field, low, high in (
        ("minutes", 1, 7 * 1440),
        ("value", -1e15, 1e15),
        ("percent", 0.01, 100),
        ("hours", 1 / 60, 24 * 30),
        ("minIntervalMinutes", 0, 7 * 1440),
    ):
        if field in body:
            spec[field] = _number(body, field, low, high)
    if "muted" in body:
        if not isinstance(body["muted"], bool):
            raise Invalid("muted must be true or false", "muted")
        spec["muted"] = body["muted"]
    if "mutedUntil" in body:
        until = body["mutedUntil"]
        if until is not None and (
            isinstance(until, bool) or not isinstance(until, int) or not 0 <= until < 10**14
        ):
            raise Invalid("mutedUntil must be a time in ms since the epoch, or null", "mutedUntil")
        spec["mutedUntil"] = until
    if "quietHours" in body:
        quiet = _quiet(body["quietHours"])
        spec["quietHours"] = None if quiet is None else msgspec.to_builtins(quiet)
    for field in ("metric", "ofMetric"):
        if field in body:
            spec[field] = None if body[field] is None and field == "ofMetric" else _metric(body[field], field)
    if "op" in body:
        if body["op"] not in OPS:
            raise Invalid(f"op must be one of {', '.join(OPS)}", "op")
        spec["op"] = body["op"]
    for field in ("name", "bot", "kind", "destinations"):
        if field not in spec:
            raise Invalid(f"{field} is required", field)
    _check_kind(spec, heartbeat_window_s)
    return spec


def _check_kind(spec: dict[str, Any], heartbeat_window_s: int) -> None:
    kind = spec["kind"]
    given = {k for k, v in spec.items() if v is not None}
    if kind == "offline":
        spec.setdefault("minutes", max(1.0, heartbeat_window_s / 60))
        extra = given & {"metric", "op", "value", "ofMetric", "percent", "hours"}
    elif kind == "threshold":
        spec.setdefault("minutes", 5.0)
        for field in ("metric", "op", "value"):
            if field not in spec:
                raise Invalid(f"{field} is required for a threshold rule", field)
        if spec["op"] not in ("above", "below"):
            raise Invalid("op must be above or below for a threshold rule", "op")
        if spec["minutes"] > 1440:
            raise Invalid("minutes must be at most 1440 (a day) for a threshold rule", "minutes")
        if spec.get("ofMetric") is not None and not 0 <= spec["value"] <= 1000:
            raise Invalid("value is a percentage of ofMetric here: from 0 to 1000", "value")
        extra = given & {"percent", "hours"}
    else:
        spec.setdefault("hours", 24.0)
        for field in ("metric", "op", "percent"):
            if field not in spec:
                raise Invalid(f"{field} is required for a change rule", field)
        if spec["op"] not in ("drop", "rise"):
            raise Invalid("op must be drop or rise for a change rule", "op")
        extra = given & {"value", "ofMetric", "minutes"}
    if extra:
        field = sorted(extra)[0]
        raise Invalid(f"{field} does not apply to a {kind} rule", field)


def rule_from_body(
    body: dict[str, Any], *, account: str, heartbeat_window_s: int, current: Rule | None = None
) -> Rule:
    """A new rule (current=None), or `current` with the body's changes; `Invalid` names the field."""
    _only(body, RULE_FIELDS if current is None else RULE_PATCH)
    if current is not None and not body:
        raise Invalid(f"Nothing to change; give at least one of: {', '.join(RULE_PATCH)}")
    base: dict[str, Any] = {}
    if current is not None:
        base = msgspec.to_builtins(current)
        for key in ("id", "account", "createdAt", "updatedAt"):
            base.pop(key, None)
    spec = _fields(body, base, heartbeat_window_s)
    at = now_ms()
    spec |= {
        "id": current.id if current else "alr_" + secrets.token_hex(8),
        "account": account,
        "createdAt": current.created_at if current else at,
        "updatedAt": at,
    }
    try:
        return msgspec.convert(spec, Rule)
    except msgspec.ValidationError as exc:  # a value the checks above let through by mistake
        raise Invalid(f"Invalid rule: {exc}") from None


def extra_discord_hosts(settings: Settings) -> frozenset[str]:
    """Hosts a `discord` destination may name besides Discord's (BOTPULSE_ALERTS_DISCORD_HOSTS)."""
    return frozenset(h.strip().lower() for h in settings.alerts_discord_hosts.split(",") if h.strip())


def destination_from_body(body: dict[str, Any], *, account: str, discord_hosts: Iterable[str]) -> Destination:
    _only(body, DESTINATION_FIELDS)
    for field in DESTINATION_FIELDS:
        if field not in body:
            raise Invalid(f"{field} is required", field)
    if body["type"] not in ("discord", "webhook"):
        raise Invalid("type must be discord or webhook", "type")
    url = body["url"]
    if not isinstance(url, str) or not url or len(url) > MAX_URL or any(c.isspace() for c in url):
        raise Invalid(f"url must be a URL of at most {MAX_URL} characters without spaces", "url")
    try:
        parsed = URL(url)
        host = (parsed.host or "").lower()
    except (ValueError, TypeError):
        raise Invalid("url: not a valid URL", "url") from None
    if "#" in url:  # never sent, and a place where a listing would show what it should not
        raise Invalid("url must not have a fragment (#…)", "url")
    if body["type"] == "discord":
        if not _DISCORD_PATH.match(parsed.raw_path):
            raise Invalid("url must be a Discord webhook URL (…/api/webhooks/<id>/<token>)", "url")
        allowed = DISCORD_HOSTS | {h.lower() for h in discord_hosts}
        if host not in allowed:
            raise Invalid("url must be a Discord webhook URL on discord.com or discordapp.com", "url")
    return Destination(
        id="dst_" + secrets.token_hex(8),
        account=account,
        name=_name(body["name"]),
        type=body["type"],
        url=url,
        created_at=now_ms(),
    )


def new_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _discord_token(url: str) -> str | None:
    try:
        found = _DISCORD_PATH.match(URL(url).raw_path)
    except (ValueError, TypeError):
        return None
    return found.group(3) if found else None


def redacted_url(destination: Destination) -> str:
    """The URL as listings show it. A Discord webhook URL holds its token: shown up to the
    webhook id, rebuilt from its parts (no query, no fragment, so nothing after the id leaks).
    A generic webhook's query values may be credentials (`?token=…`): shown without them."""
    try:
        parsed = URL(destination.url)
        origin = f"{parsed.scheme}://{parsed.host_port_subcomponent}"  # never userinfo
        found = _DISCORD_PATH.match(parsed.raw_path)
    except (ValueError, TypeError):
        return "…"
    if destination.type == "discord":
        if found is None:
            return origin + "/…"
        return f"{origin}{parsed.raw_path[: found.start(2)]}{found.group(2)}/…"
    shown = origin + parsed.raw_path
    if parsed.raw_query_string:
        shown += "?" + "&".join(
            part.split("=", 1)[0] + "=…" if "=" in part else "…"
            for part in parsed.raw_query_string.split("&")
            if part
        )
    return shown


def scrub(destination: Destination, text: str) -> str:
    """`text` (an error quoting the URL, perhaps) without the destination's secrets."""
    text = text.replace(destination.url, redacted_url(destination))
    token = _discord_token(destination.url) if destination.type == "discord" else None
    return text.replace(token, "…") if token else text


def destination_view(destination: Destination) -> dict[str, Any]:
    return {
        "id": destination.id,
        "name": destination.name,
        "type": destination.type,
        "url": redacted_url(destination),
        "createdAt": destination.created_at,
    }


def rule_view(rule: Rule) -> dict[str, Any]:
    view = msgspec.to_builtins(rule)
    view.pop("account", None)
    return view


# --- storage ------------------------------------------------------------------------------------
def _ts(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


async def _bump(redis: aioredis.Redis | None) -> None:
    if redis is not None:
        await redis.incr(RULES_VERSION_KEY)


async def save_rule(store: Store, redis: aioredis.Redis | None, rule: Rule, *, deleted: bool = False) -> None:
    await store.insert(
        "alert_rules",
        [[rule.id, rule.account, rule.bot, msgspec.json.encode(rule).decode(),
          _ts(rule.created_at), _ts(max(rule.updated_at, now_ms())), int(deleted)]],
        ["id", "account_id", "bot_id", "spec", "created_at", "updated_at", "deleted"],
    )  # fmt: skip
    await _bump(redis)


async def save_destination(
    store: Store,
    redis: aioredis.Redis | None,
    destination: Destination,
    secret: str,
    *,
    deleted: bool = False,
) -> None:
    await store.insert(
        "alert_destinations",
        [[destination.id, destination.account, msgspec.json.encode(destination).decode(), secret,
          _ts(destination.created_at), _ts(now_ms()), int(deleted)]],
        ["id", "account_id", "spec", "secret", "created_at", "updated_at", "deleted"],
    )  # fmt: skip
    await _bump(redis)


_rule_decoder = msgspec.json.Decoder(Rule)
_destination_decoder = msgspec.json.Decoder(Destination)


async def list_rules(store: Store, *, account: str | None = None, bot: str | None = None) -> list[Rule]:
    where, params = ["deleted = 0"], {}
    if account is not None:
        where.append("account_id = {a:String}")
        params["a"] = account
    if bot is not None:
        where.append("bot_id = {b:String}")
        params["b"] = bot
    rows = await store.query(
        f"SELECT spec FROM alert_rules FINAL WHERE {' AND '.join(where)} ORDER BY created_at, id", params
    )
    return [_rule_decoder.decode(r[0]) for r in rows]


async def get_rule(store: Store, rule_id: str, account: str) -> Rule:
    """The account's rule; another account's rule is as missing as an unknown one (404)."""
    if not _ID.match(rule_id) or not rule_id.startswith("alr_"):
        raise NotFound("Rule not found")
    rows = await store.query(
        "SELECT spec FROM alert_rules FINAL "
        "WHERE id = {id:String} AND deleted = 0 AND account_id = {a:String}",
        {"id": rule_id, "a": account},
    )
    if not rows:
        raise NotFound("Rule not found")
    return _rule_decoder.decode(rows[0][0])


async def rule_by_id(store: Store, rule_id: str) -> Rule | None:
    rows = await store.query(
        "SELECT spec FROM alert_rules FINAL WHERE id = {id:String} AND deleted = 0", {"id": rule_id}
    )
    return _rule_decoder.decode(rows[0][0]) if rows else None


async def list_destinations(
    store: Store, *, account: str | None = None, ids: list[str] | None = None
) -> list[tuple[Destination, str]]:
    """Destinations with their secrets (for the evaluator; the API shows `destination_view`)."""
    where, params = ["deleted = 0"], {}
    if account is not None:
        where.append("account_id = {a:String}")
        params["a"] = account
    if ids is not None:
        where.append("id IN {ids:Array(String)}")
        params["ids"] = ids
    rows = await store.query(
        f"SELECT spec, secret FROM alert_destinations FINAL WHERE {' AND '.join(where)} "
        "ORDER BY created_at, id",
        params,
    )
    return [(_destination_decoder.decode(r[0]), r[1]) for r in rows]


async def get_destination(store: Store, destination_id: str, account: str) -> tuple[Destination, str]:
    if not _ID.match(destination_id) or not destination_id.startswith("dst_"):
        raise NotFound("Destination not found")
    found = await list_destinations(store, account=account, ids=[destination_id])
    if not found:
        raise NotFound("Destination not found")
    return found[0]


async def check_destinations_owned(store: Store, account: str, ids: list[str]) -> None:
    owned = {d.id for d, _ in await list_destinations(store, account=account, ids=ids)}
    for i, dest in enumerate(ids):
        if dest not in owned:
            raise Invalid(f"destination {dest} does not exist", f"destinations[{i}]")


async def delivery_log(redis: aioredis.Redis, rule_id: str, limit: int) -> list[DeliveryEntry]:
    """The rule's newest delivery attempts, newest first (the evaluator keeps the last 200)."""
    raw = await redis.lrange(log_key(rule_id), 0, limit - 1)
    return [msgspec.json.decode(item, type=DeliveryEntry) for item in raw]


def decode_body(raw: bytes) -> dict[str, Any]:
    return decode_object(raw)
