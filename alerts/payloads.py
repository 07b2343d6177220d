"""What a notification looks like: Discord's native embed, and the generic webhook's JSON with
its Standard Webhooks signature (https://www.standardwebhooks.com)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from typing import Any

import msgspec

from botpulse.schemas.alerts import Job, Rule

SCHEMA_VERSION = 1
_RED, _GREEN, _AMBER = 0xE74C3C, 0x2ECC71, 0xF39C12
_EMBED_TITLE_MAX = 256
_EMBED_TEXT_MAX = 1024


class BotInfo(msgspec.Struct, frozen=True):
    id: str
    name: str
    avatar: str | None
    url: str


def message_id(job: Job) -> str:
    """The same for every attempt of one notification: receivers de-duplicate on it (it is both
    `webhook-id` and `Idempotency-Key`)."""
    return f"msg_{job.incident}_{job.event}"


def _iso(ms: int) -> str:
    return (
        dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def duration_text(ms: int) -> str:
    seconds = max(0, ms // 1000)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{days} d"] if days else []
    if hours:
        parts.append(f"{hours} h")
    if minutes and not days:
        parts.append(f"{minutes} min")
    if not parts:
        parts.append(f"{seconds} s")
    return " ".join(parts)


def state_of(rule: Rule, job: Job) -> str:
    if rule.kind == "offline":
        return "offline" if job.event == "opened" else "online"
    return "firing" if job.event == "opened" else "resolved"


def _title(rule: Rule, job: Job, bot: BotInfo) -> str:
    if rule.kind == "offline":
        text = f"{bot.name} is offline" if job.event == "opened" else f"{bot.name} is back online"
    else:
        text = f"{bot.name}: {rule.name}" + (" — resolved" if job.event == "resolved" else "")
    return text[:_EMBED_TITLE_MAX]


def generic_body(rule: Rule, job: Job, bot: BotInfo) -> dict[str, Any]:
    duration = job.until - job.since if job.until is not None else None
    return {
        "type": f"alert.{job.event}",
        "version": SCHEMA_VERSION,
        "id": message_id(job),
        "timestamp": _iso(job.until if job.until is not None else job.created),
        "state": state_of(rule, job),
        "detail": job.detail,
        "value": job.value,
        "incident": {
            "id": job.incident,
            "since": job.since,
            "resolvedAt": job.until,
            "durationMs": duration,
        },
        "rule": {"id": rule.id, "name": rule.name, "kind": rule.kind},
        "bot": {"id": bot.id, "name": bot.name, "avatar": bot.avatar, "url": bot.url},
    }


def discord_body(rule: Rule, job: Job, bot: BotInfo) -> dict[str, Any]:
    """An Execute Webhook body: one embed; mentions disabled, so a bot name like "@everyone"
    pings nobody."""
    opened = job.event == "opened"
    color = (_RED if rule.kind == "offline" else _AMBER) if opened else _GREEN
    fields = [
        {"name": "State", "value": state_of(rule, job).capitalize(), "inline": True},
    ]
    if job.until is not None:
        label = "Outage" if rule.kind == "offline" else "Duration"
        fields.append({"name": label, "value": duration_text(job.until - job.since), "inline": True})
    else:
        label = "Last post" if rule.kind == "offline" else "Since"
        fields.append({"name": label, "value": f"<t:{job.since // 1000}:R>", "inline": True})
    fields.append({"name": "Rule", "value": rule.name[:_EMBED_TEXT_MAX], "inline": False})
    embed: dict[str, Any] = {
        "title": _title(rule, job, bot),
        "url": bot.url,
        "description": job.detail[:_EMBED_TEXT_MAX],
        "color": color,
        "timestamp": _iso(job.until if job.until is not None else job.created),
        "author": {"name": bot.name[:_EMBED_TITLE_MAX], "url": bot.url},
        "fields": fields,
        "footer": {"text": f"botpulse · {job.incident}"},
    }
    if bot.avatar:
        embed["author"]["icon_url"] = bot.avatar
        embed["thumbnail"] = {"url": bot.avatar}
    return {"username": "botpulse", "embeds": [embed], "allowed_mentions": {"parse": []}}


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")), the key being the base64
    part of `whsec_…`."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def webhook_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Idempotency-Key": msg_id,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }
