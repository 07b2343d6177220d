"""`GET /v1/bots` (Rocket.Chat `statistics.list` style) and the leaderboards.

The client's `query` / `sort` / `fields` JSON is compiled against a whitelist: field names map
to fixed SQL expressions, operators to fixed SQL operators, and every value becomes a bound
parameter. Anything outside the whitelist is a `BadListing` (400), never SQL.
"""

from __future__ import annotations

from typing import Any

import msgspec

from botpulse.runtime.clickhouse import Store
from botpulse.schemas.stats import LAST_FIELDS, LISTED_FIELDS

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
MAX_IN_VALUES = 100


class BadListing(Exception):
    """A malformed or unsupported listing parameter; the message names it."""


# Public field -> (SQL column of the listing subquery, kind)
FILTER_FIELDS: dict[str, tuple[str, str]] = {
    "id": ("id", "string"),
    "username": ("username", "string"),
    "private": ("private", "bool"),
    **{api: (column, "number") for api, column in LISTED_FIELDS.items()},
    "lastSeen": ("last_seen", "number"),
    "connectionStatus": ("connection_status", "string"),
}
OUTPUT_FIELDS = [
    "id", "username", "avatar", "private", "createdAt", "lastSeen", "connectionStatus",
    *LISTED_FIELDS,
]  # fmt: skip
_OPERATORS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}

# Latest values per bot come from `bot_latest` (argMax states merge to the newest non-null value;
# one row per bot once merged), so a listing costs per bot, not per bot-day.
_LISTED = list(LISTED_FIELDS.values())
LISTING_BASE = (
    "SELECT b.id AS id, b.username AS username, b.avatar AS avatar, b.private AS private,"
    " toUnixTimestamp64Milli(b.created_at) AS created_at, "
    + "".join(f"s.{c} AS {c}, " for c in _LISTED)
    + "s.last_seen AS last_seen,"
    " if(s.last_seen >= {cutoff:Int64}, 'connected', 'disconnected') AS connection_status"
    " FROM (SELECT id, username, avatar, private, created_at FROM bots FINAL"
    "   WHERE deleted = 0 AND (private = 0 OR account_id = {account:String})) AS b"
    " LEFT JOIN (SELECT bot_id, "
    + "".join(f"argMaxMerge({c}) AS {c}, " for c in _LISTED)
    + "toUnixTimestamp64Milli(max(last_ts)) AS last_seen"
    "   FROM bot_latest GROUP BY bot_id) AS s ON s.bot_id = b.id"
)
# The columns of a listing row, in OUTPUT_FIELDS order.
_OUTPUT_COLUMNS = [
    "id", "username", "avatar", "private", "created_at", "last_seen", "connection_status", *_LISTED,
]  # fmt: skip

# Leaderboards rank bots by the newest value of a "last" field.
TOP_METRICS = LAST_FIELDS


def _load(name: str, raw: str | None) -> Any:
    if raw is None or raw.strip() == "":
        return None
    try:
        # msgspec, like the gateway: it refuses lone surrogates, which json.loads lets through
        # and ClickHouse then fails to cast.
        return msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        raise BadListing(f"{name} is not valid JSON") from None


class _Params:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def bind(self, kind: str, value: Any, field: str) -> str:
        name = f"p{len(self.values)}"
        if kind == "string":
            if not isinstance(value, str):
                raise BadListing(f"query.{field} expects a string")
            self.values[name] = value
            return f"{{{name}:String}}"
        if kind == "bool":
            if isinstance(value, bool) or value in (0, 1):
                self.values[name] = int(value)
                return f"{{{name}:UInt8}}"
            raise BadListing(f"query.{field} expects true or false")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadListing(f"query.{field} expects a number")
        if isinstance(value, int):
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise BadListing(f"query.{field} is out of range")
            self.values[name] = value
            return f"{{{name}:Int64}}"
        if value != value or value in (float("inf"), float("-inf")):
            raise BadListing(f"query.{field} expects a finite number")
        self.values[name] = value
        return f"{{{name}:Float64}}"


def compile_filter(raw: str | None) -> tuple[str, dict[str, Any]]:
    """The WHERE condition and its bound values for a `query` JSON object."""
    spec = _load("query", raw)
    if spec is None:
        return "1", {}
    if not isinstance(spec, dict):
        raise BadListing("query must be a JSON object")
    params = _Params()
    clauses: list[str] = []
    for field, cond in spec.items():
        if field not in FILTER_FIELDS:
            raise BadListing(f"query: unknown field {field!r} (allowed: {', '.join(FILTER_FIELDS)})")
        column, kind = FILTER_FIELDS[field]
        ops = cond if isinstance(cond, dict) else {"$eq": cond}
        if not ops:
            raise BadListing(f"query.{field}: empty condition")
        for op, value in ops.items():
            clauses.append(_clause(params, column, kind, field, op, value))
    return " AND ".join(f"({c})" for c in clauses) or "1", params.values


def _clause(params: _Params, column: str, kind: str, field: str, op: str, value: Any) -> str:
    if op in ("$eq", "$ne"):
        if value is None:
            return f"{column} IS {'NOT ' if op == '$ne' else ''}NULL"
        bound = params.bind(kind, value, field)
        # Like MongoDB, $ne also matches a bot that has no value.
        return f"{column} = {bound}" if op == "$eq" else f"{column} IS NULL OR {column} != {bound}"
    if op in _OPERATORS:
        if value is None:
            raise BadListing(f"query.{field}.{op} needs a value")
        return f"{column} {_OPERATORS[op]} {params.bind(kind, value, field)}"
    if op == "$in":
        if not isinstance(value, list):
            raise BadListing(f"query.{field}.$in expects an array")
        if len(value) > MAX_IN_VALUES:
            raise BadListing(f"query.{field}.$in takes at most {MAX_IN_VALUES} values")
        if not value:
            return "0"
        return " OR ".join(f"{column} = {params.bind(kind, v, field)}" for v in value)
    raise BadListing(f"query.{field}: unknown operator {op!r} (allowed: $gt $gte $lt $lte $in $ne)")


def compile_sort(raw: str | None) -> str:
    spec = _load("sort", raw)
    if spec is None:
        return "id ASC"
    if not isinstance(spec, dict):
        raise BadListing("sort must be a JSON object")
    keys: list[str] = []
    for field, direction in spec.items():
        if field not in FILTER_FIELDS:
            raise BadListing(f"sort: unknown field {field!r} (allowed: {', '.join(FILTER_FIELDS)})")
        if isinstance(direction, bool) or direction not in (1, -1):
            raise BadListing(f"sort.{field} must be 1 or -1")
        keys.append(f"{FILTER_FIELDS[field][0]} {'ASC' if direction == 1 else 'DESC'}")
    if "id" not in spec:
        keys.append("id ASC")  # a stable order, so pages never overlap
    return ", ".join(keys)


def compile_fields(raw: str | None) -> list[str]:
    spec = _load("fields", raw)
    if spec is None:
        return list(OUTPUT_FIELDS)
    if not isinstance(spec, dict) or not spec:
        raise BadListing("fields must be a non-empty JSON object")
    for field, flag in spec.items():
        if field not in OUTPUT_FIELDS:
            raise BadListing(f"fields: unknown field {field!r} (allowed: {', '.join(OUTPUT_FIELDS)})")
        if isinstance(flag, bool) or flag not in (0, 1):
            raise BadListing(f"fields.{field} must be 1 or 0")
    flags = set(spec.values())
    if flags == {1}:
        # The id always comes along unless explicitly excluded, as MongoDB's _id does.
        return [f for f in OUTPUT_FIELDS if spec.get(f) == 1 or (f == "id" and "id" not in spec)]
    if flags == {0}:
        return [f for f in OUTPUT_FIELDS if f not in spec]
    if flags == {0, 1} and [f for f, v in spec.items() if v == 0] == ["id"]:
        return [f for f in OUTPUT_FIELDS if spec.get(f) == 1]
    raise BadListing("fields cannot mix 1 and 0 (except id: 0)")


async def list_bots(
    store: Store,
    *,
    account: str | None,
    cutoff_ms: int,
    where: str,
    where_params: dict[str, Any],
    order: str,
    fields: list[str],
    offset: int,
    count: int,
) -> tuple[list[dict[str, Any]], int]:
    params: dict[str, Any] = {
        **where_params, "account": account or "", "cutoff": cutoff_ms, "offset": offset, "count": count,
    }  # fmt: skip
    settings = {"join_use_nulls": 1}
    width = len(OUTPUT_FIELDS)
    rows = await store.query(
        f"SELECT {', '.join(_OUTPUT_COLUMNS)}, count() OVER () AS total FROM ({LISTING_BASE}) WHERE {where}"
        f" ORDER BY {order} LIMIT {{count:UInt32}} OFFSET {{offset:UInt64}}",
        params,
        settings,
    )
    if rows:
        total = int(rows[0][width])
    else:
        total = int(
            (await store.query(f"SELECT count() FROM ({LISTING_BASE}) WHERE {where}", params, settings))[0][0]
        )
    bots = []
    for r in rows:
        full = dict(zip(OUTPUT_FIELDS, r[:width], strict=True))
        full["private"] = bool(full["private"])
        bots.append({f: full[f] for f in fields})
    return bots, total


async def leaderboard(store: Store, metric: str, limit: int) -> list[dict[str, Any]]:
    column = TOP_METRICS[metric]
    rows = await store.query(
        "SELECT b.id, b.username, b.avatar, s.v FROM"
        f" (SELECT bot_id, argMaxMerge({column}) AS v FROM bot_latest GROUP BY bot_id) AS s"
        " INNER JOIN (SELECT id, username, avatar FROM bots FINAL WHERE deleted = 0 AND private = 0)"
        " AS b ON b.id = s.bot_id WHERE s.v IS NOT NULL ORDER BY s.v DESC, b.id ASC"
        " LIMIT {limit:UInt32}",
        {"limit": limit},
    )
    return [
        {"rank": n + 1, "id": r[0], "username": r[1], "avatar": r[2], "value": r[3]}
        for n, r in enumerate(rows)
    ]
