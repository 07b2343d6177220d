"""The errors every registry operation raises, and how a request body becomes its struct.

A body is decoded straight into its struct (`schemas/account.py`, the one definition of its
fields and bounds, which the OpenAPI document shows) by `decode`: a body that does not fit is an
`Invalid` naming the field (the same `{"message", "field"}` 4xx shape as the gateway). The few
checks a struct cannot state run after decoding: `check_url` and `require_changes` here, the
rest beside the operation that needs them.
"""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec

from botpulse.schemas.refusals import explain
from botpulse.schemas.registry import BOT_ID

T = TypeVar("T")
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


# --- request bodies -----------------------------------------------------------------------------
def decode(raw: bytes, struct: type[T]) -> T:
    """The request body as `struct`, or `Invalid` naming the field at fault."""
    if not raw.strip():
        raise Invalid("Request body must be a JSON object")
    try:
        return msgspec.json.decode(raw, type=struct)
    except msgspec.ValidationError as exc:
        raise Invalid(*explain(exc, struct)) from None
    except msgspec.DecodeError as exc:
        raise Invalid(f"Invalid JSON: {exc}") from None
    except RecursionError:
        raise Invalid("Invalid JSON: nested too deeply") from None


def given(body: msgspec.Struct) -> dict[str, Any]:
    """The fields of a body (or of `BotFields`) that were set: UNSET means absent."""
    return {k: v for k, v in msgspec.structs.asdict(body).items() if v is not msgspec.UNSET}


def require_changes(body: msgspec.Struct) -> None:
    """A PATCH body must change something (a struct cannot say "at least one field")."""
    if not given(body):
        names = ", ".join(f.encode_name for f in msgspec.structs.fields(body))
        raise Invalid(f"Nothing to change; give at least one of: {names}")


def check_url(value: str, field: str) -> None:
    """What the `Url` pattern leaves out: a port that is a number from 0 to 65535."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        message = f"Invalid `{field}`: expected an http or https URL with a port up to 65535"
        raise Invalid(message, field) from None
    if not parts.hostname:
        raise Invalid(f"Invalid `{field}`: expected an http or https URL with a host", field)


def bot_id(value: object, field: str = "id") -> str:
    """A bot id given in a path (bodies declare `BotId`)."""
    if not isinstance(value, str) or not BOT_ID.match(value):
        raise Invalid(f"{field} must be 1-64 characters of A-Z a-z 0-9 _ . : -", field)
    return value


class BotFields(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The fields of a bot write that were given (UNSET = leave as is)."""

    username: str | msgspec.UnsetType = msgspec.UNSET
    avatar: str | msgspec.UnsetType | None = msgspec.UNSET
    private: bool | msgspec.UnsetType = msgspec.UNSET
    vote_webhook_url: str | msgspec.UnsetType | None = msgspec.UNSET
    custom_slots: int | msgspec.UnsetType = msgspec.UNSET
    account_id: str | msgspec.UnsetType = msgspec.UNSET


# A bot body's API names that are not `BotFields`' own.
_BOT_ATTRS = {"voteWebhookURL": "vote_webhook_url", "customSlots": "custom_slots", "account": "account_id"}


def bot_fields(body: msgspec.Struct) -> BotFields:
    """The `BotFields` of a decoded bot body (any of `schemas.account`'s; its `id` aside), its
    URLs checked. Which fields a caller may send is its body struct's choice."""
    values = {k: v for k, v in given(body).items() if k != "id"}
    for name in ("avatar", "voteWebhookURL"):
        if isinstance(values.get(name), str):
            check_url(values[name], name)
    return BotFields(**{_BOT_ATTRS.get(k, k): v for k, v in values.items()})
