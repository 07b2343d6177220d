"""The query service's routes as OpenAPI specs (see `runtime/openapi.py`). A new route is described
here, with its parameters, its body as the struct its handler decodes with (`schemas/account.py`;
tests/test_openapi.py checks it is the same one) and its answers as the structs of
`query/shapes.py`; a route mounted without a spec fails tests/test_openapi.py. Served at
`/openapi.json` (under BOTPULSE_QUERY_PREFIX) and merged into `docs/api/openapi.json` by
`botpulse openapi`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta

from botpulse.query import shapes as s
from botpulse.registry.admin import OPERATIONS
from botpulse.runtime.openapi import (
    ACCOUNT_KEY,
    ADMIN,
    DATAGRAM_KEY,
    Param,
    Reply,
    Route,
    RouteSpecs,
    error_reply,
    health_routes,
)
from botpulse.schemas import account as bodies

SPECS = RouteSpecs(
    "botpulse query service",
    "Reading bots' stats, uptime (also Datagram-compatible), listings and leaderboards; the "
    "account API and the operator's admin API. Every refusal is JSON `{message, field}`; see "
    "docs/api/query.md and docs/api/accounts.md.",
)
EXAMPLE_BOT = "100000000000000001"

Timestamp = Annotated[
    str, Meta(max_length=40, description="Unix ms, Unix seconds (below 1e11) or an ISO-8601 date/time (UTC).")
]
Flag = Literal["true", "false", "1", "0", "yes", "no"]
BOT = Param(name="botId", where="path", type=bodies.BotId, example=EXAMPLE_BOT)
START = Param(
    name="start", type=Timestamp, description="Start of the range (inclusive).", example="1752710400000"
)
END = Param(name="end", type=Timestamp, description="End of the range (exclusive); default now.")
_RETRY = "Seconds to wait before trying again."


def _unavailable() -> Reply:
    return error_reply("ClickHouse or Redis is unreachable; try again (`Retry-After`).", retry=True)


def _read(
    path: str,
    operation_id: str,
    summary: str,
    ok: Reply,
    *params: Param,
    tags: tuple[str, ...] = ("read",),
    description: str = "",
    errors: dict[int, Reply] | None = None,
    security: tuple[str, ...] = (),
) -> Route:
    replies = {200: ok, 503: _unavailable(), **(errors or {})}
    return SPECS.route(
        method="GET",
        path=path,
        operation_id=operation_id,
        summary=summary,
        tags=tags,
        description=description,
        params=params,
        replies=replies,
        security=security,
    )


BAD = error_reply("A parameter is not valid; `field` names it.")
NO_BOT = error_reply("No such bot, or it is private to another account.")
OPTIONAL_KEY = ACCOUNT_KEY  # reads are public; a key also shows the account's private bots

_read(
    "/v1/bot/{botId}",
    "getBot",
    "A bot, with its stats in `dataPoints` buckets",
    Reply(description="The bot.", body=s.BotInfo),
    BOT,
    Param(name="returnStats", type=Flag, description="Also return the buckets of the range."),
    Param(name="dataPoints", type=Annotated[int, Meta(ge=1, le=1000)], description="Buckets (default 90)."),
    START,
    END,
    errors={400: BAD, 404: NO_BOT},
    security=OPTIONAL_KEY,
)
_read(
    "/v1/bot/{botId}/uptime",
    "getBotUptime",
    "Uptime and offline periods of a bot in a range",
    Reply(description="The uptime.", body=s.BotUptime),
    BOT,
    START,
    END,
    errors={400: BAD, 404: NO_BOT},
    security=OPTIONAL_KEY,
)
_read(
    "/v1/bot/{botId}/top",
    "getBotTop",
    "The most frequent `value1`s of one custom-graph type",
    Reply(description="The top values.", body=s.BotTop),
    BOT,
    Param(
        name="type", type=Annotated[str, Meta(min_length=1, max_length=64)], required=True, example="command"
    ),
    Param(name="limit", type=Annotated[int, Meta(ge=1, le=100)]),
    START,
    END,
    errors={400: BAD, 404: NO_BOT},
    security=OPTIONAL_KEY,
)
_read(
    "/v1/bot/{botId}/export",
    "exportBot",
    "A bot's data for a range as a file: its buckets or every post, CSV or JSON lines",
    Reply(
        description=(
            "The file (`Content-Disposition: attachment`), written as it is read. `data=buckets`: "
            "one row or line per bucket, the same buckets as `GET /v1/bot/{botId}?returnStats=true`; "
            "`data=posts`: every stored post of the range, oldest first. CSV's first row names the "
            "columns; a text cell starting like a formula gets a leading `'`."
        ),
        body=str,
        content_type=("text/csv", "application/x-ndjson"),
        headers={"Content-Disposition": '`attachment; filename="bot-<id>-<data>.<format>"`.'},
    ),
    BOT,
    Param(name="format", type=Literal["csv", "jsonl"], description="The file's format (default csv)."),
    Param(name="data", type=Literal["buckets", "posts"], description="Buckets (default) or every post."),
    Param(
        name="dataPoints",
        type=Annotated[int, Meta(ge=1, le=1000)],
        description="Buckets for `data=buckets` (default 90).",
    ),
    Param(
        name="start", type=Timestamp, description="Start of the range (inclusive); default a day before end."
    ),
    END,
    description=(
        "The range covers at most BOTPULSE_EXPORT_MAX_DAYS (default 90 days). Privacy as for the "
        "bot itself: a private bot is 404 to anyone but its account (a read or manage key, or a "
        "signed-in dashboard session); an ingest key may not read (403)."
    ),
    errors={
        400: BAD,
        403: error_reply("The key has the ingest scope, which may not read."),
        404: NO_BOT,
    },
    security=OPTIONAL_KEY,
)
_read(
    "/v1/bot/{botId}/shards",
    "getBotShards",
    "Each shard's latest values, last post and up/down status (the shard grid)",
    Reply(description="The shards that posted in the last day.", body=s.ShardGrid),
    BOT,
    errors={400: BAD, 404: NO_BOT},
    security=OPTIONAL_KEY,
)
_read(
    "/v1/bot/{botId}/shards/uptime",
    "getBotShardsUptime",
    "Uptime of each shard in a range (default: the last 24 hours)",
    Reply(description="The shards' uptime.", body=s.ShardUptimes),
    BOT,
    Param(
        name="shards",
        type=Annotated[str, Meta(max_length=700_000, pattern=r"^[0-9, ]*$")],
        description="Comma-separated shard ids (default: every shard of the grid).",
        example="0,3",
    ),
    START,
    END,
    errors={400: BAD, 404: NO_BOT},
    security=OPTIONAL_KEY,
)
_LISTING_PAGE = (
    Param(name="offset", type=Annotated[int, Meta(ge=0, le=10_000_000)]),
    Param(name="count", type=Annotated[int, Meta(ge=1, le=100)]),
)
_read(
    "/v1/bots",
    "listBots",
    "List bots (filter, sort, choose fields, page)",
    Reply(description="A page of bots.", body=s.Listing),
    Param(name="query", type=str, description='JSON filter, e.g. `{"guilds": {"$gt": 100}}`.'),
    Param(name="sort", type=str, description='JSON sort, e.g. `{"guilds": -1}`.'),
    Param(name="fields", type=str, description='JSON projection, e.g. `{"id": 1, "guilds": 1}`.'),
    *_LISTING_PAGE,
    errors={400: Reply(description="A parameter is not valid.", body=s.ListingError)},
    security=OPTIONAL_KEY,
)
_SearchText = Annotated[str, Meta(min_length=1, max_length=64)]
_read(
    "/v1/bots/search",
    "searchBots",
    "Bots whose name contains (or starts with) a text, most recently seen first",
    Reply(description="A page of matching bots.", body=s.Listing),
    Param(name="q", type=_SearchText, description="The text (also `name` or `nick`).", example="pulse"),
    Param(name="name", type=_SearchText, description="`q`'s alias."),
    Param(name="nick", type=_SearchText, description="`q`'s alias."),
    Param(name="match", type=Literal["substring", "prefix"], description="Default `substring`."),
    Param(name="fields", type=str, description="JSON projection, as in `GET /v1/bots`."),
    Param(name="offset", type=Annotated[int, Meta(ge=0, le=10_000_000)]),
    Param(name="count", type=Annotated[int, Meta(ge=1, le=100)]),
    Param(name="limit", type=Annotated[int, Meta(ge=1, le=100)], description="`count`'s alias."),
    errors={400: BAD},
    security=OPTIONAL_KEY,
)
_read(
    "/api/v1/statistics.list",
    "rocketChatStatisticsList",
    "List bots in Rocket.Chat's `statistics.list` shape",
    Reply(description="A page of bots (`_id`, `_updatedAt`, `version` by default).", body=s.StatisticsList),
    Param(name="query", type=str, description="JSON filter, as in `GET /v1/bots`."),
    Param(name="sort", type=str, description="JSON sort, as in `GET /v1/bots`."),
    Param(name="fields", type=str, description="JSON projection, as in `GET /v1/bots`."),
    *_LISTING_PAGE,
    Param(
        name="X-Auth-Token",
        where="header",
        type=Annotated[str, Meta(max_length=256)],
        description="An API key, as Rocket.Chat clients send it (same scopes as `Authorization`).",
    ),
    Param(
        name="X-User-Id",
        where="header",
        type=Annotated[str, Meta(max_length=64)],
        description="The key's account id; another account's is 401.",
    ),
    tags=("rocketchat", "read"),
    errors={
        400: Reply(description="A parameter is not valid.", body=s.RocketChatError),
        401: Reply(description="X-Auth-Token / X-User-Id do not match a key.", body=s.RocketChatError),
    },
    security=OPTIONAL_KEY,
)
_MetricName = Annotated[str, Meta(min_length=1, max_length=64)]
_read(
    "/v1/top",
    "getTop",
    "Leaderboard of public bots by any metric, or the ratio of two",
    Reply(description="The leaderboard.", body=s.Leaderboard),
    Param(
        name="metric",
        type=_MetricName,
        description="A stats field (`guilds`, `users`, `shards`, `ramTotal`: the newest value; `apiPing`, "
        "`ramUsage`, `cpu`, `bandwidth`: the period's mean) or a custom metric's name. Default `guilds`.",
        example="guilds",
    ),
    Param(name="per", type=_MetricName, description="Rank by `metric / per` (e.g. kills per deaths)."),
    Param(
        name="period",
        type=Literal["hour", "day", "week", "month", "all"],
        description="Default `all` for newest values, `day` for means.",
    ),
    Param(name="order", type=Literal["asc", "desc"], description="Default `desc`."),
    Param(name="limit", type=Annotated[int, Meta(ge=1, le=100)]),
    errors={400: BAD},
)

# --- Datagram ---------------------------------------------------------------------------------------
_DG_ERRORS = {
    400: BAD,
    401: error_reply("No API key, or an unknown one."),
}
_ONE = Param(name="partner_node_id", type=bodies.BotId, required=True, example=EXAMPLE_BOT)
_MANY = Param(
    name="partner_node_id[]",
    type=Annotated[list[bodies.BotId], Meta(min_length=1, max_length=100)],
    required=True,
    description="Repeat for each bot (at most 100).",
)
_SINCE = Param(
    name="started_at", type=Timestamp, description="Rounded down to the hour; at most 2 weeks back."
)
_UNTIL = Param(name="ended_at", type=Timestamp, description="Rounded down to the hour.")
for path, op, summary, body, params, errors in (
    (
        "/api/v1/uptime",
        "datagramUptime",
        "Uptime of one bot (Datagram)",
        s.UptimeOne,
        (_ONE, _SINCE, _UNTIL),
        {404: error_reply("The key's account owns no such bot.")},
    ),
    (
        "/api/v1/uptimes",
        "datagramUptimes",
        "Uptime of several bots (Datagram)",
        s.UptimeMany,
        (_MANY, _SINCE, _UNTIL),
        {},
    ),
    (
        "/api/v1/partner/detail",
        "datagramDetail",
        "Status and total uptime of one bot (Datagram)",
        s.DetailOne,
        (_ONE,),
        {404: error_reply("The key's account owns no such bot.")},
    ),
    (
        "/api/v1/partner/details",
        "datagramDetails",
        "Status and total uptime of several bots (Datagram)",
        s.DetailMany,
        (_MANY,),
        {},
    ),
):
    _read(
        path,
        op,
        summary,
        Reply(description="The uptime.", body=body),
        *params,
        tags=("datagram",),
        errors={**_DG_ERRORS, **errors},
        security=DATAGRAM_KEY,
    )


# --- accounts ---------------------------------------------------------------------------------------
def _account(
    method: str,
    path: str,
    operation_id: str,
    summary: str,
    ok: tuple[int, Reply],
    *,
    params: tuple[Param, ...] = (),
    body: Any = None,
    example: Any = None,
    tags: tuple[str, ...] = ("accounts",),
    errors: dict[int, Reply] | None = None,
) -> Route:
    replies = {
        ok[0]: ok[1],
        400: error_reply("The body or a parameter is not valid; `field` names it."),
        401: error_reply("No API key, or an unknown one."),
        503: error_reply("The registry is busy or unreachable; try again (`Retry-After`).", retry=True),
        **(errors or {}),
    }
    if method != "GET":  # every account write counts against registryWritesPerMin
        replies.setdefault(429, error_reply("Too many registry changes this minute.", retry=True))
    if body is not None:
        replies[413] = error_reply("The body is too large.")
    extra = {"body_example": example} if example is not None else {}
    return SPECS.route(
        method=method,
        path=path,
        operation_id=operation_id,
        summary=summary,
        tags=tags,
        params=params,
        body=body,
        replies=replies,
        security=ACCOUNT_KEY,
        **extra,
    )


_MANAGED = {404: error_reply("No such bot."), 403: error_reply("Not allowed.")}
_account(
    "POST",
    "/v1/bots",
    "createBot",
    "Register a bot for the calling account",
    (201, Reply(description="The bot.", body=s.BotView)),
    body=bodies.BotCreate,
    example={"id": EXAMPLE_BOT, "username": "My Bot", "private": False},
    errors={409: error_reply("A bot with this id exists.")},
)
_account(
    "PATCH",
    "/v1/bot/{botId}",
    "patchBot",
    "Change one of the calling account's bots",
    (200, Reply(description="The bot.", body=s.BotView)),
    params=(BOT,),
    body=bodies.BotPatch,
    example={"username": "Renamed"},
    errors=_MANAGED,
)
_account(
    "GET",
    "/v1/account",
    "getAccount",
    "The calling account and its bots",
    (200, Reply(description="The account.", body=s.AccountWithBots)),
)
_account(
    "POST",
    "/v1/account/key/regenerate",
    "regenerateKey",
    "Replace the account's API key",
    (200, Reply(description="The new key; the old one stops working.", body=s.Token)),
)
_account(
    "GET",
    "/bots/{botId}/log",
    "getBotLog",
    "The bot's change log (DBots)",
    (
        200,
        Reply(
            description="One page of changes.", body=s.BotLog, headers={"X-Total-Count": "Changes in all."}
        ),
    ),
    params=(
        BOT,
        Param(name="page", type=Annotated[int, Meta(ge=1, le=1_000_000)]),
        Param(name="limit", type=Annotated[int, Meta(ge=1, le=100)]),
    ),
    tags=("dbots", "accounts"),
    errors=_MANAGED,
)
_account(
    "POST",
    "/bots/{botId}/keys/regen",
    "regenerateBotToken",
    "Rotate this bot's own ingest token (DBots); the account key and other keys stay valid",
    (200, Reply(description="The bot's new token.", body=s.BotToken)),
    params=(BOT,),
    tags=("dbots", "accounts"),
    errors={**_MANAGED, 429: error_reply("Too many registry changes this minute.", retry=True)},
)
_account(
    "GET",
    "/bots/{botId}/keys/regen",
    "regenerateBotTokenByGet",
    "Refused: rotating a token changes state, use POST",
    (405, error_reply("Use POST; `Allow: POST`.")),
    params=(BOT,),
    tags=("dbots", "accounts"),
)
_KEY_ERRORS = {
    403: error_reply("The key lacks the manage scope, or the account has as many keys as it may."),
    429: error_reply("Too many registry changes this minute.", retry=True),
}
_account(
    "GET",
    "/v1/account/keys",
    "listKeys",
    "The account's keys (never the keys themselves)",
    (200, Reply(description="The keys, the account key first.", body=s.KeyList)),
    errors=_KEY_ERRORS,
)
_account(
    "POST",
    "/v1/account/keys",
    "createKey",
    "Create a named key with a scope (ingest, read or manage)",
    (201, Reply(description="The key, shown this once.", body=s.CreatedKey)),
    body=bodies.KeyCreate,
    example={"name": "bot config", "scope": "ingest"},
    errors={**_KEY_ERRORS, 404: error_reply("No such bot among the account's.")},
)
_account(
    "DELETE",
    "/v1/account/keys/{keyId}",
    "revokeKey",
    "Revoke one key; the others keep working",
    (200, Reply(description="Revoked.", body=s.Revoked)),
    params=(Param(name="keyId", where="path", type=s.KeyId),),
    errors={**_KEY_ERRORS, 404: error_reply("No such key.")},
)
_account(
    "GET",
    "/bots/{botId}/api",
    "getBotApi",
    "The bot's API settings (DBots)",
    (200, Reply(description="The settings.", body=s.ApiView)),
    params=(BOT,),
    tags=("dbots", "accounts"),
    errors=_MANAGED,
)
_account(
    "PATCH",
    "/bots/{botId}/api",
    "patchBotApi",
    "Change the bot's vote webhook (DBots)",
    (200, Reply(description="The settings.", body=s.ApiView)),
    params=(BOT,),
    body=bodies.WebhookPatch,
    example={"voteWebhookURL": "https://example.com/votes"},
    tags=("dbots", "accounts"),
    errors=_MANAGED,
)


# --- alerts (query/alerts_api.py, docs/alerts.md) ------------------------------------------------------
_READ_OR_MANAGE = error_reply("The key lacks the read scope (an ingest key).")
_MANAGE_ONLY = error_reply("The key lacks the manage scope.")
_BUSY = error_reply("Too many registry changes this minute.", retry=True)
_NO_RULE = error_reply("No such rule, or it is another account's.")
RULE = Param(name="id", where="path", type=s.RuleId, example="alr_0123456789abcdef")
DESTINATION = Param(name="id", where="path", type=bodies.DestinationId, example="dst_0123456789abcdef")
_account(
    "POST",
    "/v1/alerts/destinations",
    "createAlertDestination",
    "Add a destination: a Discord channel webhook or a signed webhook of yours",
    (
        201,
        Reply(
            description="The destination; a webhook's `secret`, shown this once.", body=s.CreatedDestination
        ),
    ),
    body=bodies.DestinationCreate,
    example={"name": "ops", "type": "webhook", "url": "https://hooks.example.com/botpulse"},
    tags=("alerts",),
    errors={
        400: error_reply(
            "The body is not valid; `field` names it (`url` for one the SSRF rules refuse: such a "
            "refusal counts against the registry writes too)."
        ),
        403: _MANAGE_ONLY,
        409: error_reply("The account has as many destinations as it may (50)."),
        429: _BUSY,
    },
)
_account(
    "GET",
    "/v1/alerts/destinations",
    "listAlertDestinations",
    "The account's destinations (Discord URLs without their token, never a secret)",
    (200, Reply(description="The destinations, oldest first.", body=s.DestinationList)),
    tags=("alerts",),
    errors={403: _READ_OR_MANAGE},
)
_account(
    "DELETE",
    "/v1/alerts/destinations/{id}",
    "deleteAlertDestination",
    "Remove a destination no rule uses",
    (204, Reply(description="Removed.")),
    params=(DESTINATION,),
    tags=("alerts",),
    errors={
        403: _MANAGE_ONLY,
        404: error_reply("No such destination, or it is another account's."),
        409: error_reply("A rule still uses it."),
        429: _BUSY,
    },
)
_account(
    "POST",
    "/v1/alerts/rules",
    "createAlertRule",
    "Add a rule watching one of the account's bots (offline, threshold or change)",
    (201, Reply(description="The rule with its state.", body=s.RuleWithState)),
    body=bodies.RuleCreate,
    example={
        "name": "down",
        "bot": EXAMPLE_BOT,
        "kind": "offline",
        "minutes": 5,
        "destinations": ["dst_0123456789abcdef"],
    },
    tags=("alerts",),
    errors={
        400: error_reply(
            "The body is not valid; `field` names it (`bot` for a bot the account does not manage, "
            "whether or not it exists)."
        ),
        403: _MANAGE_ONLY,
        409: error_reply("The account has as many rules as it may (500)."),
        429: _BUSY,
    },
)
_account(
    "GET",
    "/v1/alerts/rules",
    "listAlertRules",
    "The account's rules",
    (200, Reply(description="The rules, oldest first.", body=s.RuleList)),
    params=(Param(name="bot", type=bodies.BotId, description="Only this bot's rules."),),
    tags=("alerts",),
    errors={403: _READ_OR_MANAGE},
)
_account(
    "GET",
    "/v1/alerts/rules/{id}",
    "getAlertRule",
    "One rule and its state (firing or ok, the open incident)",
    (200, Reply(description="The rule with its state.", body=s.RuleWithState)),
    params=(RULE,),
    tags=("alerts",),
    errors={403: _READ_OR_MANAGE, 404: _NO_RULE},
)
_account(
    "PATCH",
    "/v1/alerts/rules/{id}",
    "patchAlertRule",
    "Change a rule (any field but `bot` and `kind`)",
    (200, Reply(description="The rule with its state.", body=s.RuleWithState)),
    params=(RULE,),
    body=bodies.RuleChanges,
    example={"muted": True},
    tags=("alerts",),
    errors={403: _MANAGE_ONLY, 404: _NO_RULE, 429: _BUSY},
)
_account(
    "DELETE",
    "/v1/alerts/rules/{id}",
    "deleteAlertRule",
    "Remove a rule (an open incident is dropped without a notification)",
    (204, Reply(description="Removed.")),
    params=(RULE,),
    tags=("alerts",),
    errors={403: _MANAGE_ONLY, 404: _NO_RULE, 429: _BUSY},
)
_account(
    "GET",
    "/v1/alerts/rules/{id}/deliveries",
    "getAlertRuleDeliveries",
    "The rule's newest delivery attempts, newest first (the last 200 are kept)",
    (200, Reply(description="The delivery log.", body=s.DeliveryLog)),
    params=(RULE, Param(name="limit", type=Annotated[int, Meta(ge=1, le=200)], description="Default 50.")),
    tags=("alerts",),
    errors={403: _READ_OR_MANAGE, 404: _NO_RULE},
)


# --- operator ---------------------------------------------------------------------------------------
_ADMIN_SHAPES: dict[str, tuple[int, Any, tuple[Param, ...]]] = {
    # operation -> (success status, answer, parameters); the body is the operation's own struct
    # (`Operation.body`, the one its handler decodes with)
    "accounts.create": (201, s.CreatedAccount, ()),
    "accounts.list": (200, s.AccountList, ()),
    "keys.regenerate": (200, s.AccountToken, (Param(name="accountId", where="path", type=s.AccountId),)),
    "keys.list": (200, s.KeyList, (Param(name="accountId", where="path", type=s.AccountId),)),
    "keys.revoke": (
        200,
        s.Revoked,
        (
            Param(name="accountId", where="path", type=s.AccountId),
            Param(name="keyId", where="path", type=s.KeyId),
        ),
    ),
    "limits.get": (200, s.AccountLimits, (Param(name="accountId", where="path", type=s.AccountId),)),
    "limits.set": (200, s.AccountLimits, (Param(name="accountId", where="path", type=s.AccountId),)),
    "bots.list": (200, s.BotList, (Param(name="account", type=str, description="Only this account's."),)),
    "bots.add": (201, s.BotView, ()),
    "bots.set": (200, s.BotView, (BOT,)),
    "bots.remove": (200, s.Removed, (BOT,)),
    "registry.sync": (200, s.Synced, ()),
}
for name, operation in OPERATIONS.items():
    status, answer, params = _ADMIN_SHAPES[name]
    body = operation.body
    replies = {
        status: Reply(description="Done.", body=answer),
        400: error_reply("The body or a parameter is not valid; `field` names it."),
        401: error_reply("No operator token, or a wrong one."),
        403: error_reply("The admin API is disabled (BOTPULSE_ADMIN_TOKEN is not set)."),
        404: error_reply("No such account or bot."),
        409: error_reply("It exists already."),
        413: error_reply("The body is too large."),
        503: error_reply("The registry is busy or unreachable; try again (`Retry-After`).", retry=True),
    }
    SPECS.route(
        method=operation.method,
        path=operation.path,
        operation_id="admin" + "".join(part.capitalize() for part in name.split(".")),
        summary=f"Operator: {name.replace('.', ' ')}",
        tags=("admin",),
        admin=True,
        params=params,
        body=body,
        body_required=body is not None,
        replies=replies,
        security=ADMIN,
    )

HEALTHZ, READYZ = health_routes(SPECS, "query", "ClickHouse answers a query.")
