"""Run the gateway: one process, or N processes sharing the port with SO_REUSEPORT."""

from __future__ import annotations

import contextlib
import signal
import socket

from aiohttp import web

from ingest.app import build_app
from runtime.embedded import spawn_child
from runtime.logs import get_logger
from runtime.settings import Settings

log = get_logger(__name__)


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()


def _socket(settings: Settings) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if settings.gateway_workers > 1:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.gateway_listen, settings.gateway_port))
    sock.set_inheritable(False)
    return sock


def serve(settings: Settings) -> int:
    children = []
    if settings.gateway_workers > 1:
        import os
        import sys

        env = dict(os.environ, BOTPULSE_GATEWAY_WORKERS="1", BOTPULSE_GATEWAY_REUSEPORT="1")
        for _ in range(settings.gateway_workers - 1):
            children.append(
                spawn_child(
                    [sys.executable, "-m", "botpulse", "gateway", "--port", str(settings.gateway_port)],
                    env=env,
                )
            )
    _install_uvloop()
    log.info(
        "gateway listening",
        url=f"http://{settings.gateway_listen}:{settings.gateway_port}",
        processes=settings.gateway_workers,
    )
    try:
        web.run_app(
            build_app(settings),
            sock=_socket(settings),
            print=None,
            access_log=None,
            handle_signals=True,
            shutdown_timeout=5,
        )
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            child.wait(10)
    return 0
