"""Run the query service; the top package may compose more into its app (the embedded worker)."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

from aiohttp import web

from botpulse.query.app import build_app
from botpulse.runtime.clickhouse import Store
from botpulse.runtime.logs import get_logger
from botpulse.runtime.migrations import migrate
from botpulse.runtime.settings import Settings, cannot_listen

log = get_logger(__name__)

_BIND_ERRORS = {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES}


def serve(settings: Settings, *, compose: Callable[[web.Application], web.Application] | None = None) -> int:
    store = Store(settings)
    try:
        migrate(store)
        log.info(
            "query service listening",
            url=f"http://{settings.query_listen}:{settings.query_port}{settings.query_prefix}",
            with_worker=compose is not None,
        )
        app = build_app(settings, store)
        run(compose(app) if compose else app, settings)
    finally:
        store.close()
    return 0


def run(app: web.Application, settings: Settings) -> None:
    """Serve the query app until SIGTERM/SIGINT; the in-process worker (if any) gets 10 s to
    flush and acknowledge while aiohttp shuts down. A request whose client disconnects is
    cancelled (`handler_cancellation`), which kills its ClickHouse read (`Store.query`)."""
    try:
        web.run_app(
            app,
            host=settings.query_listen,
            port=settings.query_port,
            print=None,
            access_log=None,
            shutdown_timeout=10,
            handler_cancellation=True,
        )
    except OSError as exc:
        # Only the bind: a request's failures never leave the app (`backend_errors`).
        if isinstance(exc, socket.gaierror) or exc.errno in _BIND_ERRORS:
            raise cannot_listen("query", settings, exc) from None
        raise
