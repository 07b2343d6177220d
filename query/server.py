"""Run the query service (optionally with an in-process worker, for embedded chDB)."""

from __future__ import annotations

from aiohttp import web

from query.app import build_app
from runtime.clickhouse import Store
from runtime.logs import get_logger
from runtime.migrations import migrate
from runtime.settings import Settings

log = get_logger(__name__)


def serve(settings: Settings, *, with_worker: bool = False) -> int:
    store = Store(settings)
    try:
        migrate(store)
        log.info(
            "query service listening",
            url=f"http://{settings.query_listen}:{settings.query_port}{settings.query_prefix}",
            with_worker=with_worker,
        )
        run(build_app(settings, store, with_worker=with_worker), settings)
    finally:
        store.close()
    return 0


def run(app: web.Application, settings: Settings) -> None:
    """Serve the query app until SIGTERM/SIGINT; the in-process worker (if any) gets 10 s to
    flush and acknowledge while aiohttp shuts down."""
    web.run_app(
        app,
        host=settings.query_listen,
        port=settings.query_port,
        print=None,
        access_log=None,
        shutdown_timeout=10,
    )
