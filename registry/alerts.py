"""Alert rules and destinations: what a valid one looks like, and their rows in ClickHouse.

The account API (query.alerts_api) writes them; the evaluator (botpulse.alerts) reads them.
Every write bumps `RULES_VERSION_KEY` in Redis so evaluators reload at once instead of at
their next periodic refresh. The delivery log (written by the evaluator) is read here too.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import secrets
import zoneinfo
from collections.abc import Iterable
from typing import Any

import msgspec
import redis.asyncio as aioredis
from yarl import URL

from botpulse.registry.model import Invalid, NotFound, require_changes
from botpulse.runtime.clickhouse import Store
from botpulse.runtime.logs import get_logger
from botpulse.runtime.settings import Settings
from botpulse.schemas.account import DestinationCreate, RuleChanges, RuleCreate
from botpulse.schemas.alerts import RULES_VERSION_KEY, DeliveryEntry, Destination, Rule, log_key

log = get_logger(__name__)

MAX_RULES_PER_ACCOUNT = 500
MAX_DESTINATIONS_PER_ACCOUNT = 50
_DISCORD_PATH = re.compile(r"^/api(/v\d+)?/webhooks/(\d{1,25})/([A-Za-z0-9_.-]{1,200})/?$")
# Where Discord serves webhooks; BOTPULSE_ALERTS_DISCORD_HOSTS adds others (a relay, tests).
DISCORD_HOSTS = frozenset(
    f"{sub}{domain}" for domain in ("discord.com", "discordapp.com") for sub in ("", "canary.", "ptb.")
)
_ID = re.compile(r"^(alr|dst)_[0-9a-f]{16}$")


def now_ms() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1000)


# --- validation ---------------------------------------------------------------------------------
# The bodies' fields, types and bounds are `RuleCreate`'s, `RuleChanges`' and `DestinationCreate`'s
# (schemas/account.py, decoded by `model.decode`); what follows is what a struct cannot say.
def _check_quiet(quiet: dict[str, Any]) -> None:
    try:
        zoneinfo.ZoneInfo(quiet["timezone"])
    # OSError: a name the file system refuses (odd characters) is no zone either.
    except (ValueError, OSError, zoneinfo.ZoneInfoNotFoundError):
        raise Invalid("quietHours.timezone must be an IANA time zone such as Europe/Berlin",
                      "quietHours.timezone") from None  # fmt: skip
    if quiet["start"] == quiet["end"]:
        raise Invalid("quietHours.start and quietHours.end must differ", "quietHours.end")


def _fields(body: dict[str, Any], base: dict[str, Any], heartbeat_window_s: int) -> dict[str, Any]:
    """`base` (a rule's current fields, API names) updated with `body`, checked as a whole."""
    spec = base | body
    if body.get("quietHours") is not None:
        _check_quiet(body["quietHours"])
    if "destinations" in body:
        spec["destinations"] = list(dict.fromkeys(body["destinations"]))
    _check_kind(spec, heartbeat_window_s)
    return spec


def _check_kind(spec: dict[str, Any], heartbeat_window_s: int) -> None:
    kind = spec["kind"]
    given = {k for k, v in spec.items() if v is not None}
    if kind == "offline":
        spec.setdefault("minutes", max(1.0, heartbeat_window_s / 60))
        extra = given & {"metric", "op", "value", "ofMetric", "percent", "hours", "count"}
    elif kind == "shards_down":
        # A shard is down once silent for the heartbeat window: that is the rule's wait.
        if "count" not in spec:
            raise Invalid("count is required for a shards_down rule", "count")
        extra = given & {"metric", "op", "value", "ofMetric", "percent", "hours", "minutes"}
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
        extra = given & {"percent", "hours", "count"}
    else:
        spec.setdefault("hours", 24.0)
        for field in ("metric", "op", "percent"):
            if field not in spec:
                raise Invalid(f"{field} is required for a change rule", field)
        if spec["op"] not in ("drop", "rise"):
            raise Invalid("op must be drop or rise for a change rule", "op")
        extra = given & {"value", "ofMetric", "minutes", "count"}
    if extra:
        field = sorted(extra)[0]
        raise Invalid(f"{field} does not apply to a {kind} rule", field)


def rule_from_body(
    body: RuleCreate | RuleChanges, *, account: str, heartbeat_window_s: int, current: Rule | None = None
) -> Rule:
    """A new rule (`RuleCreate`, current=None), or `current` with the changes of a `RuleChanges`;
    `Invalid` names the field."""
    base: dict[str, Any] = {}
    if current is not None:
        require_changes(body)
        base = msgspec.to_builtins(current)
        for key in ("id", "account", "createdAt", "updatedAt"):
            base.pop(key, None)
    # The given fields only (UNSET ones are left out), under their API names.
    spec = _fields(msgspec.to_builtins(body), base, heartbeat_window_s)
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


def destination_from_body(
    body: DestinationCreate, *, account: str, discord_hosts: Iterable[str]
) -> Destination:
    try:
        parsed = URL(body.url)  # aiohttp's own parser: the host checked is the host connected to
        host = (parsed.host or "").lower()
    except (ValueError, TypeError, UnicodeError):
        raise Invalid("url: not a valid URL", "url") from None
    if "#" in body.url:  # never sent, and a place where a listing would show what it should not
        raise Invalid("url must not have a fragment (#…)", "url")
    if body.type == "discord":
        if not _DISCORD_PATH.match(parsed.raw_path):
            raise Invalid("url must be a Discord webhook URL (…/api/webhooks/<id>/<token>)", "url")
        allowed = DISCORD_HOSTS | {h.lower() for h in discord_hosts}
        if host not in allowed:
            raise Invalid("url must be a Discord webhook URL on discord.com or discordapp.com", "url")
    return Destination(
        id="dst_" + secrets.token_hex(8),
        account=account,
        name=body.name,
        type=body.type,
        url=body.url,
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
