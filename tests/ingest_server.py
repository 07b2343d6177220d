"""The gateway as the ingest tests serve it: aiohttp's TestServer with the gateway's own runner,
so the hot route (`POST /v1/bot/{botId}`, taken before the router) is what the tests exercise."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from botpulse.ingest.app import GatewayRunner, build_app
from botpulse.runtime.settings import Settings


class GatewayServer(TestServer):
    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(build_app(settings), host="127.0.0.1", **kwargs)

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return GatewayRunner(self.app, **kwargs)
