"""The JSON answers of the query routes: bodies encoded with msgspec, and the error body every
route shares (`message`, plus the offending `field` when one parameter is to blame)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

_encoder = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=_encoder.encode(body), status=status, content_type="application/json", headers=headers
    )


def error(status: int, message: str, field: str | None = None) -> web.Response:
    body = {"message": message} if field is None else {"message": message, "field": field}
    return json_response(body, status=status)
