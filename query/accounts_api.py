"""Account API routes served by the query service (accounts issue): bot registration, DBots-style
log/keys/api endpoints and the operator's admin endpoints. `add_routes` is called by
`query.app.build_app`."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    """Filled in by the accounts work; kept as the single place these routes are registered."""
