"""Query-string parsing for the read API: every bad value becomes `BadParam`, which the handlers
turn into a 400 naming the parameter."""

from __future__ import annotations

import datetime as dt
import decimal
import math

# A bare number below this is Unix seconds, above it Unix ms: 1e11 s is the year 5138 while
# 1e11 ms is 1973, so real timestamps of either kind never fall on the wrong side.
_SECONDS_BELOW = 100_000_000_000
MAX_ID_LENGTH = 128
_MAX_TIMESTAMP_TEXT = 40  # the longest ISO-8601 form with zone and fraction is about 35
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no", ""}


class BadParam(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def timestamp_ms(field: str, raw: str) -> int:
    """Unix ms, Unix seconds (bare numbers below 1e11) or an ISO-8601 date/time (UTC if no zone)."""
    text = raw.strip()
    if len(text) > _MAX_TIMESTAMP_TEXT:
        raise BadParam(field, f"{field} is longer than {_MAX_TIMESTAMP_TEXT} characters")
    try:
        number = decimal.Decimal(text)  # exact: "1752727252.516" s is exactly ...516 ms
    except decimal.InvalidOperation:
        number = None
    if number is not None:
        if not number.is_finite():
            raise BadParam(field, f"{field} must be a finite timestamp")
        # Before any arithmetic: "1e9999999" is 9 characters, but flooring it would build an
        # integer of ten million digits and stall the event loop.
        if number.adjusted() > 16:
            raise BadParam(field, f"{field} is out of range (1970 to 2286)")
        ms = number * 1000 if abs(number) < _SECONDS_BELOW else number
        value = math.floor(ms)
    else:
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            raise BadParam(
                field, f"{field} must be Unix ms, Unix seconds or an ISO-8601 date, got {raw!r}"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        value = int(parsed.timestamp() * 1000)
    if not 0 <= value <= 10_000_000_000_000:
        raise BadParam(field, f"{field} is out of range (1970 to 2286)")
    return value


def integer(field: str, raw: str | None, *, default: int, lo: int, hi: int) -> int:
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise BadParam(field, f"{field} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise BadParam(field, f"{field} must be between {lo} and {hi}, got {value}")
    return value


def boolean(field: str, raw: str | None) -> bool:
    if raw is None:
        return False
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise BadParam(field, f"{field} must be true or false, got {raw!r}")


def bot_id(field: str, raw: str | None) -> str:
    if raw is None or raw == "":
        raise BadParam(field, f"{field} is required")
    if len(raw) > MAX_ID_LENGTH:
        raise BadParam(field, f"{field} is longer than {MAX_ID_LENGTH} characters")
    return raw
