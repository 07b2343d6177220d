"""Shared parts of the alert tests: a receiver on 127.0.0.1 that records what it is sent, a
clock the test moves, posts written into `bot_stats` the way the workers write them, and the
account API to create rules through."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from botpulse.query import app as query_app
from botpulse.registry.catalog import Bot, create_account, now, write_bot
from botpulse.runtime.clickhouse import Store
from botpulse.runtime.settings import Settings

ADMIN = "test-admin-token-0123456789"
T0 = 1_780_000_000_000  # a fixed start for the test clock (ms)


class Clock:
    """Evaluation time, moved by the test (minutes pass without sleeping)."""

    def __init__(self, start: int = T0) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now

    def advance(self, *, minutes: float = 0, seconds: float = 0) -> int:
        self.now += int(minutes * 60_000 + seconds * 1000)
        return self.now


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


@dataclass
class Receiver:
    """Answers each request with the next of `statuses` (then 200) and `headers`, and records it."""

    statuses: list[int] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    redirect_to: str | None = None
    received: list[Received] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(request.path_qs, dict(request.headers), await request.read()))
        if self.redirect_to:
            return web.Response(status=302, headers={"Location": self.redirect_to})
        status = self.statuses.pop(0) if self.statuses else 200
        return web.json_response({"ok": status < 300}, status=status, headers=self.headers)

    async def start(self, host: str = "127.0.0.1") -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{host}:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def alert_settings(make_settings: Callable[..., Settings], **overrides: object) -> Settings:
    """The operator settings that let the local receiver in: http, 127.0.0.1 only, and
    127.0.0.1 as a host `discord` destinations may name."""
    base: dict[str, object] = {
        "admin_token": ADMIN,
        "alerts_allow_http": True,
        "alerts_allow_networks": "127.0.0.1/32",
        "alerts_discord_hosts": "127.0.0.1",
        "alerts_interval_s": 0.2,
        "alerts_lease_s": 1.0,
        "alerts_bot_url": "https://stats.example.com/bots/{bot}",
    }
    return make_settings(**(base | overrides))


async def api_client(settings: Settings, store: Store) -> TestClient:
    client = TestClient(TestServer(query_app.build_app(settings, store), host="127.0.0.1"))
    await client.start_server()
    return client


async def account(api: TestClient, name: str = "owner") -> tuple[str, str]:
    resp = await api.post(
        "/v1/admin/accounts", json={"name": name}, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    return body["id"], body["key"]


async def bot(store: Store, redis: Any, account_id: str, bot_id: str, name: str = "Pulse Bot") -> None:
    avatar = "https://cdn.discordapp.com/avatars/1/abc.png"
    await write_bot(store, redis, Bot(bot_id, account_id, name, avatar, False, 10, None, now()))


async def owner_with_bot(store: Store, redis: Any, bot_id: str) -> tuple[str, str]:
    acc, key = await create_account(store, redis, "owner-" + secrets.token_hex(3))
    await bot(store, redis, acc.id, bot_id)
    return acc.id, key


async def post(store: Store, bot_id: str, at_ms: int, **values: Any) -> None:
    """One stats post as the worker stores it (`bot_stats`; the views feed `bot_latest`)."""
    custom = values.pop("custom", {})
    row = {
        "bot_id": bot_id,
        "ts": dt.datetime.fromtimestamp(at_ms / 1000, dt.UTC),
        "event_id": secrets.token_hex(8),
        "guilds": None,
        "users": None,
        "shards": None,
        "api_ping": None,
        "ram_usage": None,
        "ram_total": None,
        "cpu": None,
        "bandwidth": None,
        "custom": custom,
    } | values
    await store.insert("bot_stats", [list(row.values())], list(row))


async def rule(api: TestClient, key: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = await api.post("/v1/alerts/rules", json=body, headers={"Authorization": key})
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def destination(api: TestClient, key: str, kind: str, url: str) -> dict[str, Any]:
    resp = await api.post(
        "/v1/alerts/destinations",
        json={"name": f"{kind} dest", "type": kind, "url": url},
        headers={"Authorization": key},
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def settle(*ticks: Callable[[], Any], rounds: int = 1) -> None:
    for _ in range(rounds):
        await asyncio.gather(*(t() for t in ticks))
