"""The dashboard: sign-in, My bots, bot pages, settings, status pages, SVG badges and export,
served by the query service (`add_routes`, called from `query.app.build_app`). See
docs/dashboard.md."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    # Imported here: the pages use `query.app`'s bot records, and `query.app` imports this package.
    from botpulse.query.dashboard import pages

    pages.add_routes(app)
