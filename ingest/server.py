"""Run the gateway: one process, or N processes sharing the port with SO_REUSEPORT.

With `--workers N` the process started by the user serves too and starts N-1 children
(`botpulse gateway --workers 1 --reuseport`), each binding its own SO_REUSEPORT socket so the
kernel spreads connections over them. Children get PR_SET_PDEATHSIG (`spawn_child`), so they
stop with the parent even when it is killed; on a clean stop the parent terminates them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import subprocess
import sys

from aiohttp import web

from botpulse.ingest.app import EXPOSITION, GatewayRunner, build_app
from botpulse.runtime import metrics
from botpulse.runtime.logs import get_logger
from botpulse.runtime.processes import spawn_child
from botpulse.runtime.settings import Settings, cannot_listen

log = get_logger(__name__)

GC_YOUNG = 20_000  # allocations between young collections (Python's default: 700)


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
    try:
        sock.bind((settings.gateway_listen, settings.gateway_port))
    except OSError as exc:
        sock.close()
        raise cannot_listen("gateway", settings, exc) from None
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
    child = reuseport
    reuseport = reuseport or settings.gateway_workers > 1
    if settings.gateway_workers > 1 and not metrics.multiprocess():
        raise RuntimeError("several gateway processes need runtime.metrics.use_multiprocess_dir() first")
    sock = _socket(settings, reuseport)
    children = _spawn_children(settings, settings.gateway_workers - 1)
    loop = _event_loop()
    log.info(
        "gateway listening",
        url=f"http://{settings.gateway_listen}:{settings.gateway_port}",
        processes=settings.gateway_workers,
        loop=type(loop).__module__,
    )
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(settings, sock, metrics_listener=not child))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        main.cancel()  # its `finally` stops the server and closes the app's resources
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(main)
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            metrics.process_exited(child.pid)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    return 0


def _quiet_gc() -> None:
    """Keep the collector off the latency tail: a full collection walked every object of start-up
    (aiohttp, redis-py, msgspec, the settings) and stalled the loop long enough to show in the p99
    (figures and how to re-run them: docs/benchmarks.md, "Figures behind choices in the code").
    Frozen, they are never walked again; the young generation is collected less often (a post
    leaves almost no cycles behind, so there is little to find)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, 20, 100)


async def _serve(settings: Settings, sock: socket.socket, *, metrics_listener: bool) -> None:
    """`web.run_app` with the gateway's runner (which takes the hot route before the router):
    SIGINT/SIGTERM raise `GracefulExit` out of the loop, then `serve` cancels this and
    `cleanup` closes the connections (5 s for requests in flight) and the app's resources."""
    app = build_app(settings)
    runner = GatewayRunner(app, access_log=None, handle_signals=True, shutdown_timeout=5)
    await runner.setup()
    stop_metrics = None
    if metrics_listener and settings.gateway_metrics_port:
        # One listener, in the parent: in multiprocess mode it answers for every process.
        stop_metrics = await metrics.start_listener(
            app[EXPOSITION], settings.metrics_listen, settings.gateway_metrics_port, settings.metrics_path
        )
    _quiet_gc()
    try:
        await web.SockSite(runner, sock).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        if stop_metrics is not None:
            await stop_metrics()
