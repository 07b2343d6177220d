"""The audit log: one row per changed field of a bot or an account key, grouped back into one
change per (time, author) when read.

Values are stored JSON-encoded so `private: false` reads back as a boolean and `null` stays
distinct from "no value before" (a created bot's fields have no old value: SQL NULL). A key is
never logged: a key change records only the key's first characters (`key_hint`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from botpulse.runtime.clickhouse import Store

COLUMNS = ["bot_id", "account_id", "at", "by", "field", "old_value", "new_value"]
# Rows about the account itself (its key) carry an empty bot id.
ACCOUNT_ROW = ""
# Marks a field that had no value before (a created bot): stored as SQL NULL.
ABSENT = object()


class Change(msgspec.Struct):
    """One change as the DBots-style log shows it."""

    at: str
    by: str
    changes: dict[str, dict[str, Any]]


def _encode(value: Any) -> str | None:
    return None if value is ABSENT else msgspec.json.encode(value).decode()


def rows(
    bot_id: str, account_id: str, at: dt.datetime, by: str, diff: dict[str, tuple[Any, Any]]
) -> list[list[Any]]:
    """Audit rows for `diff` (field -> (old, new)); pass `ABSENT` as old for a created field."""
    return [
        [bot_id, account_id, at, by, field, _encode(old), _encode(new)] for field, (old, new) in diff.items()
    ]


async def write(store: Store, audit_rows: list[list[Any]]) -> None:
    if audit_rows:
        await store.insert("audit_log", audit_rows, COLUMNS)


_SCOPE = (
    "bot_id = {bot:String} OR (bot_id = '' AND account_id = {account:String} "
    "AND at >= {since:DateTime64(3, 'UTC')})"
)


async def bot_log(
    store: Store, bot_id: str, account_id: str, since: dt.datetime, *, limit: int, offset: int
) -> tuple[list[Change], int]:
    """Changes to the bot, and to its owner's key since the bot was created, newest first;
    returns (page, total number of changes)."""
    params = {"bot": bot_id, "account": account_id, "since": since, "limit": limit, "offset": offset}
    page = await store.query(
        "SELECT at, by, groupArray((field, old_value, new_value)) FROM audit_log "
        f"WHERE {_SCOPE} GROUP BY at, by ORDER BY at DESC, by "
        "LIMIT {limit:UInt32} OFFSET {offset:UInt32}",
        params,
    )
    total = await store.query(
        f"SELECT count() FROM (SELECT at, by FROM audit_log WHERE {_SCOPE} GROUP BY at, by)", params
    )
    return [_change(at, by, fields) for at, by, fields in page], int(total[0][0])


def _change(at: dt.datetime, by: str, fields: list[tuple[str, str | None, str | None]]) -> Change:
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    for field, old_value, new_value in sorted(fields):
        if old_value is not None:
            old[field] = msgspec.json.decode(old_value)
        if new_value is not None:
            new[field] = msgspec.json.decode(new_value)
    return Change(at=iso(at), by=by, changes={"old": old, "new": new})


def iso(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
