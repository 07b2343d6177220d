"""The gateway's routes as OpenAPI specs (see `runtime/openapi.py`): described here, mounted with
their handlers by `ingest.app.build_app`, served at `/openapi.json` and merged into
`docs/api/openapi.json` (`botpulse openapi`)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from botpulse.runtime.openapi import ACCOUNT_KEY, Param, Reply, RouteSpecs, error_reply, health_routes
from botpulse.schemas.http import (
    CustomEntry,
    DBotsAccepted,
    DBotsBody,
    Empty,
    StatcordAccepted,
    StatcordBody,
    StatcordError,
    StatsBody,
)

SPECS = RouteSpecs(
    "botpulse gateway",
    "Bots post their stats here (DisStat, DBots and Statcord-compatible). Every refusal is JSON "
    "`{message, field}`; see docs/api/ingest.md.",
)

BotIdPath = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
EXAMPLE_BOT = "100000000000000001"
BOT_PARAM = Param(
    name="botId", where="path", type=BotIdPath, description="The bot's id.", example=EXAMPLE_BOT
)

_RETRY = "Seconds to wait before trying again."


def _refusals(*, statcord: bool = False) -> dict[int, Reply]:
    body = StatcordError if statcord else None
    return {
        400: error_reply("The body is not valid; `field` names the input at fault.", body=body),
        401: error_reply("No API key, or an unknown one.", body=body),
        403: error_reply("The key's account does not own this bot.", body=body),
        404: error_reply("No such bot.", body=body),
        413: error_reply("The body is over BOTPULSE_MAX_BODY_BYTES.", body=body),
        429: error_reply("Too many posts for this bot (`Retry-After`).", retry=True, body=body),
        503: error_reply(
            "The backlog is full, or Redis or the registry is unreachable (`Retry-After`).",
            retry=True,
            body=body,
        ),
    }


STATS = SPECS.route(
    method="POST",
    path="/v1/bot/{botId}",
    operation_id="postStats",
    tags=("ingest",),
    summary="Post a bot's stats (DisStat)",
    description="Top-level numeric properties other than the known fields are custom metrics "
    "(`messages` below); aliases `totalRam`/`total_ram`, `cpuUsage`/`cpu_usage`, `ram_usage`, "
    "`customData` are accepted.",
    params=(BOT_PARAM,),
    body=StatsBody,
    security=ACCOUNT_KEY,
    body_example={
        "guilds": 1200,
        "users": 340000,
        "shards": 2,
        "apiPing": 41,
        "ramUsage": 150000000,
        "ramTotal": 400000000,
        "cpu": 7.5,
        "custom": [{"type": "command", "value1": "ping"}],
        "messages": 5123,
    },
    replies={
        204: Reply(
            description="Stored. Custom metrics without a free slot are named in the header.",
            headers={"X-Dropped-Custom-Metrics": "Comma-separated, URL-encoded names that were dropped."},
        ),
        **_refusals(),
    },
)

CUSTOM = SPECS.route(
    method="POST",
    path="/v1/bot/{botId}/custom",
    operation_id="postCustom",
    tags=("ingest",),
    summary="Post one custom-graph entry (DisStat)",
    params=(BOT_PARAM,),
    body=CustomEntry,
    security=ACCOUNT_KEY,
    body_example={"type": "command", "value1": "help"},
    replies={200: Reply(description="Stored.", body=Empty, example={}), **_refusals()},
)

DBOTS = SPECS.route(
    method="POST",
    path="/bots/{botId}/stats",
    operation_id="postDBotsStats",
    tags=("dbots", "ingest"),
    summary="Post a bot's stats (DBots shape)",
    params=(BOT_PARAM,),
    body=DBotsBody,
    security=ACCOUNT_KEY,
    body_example={"guildCount": 1200, "shardCount": 2, "userCount": 340000},
    replies={
        200: Reply(description="Stored.", body=DBotsAccepted, example={"guildCount": 1200}),
        **_refusals(),
    },
)

STATCORD = SPECS.route(
    method="POST",
    path="/v3/stats",
    operation_id="postStatcordStats",
    tags=("statcord", "ingest"),
    summary="Post a bot's stats (Statcord v3)",
    description="The bot id and the account's key travel in the body (`id`, `key`; a "
    "`statcord.com-` prefix on the key is ignored), as statcord.js and statcord.py send them.",
    body=StatcordBody,
    body_example={
        "id": EXAMPLE_BOT,
        "key": "statcord.com-DS-…",
        "servers": "1200",
        "users": "340000",
        "active": [],
        "commands": "17",
        "popular": [{"name": "help", "count": "5"}],
        "memactive": "150000000",
        "memload": "37.5",
        "cpuload": "7.5",
        "bandwidth": "0",
    },
    replies={
        200: Reply(
            description="Stored.",
            body=StatcordAccepted,
            example={"error": False, "message": "Stats posted"},
            headers={"X-Dropped-Custom-Metrics": "Comma-separated, URL-encoded names that were dropped."},
        ),
        **_refusals(statcord=True),
    },
)

HEALTHZ, READYZ = health_routes(SPECS, "gateway", "Redis answers a PING.")
