"""Datagram-compatible uptime routes under `/api/v1`: an account's key (`Authorization` or
`?secret=`) reads the hourly-rounded uptime and the connection status of the bots it owns, one
(`partner_node_id`) or many (`partner_node_id[]`) at a time. `add_routes` is called by
`query.app.build_app`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from botpulse.query import params
from botpulse.query.params import BadParam
from botpulse.query.resources import ANSWERS, REGISTRY, SETTINGS, STORE
from botpulse.query.responses import error, json_response
from botpulse.query.uptime import (
    EPOCH_MS,
    FAR_FUTURE_MS,
    HOUR_MS,
    connection_status,
    floor_hour,
    last_seen,
    now_ms,
    uptimes,
)
from botpulse.registry.keys import request_key
from botpulse.schemas.registry import INGEST

TWO_WEEKS_MS = 14 * 24 * HOUR_MS
MAX_UPTIME_IDS = 100


class _DatagramError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


async def _datagram_account(request: web.Request) -> str:
    key = request_key(request.headers, request.query, "secret")
    if not key:
        raise _DatagramError(401, "Missing API key (Authorization header or secret parameter)")
    found = await request.app[REGISTRY].credential(key)
    if found is None:
        raise _DatagramError(401, "Invalid API key")
    if found.scope == INGEST:
        raise _DatagramError(403, "This API key has the ingest scope; reading needs the read scope", "scope")
    request.app[REGISTRY].used(found.usage_id)
    return found.account_id


def _ids(request: web.Request, many: bool) -> list[str]:
    if not many:
        return [params.bot_id("partner_node_id", request.query.get("partner_node_id"))]
    raw = request.query.getall("partner_node_id[]", []) or request.query.getall("partner_node_id", [])
    if not raw:
        raise BadParam("partner_node_id[]", "partner_node_id[] is required")
    if len(raw) > MAX_UPTIME_IDS:
        raise BadParam("partner_node_id[]", f"at most {MAX_UPTIME_IDS} partner_node_id[] values")
    return [params.bot_id("partner_node_id[]", v) for v in raw]


def _hour_range(request: web.Request) -> tuple[int, int]:
    q = request.query
    if not q.get("started_at") or not q.get("ended_at"):
        return EPOCH_MS, FAR_FUTURE_MS
    start = floor_hour(params.timestamp_ms("started_at", q["started_at"]))
    end = floor_hour(params.timestamp_ms("ended_at", q["ended_at"]))
    if start > end:
        raise BadParam("started_at", "started_at must not be after ended_at")
    # Compared at hour precision too, so "exactly two weeks ago" is accepted after rounding.
    if start < floor_hour(now_ms() - TWO_WEEKS_MS):
        raise BadParam("started_at", "started_at may reach back at most 2 weeks")
    return start, end


async def _owned(request: web.Request, account: str, ids: list[str]) -> set[str]:
    registry = request.app[REGISTRY]
    found = await asyncio.gather(*(registry.bot(i) for i in dict.fromkeys(ids)))
    return {b.id for b in found if b is not None and b.account_id == account}


def _datagram(
    handler: Callable[[web.Request, str, list[str], set[str]], Awaitable[Any]], many: bool
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def wrapped(request: web.Request) -> web.Response:
        try:
            ids = _ids(request, many)
            account = await _datagram_account(request)
            owned = await _owned(request, account, ids)
            if not many and ids[0] not in owned:
                return error(404, "Bot not found", "partner_node_id")
            data = await handler(request, account, ids, owned)
        except BadParam as exc:
            return error(400, exc.message, exc.field)
        except _DatagramError as exc:
            return error(exc.status, exc.message, exc.field)
        return json_response({"data": data if many else data[0]})

    return wrapped


_NOT_FOUND = {"message": "Bot not found"}


async def _uptime_data(request: web.Request, account: str, ids: list[str], owned: set[str]) -> Any:
    start, end = _hour_range(request)
    window_ms = request.app[SETTINGS].heartbeat_window_ms
    values = await uptimes(request.app[STORE], [i for i in ids if i in owned], start, end, window_ms)
    return [
        {"uptime": values[i], "partner_node_id": i} if i in owned
        else {"uptime": None, "partner_node_id": i, **_NOT_FOUND}
        for i in ids
    ]  # fmt: skip


async def _detail_data(request: web.Request, account: str, ids: list[str], owned: set[str]) -> Any:
    store = request.app[STORE]
    window_ms = request.app[SETTINGS].heartbeat_window_ms
    mine = [i for i in dict.fromkeys(ids) if i in owned]

    async def whole() -> tuple[dict[str, int], dict[str, int]]:
        return await asyncio.gather(  # type: ignore[return-value]
            uptimes(store, mine, EPOCH_MS, FAR_FUTURE_MS, window_ms), last_seen(store, mine)
        )

    # Uptime over the whole history, cached for a few seconds (BOTPULSE_QUERY_CACHE_S).
    totals, seen = await request.app[ANSWERS].get(("details", tuple(mine)), whole)
    return [
        {
            "connection_status": connection_status(seen.get(i), window_ms),
            "total_uptime": totals[i],
            "partner_node_id": i,
        }
        if i in owned
        else {"connection_status": None, "total_uptime": None, "partner_node_id": i, **_NOT_FOUND}
        for i in ids
    ]


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/uptime", _datagram(_uptime_data, many=False))
    app.router.add_get("/api/v1/uptimes", _datagram(_uptime_data, many=True))
    app.router.add_get("/api/v1/partner/detail", _datagram(_detail_data, many=False))
    app.router.add_get("/api/v1/partner/details", _datagram(_detail_data, many=True))
