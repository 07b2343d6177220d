"""Run the gateway: one process, or N processes sharing the port with SO_REUSEPORT.

With `--workers N` the process started by the user serves too and starts N-1 children
(`botpulse gateway --workers 1 --reuseport`), each binding its own SO_REUSEPORT socket so the
kernel spreads connections over them. Children get PR_SET_PDEATHSIG (`spawn_child`), so they
stop with the parent even when it is killed; on a clean stop the parent terminates them.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

from aiohttp import web

from ingest.app import build_app
from runtime.embedded import spawn_child
from runtime.logs import get_logger
from runtime.settings import Settings

log = get_logger(__name__)


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _socket(settings: Settings, reuseport: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.gateway_listen, settings.gateway_port))
    sock.set_inheritable(False)
    return sock


def _spawn_children(settings: Settings, count: int) -> list[subprocess.Popen[bytes]]:
    args = [
        sys.executable, "-m", "botpulse", "gateway",
        "--port", str(settings.gateway_port), "--workers", "1", "--reuseport",
    ]  # fmt: skip
    return [spawn_child(args) for _ in range(count)]


def serve(settings: Settings, *, reuseport: bool = False) -> int:
    """Serve until SIGINT/SIGTERM. `reuseport` is set for the children of a `--workers N` parent."""
    reuseport = reuseport or settings.gateway_workers > 1
    sock = _socket(settings, reuseport)
    children = _spawn_children(settings, settings.gateway_workers - 1)
    loop = _event_loop()
    log.info(
        "gateway listening",
        url=f"http://{settings.gateway_listen}:{settings.gateway_port}",
        processes=settings.gateway_workers,
        loop=type(loop).__module__,
    )
    try:
        web.run_app(
            build_app(settings),
            sock=sock,
            print=None,
            access_log=None,
            handle_signals=True,
            shutdown_timeout=5,
            loop=loop,
        )
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    return 0
