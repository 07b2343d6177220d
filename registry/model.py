"""What a valid account or bot write looks like, and the errors every registry operation raises.

Request bodies are JSON objects; each parser takes the decoded object, refuses unknown fields
and wrong values with a `RegistryError` naming the field (the same `{"message", "field"}` 4xx
shape as the gateway), and returns only the fields that were given.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import msgspec

from botpulse.schemas.registry import BOT_ID

MAX_URL = 2048
MAX_TEXT = 256
MAX_SLOTS = 1000
# Who made a change when it was not an account's key: the operator (CLI or admin token).
OPERATOR = "operator"


class RegistryError(Exception):
    """A write or lookup the registry refuses; `status` is the HTTP answer for it."""

    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra: dict[str, Any] = {}
        self.retry_after_s: int | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body | self.extra


class Invalid(RegistryError):
    status = 400


class Unauthorized(RegistryError):
    status = 401

    def __init__(self, message: str = "Unauthorized") -> None:
        super().__init__(message)


class Forbidden(RegistryError):
    status = 403


class MissingScope(RegistryError):
    """A valid key used outside its scope: the answer names the scope it lacks."""

    status = 403

    def __init__(self, has: str, needs: str, what: str) -> None:
        super().__init__(f"This API key has the {has} scope; {what} needs the {needs} scope")
        self.extra = {"scope": has, "missingScope": needs}


class QuotaExceeded(RegistryError):
    """An account at one of its limits (the operator may raise it per account)."""

    status = 403

    def __init__(self, message: str, limit: str, value: int) -> None:
        super().__init__(message)
        self.extra = {"limit": limit, "max": value}


class TooManyWrites(RegistryError):
    status = 429

    def __init__(self, limit: int, retry_after_s: int) -> None:
        super().__init__(
            f"Too many registry changes: this account may make {limit} per minute; retry in {retry_after_s} s"
        )
        self.extra = {"limit": "registryWritesPerMin", "max": limit, "retryAfter": retry_after_s}
        self.retry_after_s = retry_after_s


class NotManageable(RegistryError):
    """A valid key asking to manage another account's bot (DBots answers 400 for this)."""

    status = 400

    def __init__(self) -> None:
        super().__init__("Bot not manageable")


class NotFound(RegistryError):
    status = 404


class Conflict(RegistryError):
    status = 409


class Busy(RegistryError):
    """The registry lock (in Redis) could not be taken in time, or Redis is unreachable."""

    status = 503


def decode_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object."""
    if not raw.strip():
        raise Invalid("Request body must be a JSON object")
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise Invalid(f"Invalid JSON: {exc}") from None
    except RecursionError:
        raise Invalid("Invalid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise Invalid("Request body must be a JSON object")
    return value


def _only(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for name in body:
        if name not in allowed:
            raise Invalid(f"Unknown field {name!r}; expected one of: {', '.join(allowed)}", name)


def _text(body: dict[str, Any], name: str, limit: int = MAX_TEXT) -> str:
    value = body[name]
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"{name} must be a non-empty string", name)
    if len(value) > limit:
        raise Invalid(f"{name} must be at most {limit} characters", name)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise Invalid(f"{name} must not contain control characters", name)
    return value


def _url(body: dict[str, Any], name: str) -> str | None:
    """An http(s) URL of at most 2048 characters, or null (meaning: none)."""
    value = body[name]
    if value is None:
        return None
    if not isinstance(value, str):
        raise Invalid(f"{name} must be an http or https URL, or null", name)
    if len(value) > MAX_URL:
        raise Invalid(f"{name} must be at most {MAX_URL} characters", name)
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise Invalid(f"{name} must be an http or https URL without spaces", name)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise Invalid(f"{name} must be a valid http or https URL", name) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"{name} must be an http or https URL", name)
    return value


def _bool(body: dict[str, Any], name: str) -> bool:
    value = body[name]
    if not isinstance(value, bool):
        raise Invalid(f"{name} must be true or false", name)
    return value


def _slots(body: dict[str, Any], name: str) -> int:
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SLOTS:
        raise Invalid(f"{name} must be an integer from 0 to {MAX_SLOTS}", name)
    return value


def bot_id(value: object, field: str = "id") -> str:
    if not isinstance(value, str) or not BOT_ID.match(value):
        raise Invalid(f"{field} must be 1-64 characters of A-Z a-z 0-9 _ . : -", field)
    return value


def account_name(body: dict[str, Any]) -> str:
    _only(body, ("name",))
    if "name" not in body:
        raise Invalid("name is required", "name")
    return _text(body, "name")


class BotFields(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The fields of a bot write that were given (UNSET = leave as is)."""

    username: str | msgspec.UnsetType = msgspec.UNSET
    avatar: str | msgspec.UnsetType | None = msgspec.UNSET
    private: bool | msgspec.UnsetType = msgspec.UNSET
    vote_webhook_url: str | msgspec.UnsetType | None = msgspec.UNSET
    custom_slots: int | msgspec.UnsetType = msgspec.UNSET
    account_id: str | msgspec.UnsetType = msgspec.UNSET


# API field name -> (BotFields attribute, parser). Who may send which is decided per endpoint.
_BOT_FIELDS = {
    "username": ("username", _text),
    "avatar": ("avatar", _url),
    "private": ("private", _bool),
    "voteWebhookURL": ("vote_webhook_url", _url),
    "customSlots": ("custom_slots", _slots),
    "account": ("account_id", _text),
}
OWNER_CREATE = ("id", "username", "avatar", "private")
OWNER_PATCH = ("username", "avatar", "private")
WEBHOOK_PATCH = ("voteWebhookURL",)
OPERATOR_CREATE = ("id", "account", "username", "avatar", "private", "voteWebhookURL", "customSlots")
OPERATOR_PATCH = ("account", "username", "avatar", "private", "voteWebhookURL", "customSlots")


def bot_fields(
    body: dict[str, Any], allowed: tuple[str, ...], *, required: tuple[str, ...] = ()
) -> BotFields:
    _only(body, allowed)
    for name in required:
        if name not in body:
            raise Invalid(f"{name} is required", name)
    fields = BotFields()
    for name, (attr, parse) in _BOT_FIELDS.items():
        if name in body:
            setattr(fields, attr, parse(body, name))
    return fields


def new_bot(body: dict[str, Any], allowed: tuple[str, ...]) -> tuple[str, BotFields]:
    """The id and fields of a bot to create (`id` and `username` required, plus `account` for
    the operator)."""
    required = ("id", "account", "username") if "account" in allowed else ("id", "username")
    fields = bot_fields(body, allowed, required=required)
    return bot_id(body["id"]), fields


def bot_changes(body: dict[str, Any], allowed: tuple[str, ...]) -> BotFields:
    fields = bot_fields(body, allowed)
    if not given(fields):
        raise Invalid(f"Nothing to change; give at least one of: {', '.join(allowed)}")
    return fields


def given(fields: BotFields) -> dict[str, Any]:
    """The attributes that were set."""
    return {k: v for k, v in msgspec.structs.asdict(fields).items() if v is not msgspec.UNSET}
