"""The published `disstat` Python client (from PyPI, unmodified; only its base URL is pointed at
an in-process gateway) posts stats, custom-graph data and commands; the stream holds exactly
what it sent."""

from __future__ import annotations

import asyncio
import builtins
import typing
from types import SimpleNamespace

import pytest
from ingest_server import GatewayServer

from botpulse.registry import index
from botpulse.registry.catalog import Bot, create_account, now, write_bot
from botpulse.schemas.stream import (
    CustomPayload,
    StatsPayload,
    StreamEvent,
    entry_events,
    partition_of,
    stream_key,
)


def _import_disstat():  # type: ignore[no-untyped-def]
    # disstat 1.0.3's types.py names `NotRequired` in a TypedDict body but imports it only under
    # TYPE_CHECKING, so importing it fails on every Python. Lend the name for the import only;
    # the client's code runs unmodified.
    builtins.NotRequired = typing.NotRequired  # type: ignore[attr-defined]
    try:
        import disstat.client
    finally:
        del builtins.NotRequired  # type: ignore[attr-defined]
    return disstat


disstat = _import_disstat()

BOT_ID = 987654321098765432  # a Discord snowflake: above 2^53


class FakeDiscordClient:
    """The few attributes of a discord.py client that disstat reads (there is no Discord here)."""

    def __init__(self) -> None:
        self.user = SimpleNamespace(id=BOT_ID)
        self.guilds = [object()] * 7
        self.users = [object()] * 300
        self.intents = SimpleNamespace(members=True)
        self.shard_count = 2
        self.latency = 0.042
        self.events: asyncio.Queue[tuple[str, tuple[object, ...]]] = asyncio.Queue()

    def dispatch(self, name: str, *args: object) -> None:
        self.events.put_nowait((name, args))


async def stream(redis, settings) -> list[StreamEvent]:  # type: ignore[no-untyped-def]
    raw = await redis.xrange(stream_key(partition_of(str(BOT_ID), settings.stream_partitions)))
    return [e for _, fields in raw for e in entry_events(fields[b"e"])]


@pytest.fixture
async def client(make_settings, store, redis, monkeypatch):  # type: ignore[no-untyped-def]
    settings = make_settings(stats_rate_burst=10)
    account, key = await create_account(store, redis, "disstat")
    await write_bot(store, redis, Bot(str(BOT_ID), account.id, "Py Bot", None, False, 10, None, now()))
    await redis.set(index.READY_KEY, "1")
    server = GatewayServer(settings)
    await server.start_server()
    monkeypatch.setattr(disstat.client, "BASE_URL", str(server.make_url("/v1")))
    discord = FakeDiscordClient()
    ds = disstat.DisstatClient(discord, key, auto_post=False)  # type: ignore[arg-type]
    yield ds, discord, settings
    if ds.session:
        await ds.session.close()
    await server.close()


async def test_disstat_post_stats_custom_and_command(client, redis) -> None:  # type: ignore[no-untyped-def]
    ds, discord, settings = client
    answer = await ds.post_stats(
        guilds=12,
        users=3400,
        shards=2,
        api_ping=41,
        ram_usage=150_000_000,
        total_ram=400_000_000,
        cpu_usage=7,
        bandwidth=2048,
        custom_data=[{"type": "votes", "value1": 3, "value2": "top.gg"}],
    )
    assert answer is None  # 204 with an empty JSON body: the client's `.json()` gives None

    assert await ds.post_custom_graph_data({"type": "music", "value1": 5, "value2": None}) == {}

    user_id, guild_id = 345678901234567890, 1234567890123456789
    await ds.post_command("ping", invoker_id=user_id, guild_id=guild_id)
    name, _ = discord.events.get_nowait()
    assert name == "disstat_post_command"  # not "..._error": the client saw success

    events = await stream(redis, settings)
    assert [e.payload for e in events] == [
        StatsPayload(
            guilds=12, users=3400, shards=2, api_ping=41.0, ram_usage=150e6,
            ram_total=400e6, cpu=7.0, bandwidth=2048.0,
        ),
        CustomPayload("votes", "3", "top.gg"),
        CustomPayload("music", "5"),
        CustomPayload("Commands Used", "ping", str(user_id), str(guild_id)),
    ]  # fmt: skip
    assert {e.bot_id for e in events} == {str(BOT_ID)}


async def test_disstat_auto_post_loop(client, redis) -> None:  # type: ignore[no-untyped-def]
    ds, discord, settings = client
    # One round of the client's own loop: it sends snake_case names (cpu_usage, ram_usage,
    # total_ram, api_ping) through post_stats, which renames some of them.
    task = asyncio.create_task(ds._auto_post())
    try:
        name, args = await asyncio.wait_for(discord.events.get(), timeout=30)
    finally:
        task.cancel()
    assert name == "disstat_post", args
    [event] = await stream(redis, settings)
    payload = event.payload
    assert isinstance(payload, StatsPayload)
    assert (payload.guilds, payload.users, payload.shards, payload.api_ping) == (7, 300, 2, 42.0)
    assert payload.cpu is not None and payload.ram_usage and payload.ram_total
    assert payload.custom_metrics == {}
