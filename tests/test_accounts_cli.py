"""The operator CLI end to end: through a running stack's admin API (found from `stack.json`,
as `botpulse dev` writes it, or from BOTPULSE_ADMIN_URL), and directly against the store."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from collections.abc import AsyncIterator, Iterator

import msgspec
import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer

from botpulse import accounts_cli
from botpulse.cli import main
from botpulse.query import app as query_app
from botpulse.registry import catalog
from botpulse.registry.index import RegistryCache
from botpulse.stack import StackInfo, stack_file

ADMIN = "cli-admin-Hq7Zp2Lw9Xk4Vn6Rb3Ty8Uc1Jm5Fd0Gs"
_ENV = (
    "BOTPULSE_ADMIN_URL",
    "BOTPULSE_ADMIN_TOKEN",
    "CLICKHOUSE_URL",
    "REDIS_URL",
    "BOTPULSE_CLICKHOUSE_DATABASE",
)


@pytest.fixture
async def stack(make_settings, store, redis, monkeypatch) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    """A query service registered as the running dev stack of a data dir the CLI is pointed at."""
    settings = make_settings(admin_token=ADMIN)
    client = TestClient(TestServer(query_app.build_app(settings, store), host="127.0.0.1"))
    await client.start_server()
    info = StackInfo(
        os.getpid(), "http://127.0.0.1:1", str(client.make_url("")), settings.redis_url or "", ADMIN
    )
    stack_file(settings).write_bytes(msgspec.json.encode(info))
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BOTPULSE_DATA_DIR", settings.data_dir)
    monkeypatch.setenv("BOTPULSE_LOG_LEVEL", "warning")
    yield client
    await client.close()


@pytest.fixture(autouse=True)
def _keep_logging_config() -> Iterator[None]:
    """The CLI configures structlog for the whole process; put the test run's config back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def _main(argv: list[str]) -> tuple[int, str, str]:
    # Our own never-closed streams, not pytest's capture: structlog keeps the stream the CLI
    # configured it with, and a closed one would break every later log call in this process.
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


async def _cli(capsys, *argv: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(_main, list(argv))


def _key(out: str) -> str:
    return next(word for word in out.split() if word.startswith("DS-") and not word.endswith("…"))


async def test_cli_through_the_running_stack(stack, capsys, store, redis, settings):
    assert isinstance(accounts_cli.backend_for(accounts_cli.load_settings()), accounts_cli.HttpBackend)
    code, out, _ = await _cli(capsys, "accounts", "create", "--name", "Fleet One")
    assert code == 0
    key = _key(out)
    account = out.split()[1]
    assert account.startswith("acc_")
    assert await RegistryCache(redis).account_for_key(key) == account

    code, out, err = await _cli(
        capsys,
        "bots",
        "add",
        "900",
        "--account",
        account,
        "--username",
        "Ops Bot",
        "--private",
        "--slots",
        "4",
    )
    assert code == 0, err
    bot = await catalog.get_bot(store, "900")
    assert bot is not None and (bot.account_id, bot.username, bot.private, bot.custom_slots) == (
        account,
        "Ops Bot",
        True,
        4,
    )

    code, out, err = await _cli(capsys, "bots", "add", "900", "--account", account, "--username", "again")
    assert code == 1 and "already exists" in err and "(field: id)" in err
    code, out, err = await _cli(
        capsys, "bots", "add", "901", "--account", account, "--username", "x", "--avatar", "ftp://x"
    )
    assert code == 1 and "(field: avatar)" in err

    code, out, err = await _cli(
        capsys, "bots", "set", "900", "--public", "--avatar", "https://cdn.example/a.png", "--json"
    )
    assert code == 0, err
    shown = msgspec.json.decode(out)
    assert (shown["private"], shown["avatar"]) == (False, "https://cdn.example/a.png")
    assert (await RegistryCache(redis).bot("900")).private is False  # type: ignore[union-attr]

    code, out, _ = await _cli(capsys, "accounts", "list")
    assert code == 0 and account in out and "bots=1" in out and key not in out

    code, out, _ = await _cli(capsys, "keys", "regenerate", account)
    assert code == 0
    new_key = _key(out)
    assert new_key != key
    cache = RegistryCache(redis)
    assert await cache.account_for_key(key) is None
    assert await cache.account_for_key(new_key) == account

    await redis.flushall()
    code, out, _ = await _cli(capsys, "registry", "sync")
    assert code == 0 and "1 bots" in out
    assert await RegistryCache(redis).account_for_key(new_key) == account

    code, out, _ = await _cli(capsys, "bots", "remove", "900")
    assert code == 0 and "removed" in out
    assert await catalog.get_bot(store, "900") is None
    code, _, err = await _cli(capsys, "bots", "remove", "900")
    assert code == 1 and "Not found" in err

    rows = await store.query("SELECT by, field FROM audit_log WHERE bot_id = '900' ORDER BY at")
    assert {by for by, _ in rows} == {"operator"}
    assert ("operator", "deleted") in rows


async def test_cli_admin_url_and_token(stack, capsys, monkeypatch):
    monkeypatch.setenv("BOTPULSE_DATA_DIR", "/nonexistent-botpulse-dir")
    monkeypatch.setenv("BOTPULSE_ADMIN_URL", str(stack.make_url("")))
    monkeypatch.setenv("BOTPULSE_ADMIN_TOKEN", "wrong-Qa1Ws2Ed3Rf4Tg5Yh6Uj7Ik8Ol9P0zXc")
    code, _, err = await _cli(capsys, "accounts", "list")
    assert code == 1 and "Unauthorized" in err
    monkeypatch.setenv("BOTPULSE_ADMIN_TOKEN", ADMIN)
    code, out, _ = await _cli(capsys, "accounts", "create", "--name", "via url")
    assert code == 0 and _key(out)
    monkeypatch.setenv("BOTPULSE_ADMIN_URL", "http://127.0.0.1:9")  # nothing listens on discard
    code, _, err = await _cli(capsys, "accounts", "list")
    assert code == 1 and "cannot reach" in err


async def test_cli_direct_against_the_store(settings, store, redis, capsys, monkeypatch, tmp_path):
    """No stack running and no admin URL: the CLI opens ClickHouse and Redis itself."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BOTPULSE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CLICKHOUSE_URL", settings.clickhouse_url)
    monkeypatch.setenv("BOTPULSE_CLICKHOUSE_DATABASE", settings.clickhouse_database)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("BOTPULSE_LOG_LEVEL", "warning")
    assert isinstance(accounts_cli.backend_for(accounts_cli.load_settings()), accounts_cli.DirectBackend)

    code, out, err = await _cli(capsys, "accounts", "create", "--name", "direct")
    assert code == 0, err
    key, account = _key(out), out.split()[1]
    code, _, err = await _cli(capsys, "bots", "add", "bot.one", "--account", account, "--username", "Direct")
    assert code == 0, err
    cache = RegistryCache(redis)
    assert await cache.account_for_key(key) == account
    assert (await cache.bot("bot.one")).account_id == account  # type: ignore[union-attr]
    code, _, err = await _cli(capsys, "bots", "set", "bot.one", "--username", "x" * 300)
    assert code == 1 and "(field: username)" in err
    code, out, _ = await _cli(capsys, "bots", "list", "--account", account)
    assert code == 0 and "bot.one" in out and "'Direct'" in out

    # Without Redis: ClickHouse only, and the next ensure_index picks the change up.
    monkeypatch.delenv("REDIS_URL")
    code, _, err = await _cli(capsys, "bots", "set", "bot.one", "--private")
    assert code == 0 and "REDIS_URL is not set" in err
    assert (await RegistryCache(redis).bot("bot.one")).private is False  # type: ignore[union-attr]
    assert await catalog.ensure_index(store, redis, settings.stream_partitions) is True
    assert (await RegistryCache(redis).bot("bot.one")).private is True  # type: ignore[union-attr]


async def test_cli_keys_and_limits(stack, capsys, redis):
    code, out, _ = await _cli(capsys, "accounts", "create", "--name", "Limited")
    assert code == 0
    key, account = _key(out), out.split()[1]
    resp = await stack.post(
        "/v1/account/keys", json={"name": "ci", "scope": "read"}, headers={"Authorization": key}
    )
    made = await resp.json()
    code, out, _ = await _cli(capsys, "keys", "list", account)
    assert (
        code == 0
        and f"{made['id']}  'ci'  scope=read" in out
        and "account  'account key'  scope=manage" in out
    )
    assert made["key"] not in out and key not in out
    code, out, err = await _cli(capsys, "keys", "revoke", account, made["id"])
    assert code == 0 and f"key {made['id']} revoked" in out, err
    assert await RegistryCache(redis).credential(made["key"]) is None
    code, _, err = await _cli(capsys, "keys", "revoke", account, made["id"])
    assert code == 1 and "No key" in err

    code, out, err = await _cli(capsys, "accounts", "limits", account, "--bots", "3", "--posts-per-min", "99")
    assert code == 0, err
    assert "bots=3 (account override)" in out and "postsPerMin=99 (account override)" in out
    assert "keys=25\n" in out
    code, out, _ = await _cli(capsys, "accounts", "limits", account, "--bots", "default")
    assert code == 0 and "bots=100\n" in out and "postsPerMin=99 (account override)" in out
    code, _, err = await _cli(capsys, "accounts", "limits", account, "--bots", "0")
    assert code == 1 and "(field: bots)" in err
