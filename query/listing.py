"""`GET /v1/bots` and its `statistics.list` alias (Rocket.Chat style): MongoDB-like `query`
(`$gt $gte $lt $lte $in $nin $ne $regex $or $and`), `sort`, `fields`, paging.

The client's `query` / `sort` / `fields` JSON is compiled against a whitelist: field names map
to fixed SQL expressions, operators to fixed SQL operators, and every value becomes a bound
parameter. Anything outside the whitelist is a `BadListing` (400), never SQL.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import msgspec

from botpulse.runtime.clickhouse import Store
from botpulse.schemas.stats import LISTED_FIELDS

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
    "_updatedAt": ("updated_ms", "number"),
    "version": ("version", "string"),
}
# Rocket.Chat / MongoDB names for the same fields.
FIELD_ALIASES = {"_id": "id", "name": "username"}
OUTPUT_FIELDS = [
    "id", "username", "avatar", "private", "createdAt", "lastSeen", "connectionStatus",
    *LISTED_FIELDS,
]  # fmt: skip
# Fields a record can also carry: the native route gives them when `fields` asks, the
# `statistics.list` alias by default (`_updatedAt`: ISO-8601, the later of the bot's last change
# and its last post; `version`: the latest value of the bot's `version` property).
EXTRA_FIELDS = ["_updatedAt", "version"]
ALL_FIELDS = [*OUTPUT_FIELDS, *EXTRA_FIELDS]
_OPERATORS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
MAX_OR = 20
MAX_DEPTH = 4
MAX_REGEX = 64

# Latest values per bot come from `bot_latest` (argMax states merge to the newest non-null value;
# one row per bot once merged), so a listing costs per bot, not per bot-day.
_LISTED = list(LISTED_FIELDS.values())
LISTING_BASE = (
    "SELECT b.id AS id, b.username AS username, b.avatar AS avatar, b.private AS private,"
    " toUnixTimestamp64Milli(b.created_at) AS created_at, "
    + "".join(f"s.{c} AS {c}, " for c in _LISTED)
    + "s.last_seen AS last_seen,"
    " if(s.last_seen >= {cutoff:Int64}, 'connected', 'disconnected') AS connection_status,"
    " greatest(toUnixTimestamp64Milli(b.updated_at), ifNull(s.last_seen, 0)) AS updated_ms,"
    " v.version AS version"
    " FROM (SELECT id, username, avatar, private, created_at, updated_at FROM bots FINAL"
    "   WHERE deleted = 0 AND (private = 0 OR account_id = {account:String})) AS b"
    " LEFT JOIN (SELECT bot_id, "
    + "".join(f"argMaxMerge({c}) AS {c}, " for c in _LISTED)
    + "toUnixTimestamp64Milli(max(last_ts)) AS last_seen"
    "   FROM bot_latest GROUP BY bot_id) AS s ON s.bot_id = b.id"
    " LEFT JOIN (SELECT bot_id, argMax(value, ts) AS version FROM bot_props WHERE name = 'version'"
    "   GROUP BY bot_id) AS v ON v.bot_id = b.id"
)
# The columns of a listing row, in ALL_FIELDS order.
_OUTPUT_COLUMNS = [
    "id", "username", "avatar", "private", "created_at", "last_seen", "connection_status", *_LISTED,
    "updated_ms", "version",
]  # fmt: skip


def field_name(section: str, raw: object, allowed: list[str] | dict[str, object]) -> str:
    name = FIELD_ALIASES.get(raw, raw) if isinstance(raw, str) else raw
    if not isinstance(name, str) or name not in allowed:
        raise BadListing(f"{section}: unknown field {raw!r} (allowed: {', '.join(allowed)})")
    return name


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
    params = _Params()
    return _conditions(params, spec, "query", 0), params.values


def _conditions(params: _Params, spec: Any, where: str, depth: int) -> str:
    """A filter object: its fields' conditions ANDed; `$or` / `$and` hold arrays of filter objects."""
    if not isinstance(spec, dict):
        raise BadListing(f"{where} must be a JSON object")
    if depth > MAX_DEPTH:
        raise BadListing(f"{where}: $or / $and nest at most {MAX_DEPTH} deep")
    clauses: list[str] = []
    for key, cond in spec.items():
        if key in ("$or", "$and"):
            if not isinstance(cond, list) or not cond or len(cond) > MAX_OR:
                raise BadListing(f"{where}.{key} expects an array of 1 to {MAX_OR} filter objects")
            parts = [_conditions(params, c, f"{where}.{key}[{i}]", depth + 1) for i, c in enumerate(cond)]
            clauses.append((" OR " if key == "$or" else " AND ").join(f"({p})" for p in parts))
            continue
        field = field_name(where, key, FILTER_FIELDS)
        column, kind = FILTER_FIELDS[field]
        ops = cond if isinstance(cond, dict) else {"$eq": cond}
        if not ops:
            raise BadListing(f"{where}.{field}: empty condition")
        options = ops.get("$options")
        if options is not None and "$regex" not in ops:
            raise BadListing(f"{where}.{field}.$options goes with $regex")
        for op, value in ops.items():
            if op == "$options":
                continue
            if op == "$regex":
                clauses.append(_regex(params, column, kind, f"{where}.{field}", value, options))
            else:
                clauses.append(_clause(params, column, kind, field, op, value))
    return " AND ".join(f"({c})" for c in clauses) or "1"


# A regular expression from a client runs in ClickHouse, whose `match` uses RE2: matching time
# is linear in the text whatever the pattern, so `(a+)+$` cannot backtrack catastrophically.
# The pattern is still bounded and limited to what RE2 and MongoDB agree on (no backreferences,
# no lookaround), checked here so a pattern RE2 would refuse is a 400, not a 500.
_ESCAPES = set("dDwWsSbB") | set(r".^$*+?()[]{}|\/-_ ")
_REPEAT = re.compile(r"\{(\d{1,3})(,(\d{0,3}))?\}")
MAX_REPEAT = 100


def check_regex(pattern: object, where: str) -> str:
    if not isinstance(pattern, str) or not pattern:
        raise BadListing(f"{where}.$regex expects a non-empty string")
    if len(pattern) > MAX_REGEX:
        raise BadListing(f"{where}.$regex is longer than {MAX_REGEX} characters")
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1 : i + 2]
            if nxt not in _ESCAPES:
                raise BadListing(f"{where}.$regex: unsupported escape \\{nxt} (no backreferences)")
            i += 2
            continue
        if c == "(" and pattern[i + 1 : i + 2] == "?" and pattern[i + 2 : i + 3] != ":":
            raise BadListing(f"{where}.$regex: only (?:...) groups (no lookaround or inline flags)")
        if c in "*+?}" and pattern[i + 1 : i + 2] == "+":
            raise BadListing(f"{where}.$regex: no possessive repeats ({c}+)")
        if c == "{":
            m = _REPEAT.match(pattern, i)
            if m is None:
                raise BadListing(f"{where}.$regex: a repeat is {{n}}, {{n,}} or {{n,m}}")
            if max(int(m.group(1)), int(m.group(3) or 0)) > MAX_REPEAT:
                raise BadListing(f"{where}.$regex: repeats go up to {MAX_REPEAT}")
            i = m.end()
            continue
        i += 1
    try:
        re.compile(pattern)
    except re.error as exc:
        raise BadListing(f"{where}.$regex is not a valid regular expression: {exc}") from None
    return pattern


def _regex(params: _Params, column: str, kind: str, where: str, value: Any, options: Any) -> str:
    if kind != "string":
        raise BadListing(f"{where}.$regex applies to text fields only")
    pattern = check_regex(value, where)
    if options is not None:
        if not isinstance(options, str) or not set(options) <= {"i"}:
            raise BadListing(f"{where}.$options supports only 'i' (case-insensitive)")
        if options:
            pattern = "(?i)" + pattern
    bound = params.bind("string", pattern, where.partition(".")[2])
    return f"{column} IS NOT NULL AND match({column}, {bound})"


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
    if op in ("$in", "$nin"):
        if not isinstance(value, list):
            raise BadListing(f"query.{field}.{op} expects an array")
        if len(value) > MAX_IN_VALUES:
            raise BadListing(f"query.{field}.{op} takes at most {MAX_IN_VALUES} values")
        matches = " OR ".join(f"{column} = {params.bind(kind, v, field)}" for v in value) or "0"
        # Like MongoDB, $nin also matches a bot that has no value.
        return matches if op == "$in" else f"{column} IS NULL OR NOT ({matches})"
    raise BadListing(
        f"query.{field}: unknown operator {op!r} (allowed: $gt $gte $lt $lte $in $nin $ne $regex)"
    )


def compile_sort(raw: str | None) -> str:
    spec = _load("sort", raw)
    if spec is None:
        return "id ASC"
    if not isinstance(spec, dict):
        raise BadListing("sort must be a JSON object")
    keys: list[str] = []
    seen: set[str] = set()
    for raw_field, direction in spec.items():
        field = field_name("sort", raw_field, FILTER_FIELDS)
        seen.add(field)
        if isinstance(direction, bool) or direction not in (1, -1):
            raise BadListing(f"sort.{field} must be 1 or -1")
        keys.append(f"{FILTER_FIELDS[field][0]} {'ASC' if direction == 1 else 'DESC'}")
    if "id" not in seen:
        keys.append("id ASC")  # a stable order, so pages never overlap
    return ", ".join(keys)


def compile_fields(raw: str | None, defaults: list[str] = OUTPUT_FIELDS) -> list[str]:
    spec = _load("fields", raw)
    if spec is None:
        return list(defaults)
    if not isinstance(spec, dict) or not spec:
        raise BadListing("fields must be a non-empty JSON object")
    flags: dict[str, int] = {}
    for raw_field, flag in spec.items():
        field = field_name("fields", raw_field, ALL_FIELDS)
        if isinstance(flag, bool) or flag not in (0, 1):
            raise BadListing(f"fields.{raw_field} must be 1 or 0")
        flags[field] = flag
    values = set(flags.values())
    if values == {1}:
        # The id always comes along unless explicitly excluded, as MongoDB's _id does.
        return [f for f in ALL_FIELDS if flags.get(f) == 1 or (f == "id" and "id" not in flags)]
    if values == {0}:
        return [f for f in defaults if f not in flags]
    if values == {0, 1} and [f for f, v in flags.items() if v == 0] == ["id"]:
        return [f for f in ALL_FIELDS if flags.get(f) == 1]
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
    width = len(ALL_FIELDS)
    try:
        rows = await store.query(
            f"SELECT {', '.join(_OUTPUT_COLUMNS)}, count() OVER () AS total"
            f" FROM ({LISTING_BASE}) WHERE {where}"
            f" ORDER BY {order} LIMIT {{count:UInt32}} OFFSET {{offset:UInt64}}",
            params,
            settings,
        )
    except Exception as exc:
        # CANNOT_COMPILE_REGEXP: a pattern check_regex let through but RE2 refuses.
        if "Code: 427." in str(exc):
            raise BadListing("query: $regex is not a pattern RE2 accepts") from None
        raise
    if rows:
        total = int(rows[0][width])
    else:
        total = int(
            (await store.query(f"SELECT count() FROM ({LISTING_BASE}) WHERE {where}", params, settings))[0][0]
        )
    bots = []
    for r in rows:
        full = dict(zip(ALL_FIELDS, r[:width], strict=True))
        full["private"] = bool(full["private"])
        full["_updatedAt"] = _iso(int(full["_updatedAt"]))
        bots.append({f: full[f] for f in fields})
    return bots, total


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
