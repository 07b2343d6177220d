"""`botpulse dev`: the whole stack on the embedded default, in one command.

It starts the bundled valkey-server, opens embedded ClickHouse (chDB) in this process, applies
migrations, makes sure a demo account and bot exist, starts the gateway as a child process and
then serves the query service with an in-process worker and alert evaluator (chDB allows one
engine per process, so they share this one; the gateway never touches ClickHouse).
Ctrl-C stops everything; the next run finds the same data under BOTPULSE_DATA_DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import sys
import time
import urllib.request
from pathlib import Path

import msgspec
from aiohttp import web

from botpulse.runtime.embedded import EmbeddedRedis
from botpulse.runtime.logs import configure_logging, get_logger
from botpulse.runtime.processes import spawn_child
from botpulse.runtime.settings import Settings, load_settings
from botpulse.stack import StackInfo, read_stack, remove_stack, write_stack
from botpulse.supervisor import process_exit, supervisor_of

DEMO_BOT_ID = "100000000000000001"
ANNOUNCE = web.AppKey("announce", asyncio.Task)


class DemoCredentials(msgspec.Struct):
    account_id: str
    bot_id: str
    api_key: str


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dev", help="run the whole stack on the embedded default (chDB + bundled Redis)")
    p.set_defaults(func=run_dev)


def _admin_token(settings: Settings, data_dir: Path) -> str:
    if settings.admin_token:
        return settings.admin_token
    path = data_dir / "admin_token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    path.write_text(token)
    path.chmod(0o600)
    return token


async def _ensure_demo(settings: Settings, store, redis_url: str, data_dir: Path) -> DemoCredentials:  # type: ignore[no-untyped-def]
    """The demo account's key is kept in a 0600 file under the data dir so every `dev` run can
    print a working curl; real accounts' keys are never written anywhere."""
    from botpulse.registry.catalog import Bot, create_account, ensure_index, get_bot, now, write_bot
    from botpulse.runtime.redis import connect

    path = data_dir / "demo.json"
    redis = connect(settings, url=redis_url)
    try:
        await ensure_index(store, redis, settings.stream_partitions)
        if path.exists():
            demo = msgspec.json.decode(path.read_bytes(), type=DemoCredentials)
            if await get_bot(store, demo.bot_id) is not None:
                return demo
        account, key = await create_account(store, redis, "demo")
        bot = Bot(
            DEMO_BOT_ID, account.id, "Demo Bot", None, False, settings.default_custom_slots, None, now()
        )
        await write_bot(store, redis, bot)
        demo = DemoCredentials(account.id, DEMO_BOT_ID, key)
        path.write_bytes(msgspec.json.encode(demo))
        path.chmod(0o600)
        return demo
    finally:
        await redis.aclose()


def _wait_http(url: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.1)
    return False


def run_dev(args: argparse.Namespace) -> int:
    from botpulse.embedded_alerts import with_embedded_alerts
    from botpulse.embedded_worker import with_embedded_worker
    from botpulse.query.app import build_app
    from botpulse.query.server import run
    from botpulse.runtime.clickhouse import Store
    from botpulse.runtime.migrations import migrate

    env_defaults = {"env": "dev"} if not os.environ.get("BOTPULSE_ENV") else {}
    settings = load_settings(roles=("dev",), **env_defaults)
    configure_logging(settings)
    log = get_logger("dev")
    data_dir = Path(settings.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if (running := read_stack(settings)) is not None:
        print(
            f"botpulse: a dev stack already runs here (pid {running.pid}, {running.query_url})",
            file=sys.stderr,
        )
        return 1

    redis: EmbeddedRedis | None = None
    redis_url = settings.redis_url
    if not redis_url:
        redis = EmbeddedRedis(data_dir / "redis").start()
        redis_url = redis.url
    admin_token = _admin_token(settings, data_dir)
    settings = msgspec.structs.replace(settings, redis_url=redis_url, admin_token=admin_token)
    store = Store(settings)
    gateway = None
    try:
        migrate(store)
        demo = asyncio.run(_ensure_demo(settings, store, redis_url, data_dir))
        child_env = dict(
            os.environ,
            REDIS_URL=redis_url,
            CLICKHOUSE_URL=settings.clickhouse_url,
            BOTPULSE_ENV=settings.env,
        )
        child_env.pop("BOTPULSE_ADMIN_TOKEN", None)  # the gateway has no admin routes
        gateway = spawn_child([sys.executable, "-m", "botpulse", "gateway"], env=child_env)
        gateway_url = f"http://{settings.gateway_listen}:{settings.gateway_port}"
        query_url = f"http://{settings.query_listen}:{settings.query_port}{settings.query_prefix}"
        write_stack(settings, StackInfo(os.getpid(), gateway_url, query_url, redis_url, admin_token))
        app = build_app(settings, store)
        supervisor = supervisor_of(app)
        app = with_embedded_alerts(with_embedded_worker(app))

        async def gateway_died() -> str:
            assert gateway is not None
            return await process_exit(gateway)

        async def gateway_start() -> None:
            nonlocal gateway
            # Started from the event loop's thread (the main thread): the child's PDEATHSIG is
            # tied to the thread that forked it.
            gateway = spawn_child([sys.executable, "-m", "botpulse", "gateway"], env=child_env)
            loop = asyncio.get_running_loop()
            if not await loop.run_in_executor(None, _wait_http, f"{gateway_url}/healthz"):
                gateway.kill()
                raise RuntimeError(f"the gateway did not answer {gateway_url}/healthz")

        async def redis_died() -> str:
            assert redis is not None and redis.proc is not None
            return await process_exit(redis.proc)

        async def redis_start() -> None:
            assert redis is not None
            redis.launch()  # the same port and directory: it loads its AOF again
            await asyncio.get_running_loop().run_in_executor(None, redis.wait_ready, 30.0)

        async def supervise(app: web.Application) -> None:
            if redis is not None:
                supervisor.keep("redis", redis_died, redis_start)
            supervisor.keep("gateway", gateway_died, gateway_start)

        app.on_startup.append(supervise)

        async def announce() -> None:
            loop = asyncio.get_running_loop()
            for url in (f"{gateway_url}/healthz", f"{query_url}/healthz"):
                if not await loop.run_in_executor(None, _wait_http, url):
                    log.error("service did not start", url=url)
                    return
            print(_banner(demo, gateway_url, query_url), flush=True)

        async def on_startup(app: web.Application) -> None:
            app[ANNOUNCE] = asyncio.create_task(announce())

        app.on_startup.append(on_startup)
        run(app, settings)
        if supervisor.failure is not None:
            print(f"botpulse: the dev stack stopped: {supervisor.failure}", file=sys.stderr)
            return 1
    finally:
        remove_stack(settings)
        if gateway is not None and gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(10)
            except Exception:
                gateway.kill()
        store.close()
        if redis is not None:
            redis.stop()
    return 0


def _banner(demo: DemoCredentials, gateway_url: str, query_url: str) -> str:
    body = json.dumps({"guilds": 42, "users": 1234, "apiPing": 87, "ramUsage": 52428800})
    return "\n".join(
        [
            "",
            "botpulse dev stack is up",
            f"  gateway (posts)  {gateway_url}",
            f"  query   (reads)  {query_url}",
            f"  dashboard        {query_url}/dashboard (sign in with the API key below)",
            f"  demo bot {demo.bot_id}, API key: {demo.api_key}",
            "",
            "Post a stat:",
            f"  curl -i -X POST {gateway_url}/v1/bot/{demo.bot_id} -H 'Authorization: {demo.api_key}' "
            f"-H 'Content-Type: application/json' -d '{body}'",
            "Read it back (within a second):",
            f"  curl '{query_url}/v1/bot/{demo.bot_id}?returnStats=true&dataPoints=10'",
            "",
            "Ctrl-C stops everything.",
            "",
        ]
    )
