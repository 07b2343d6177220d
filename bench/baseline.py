"""The reference server: a bare aiohttp handler answering 204, run with the gateway's process
model (uvloop when installed, N processes sharing the port with SO_REUSEPORT, no access log),
so the gateway/baseline ratio measures what the gateway's own work costs."""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys

from aiohttp import web

from botpulse.runtime.processes import spawn_child


async def no_content(request: web.Request) -> web.Response:
    await request.read()  # the gateway reads the body too; leaving it unread would flatter the baseline
    return web.Response(status=204, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/bot/{botId}", no_content)
    app.router.add_get("/healthz", healthz)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m botpulse.bench.baseline")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--reuseport", action="store_true")
    args = parser.parse_args(argv)
    reuse = args.reuseport or args.workers > 1
    children = [
        spawn_child(
            [sys.executable, "-m", "botpulse.bench.baseline", "--port", str(args.port), "--reuseport"]
        )
        for _ in range(args.workers - 1)
    ]
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", args.port))
    try:
        web.run_app(build_app(), sock=sock, print=None, access_log=None, shutdown_timeout=5)
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            child.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
