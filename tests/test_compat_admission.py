"""A post made by one shard (`shardId`, DisStat or DBots shape) goes through the same admission as
every other post, on real parts: the key's scope and bots (403 naming them), the bot's and the
account's rate (429), the custom-event type slots of its entries, the sampled Redis memory and
Redis's own error replies (503 naming the reason, never 500). A refused shard post leaves no trace:
nothing in the stream, the shard's values not stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from ingest_server import GatewayServer
from test_ingest import BOT, seed
from test_ingest_faults import assert_refused, servers, until  # noqa: F401 - servers: a fixture

from botpulse.ingest import app as ingest_app
from botpulse.ingest.admission import SAMPLE_S
from botpulse.query import app as query_app
from botpulse.schemas.stream import (
    FIELD,
    CustomPayload,
    entry_events,
    partition_of,
    shard_state_key,
    stream_key,
)

ADMIN = "compat-admission-Qp4Wm7Zx1Ns3Lk6Jh9Gf2Dv5Bc8Rt0Y"
OPERATOR = {"Authorization": f"Bearer {ADMIN}"}
# One shard's post in each shape the gateway takes it in.
SHARD_POSTS = (
    ("/v1/bot/{bot}", {"guilds": 10, "shardId": 0, "status": "ready"}),
    ("/bots/{bot}/stats", {"guildCount": 10, "shardId": 0, "shardCount": 2}),
)


async def _client(app) -> TestClient:  # type: ignore[no-untyped-def]
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def api(make_settings, store, redis) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    client = await _client(query_app.build_app(make_settings(admin_token=ADMIN), store))
    yield client
    await client.close()


async def _account(api: TestClient, name: str, *bots: str) -> dict[str, str]:
    resp = await api.post("/v1/admin/accounts", json={"name": name}, headers=OPERATOR)
    auth = {"Authorization": (await resp.json())["key"]}
    for bot in bots:
        assert (await api.post("/v1/bots", json={"id": bot, "username": "b"}, headers=auth)).status == 201
    return auth


async def _key(api: TestClient, auth: dict[str, str], **body: object) -> dict[str, str]:
    resp = await api.post("/v1/account/keys", json=body, headers=auth)
    assert resp.status == 201, await resp.text()
    return {"Authorization": (await resp.json())["key"]}


async def _trace(redis, bot: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """What a shard post leaves in Redis: stream events (a post's share one entry), fields of the
    bot's shard hash."""
    partition = partition_of(bot, 1)
    entries = await redis.xrange(stream_key(partition))
    events = sum(len(entry_events(fields[FIELD])) for _, fields in entries)
    return events, await redis.hlen(shard_state_key(partition, bot))


async def test_shard_posts_with_a_key_outside_its_scope_are_refused_naming_it(api, make_settings, redis):
    owner = await _account(api, "owner", "31", "32")
    stranger = await _account(api, "stranger", "41")
    read = await _key(api, owner, name="dashboard", scope="read")
    other_bot = await _key(api, owner, name="bot 32 only", scope="ingest", bots=["32"])
    gateway = await _client(ingest_app.build_app(make_settings(stats_rate_burst=100)))
    try:
        for path, body in SHARD_POSTS:
            before = await _trace(redis, "31")
            resp = await gateway.post(path.format(bot="31"), json=body, headers=read)
            assert resp.status == 403, path
            answer = await resp.json()
            assert (answer["scope"], answer["missingScope"]) == ("read", "ingest"), answer
            resp = await gateway.post(path.format(bot="31"), json=body, headers=other_bot)
            assert resp.status == 403, path
            answer = await resp.json()
            assert (answer["scope"], answer["bots"]) == ("ingest", ["32"]), answer
            resp = await gateway.post(path.format(bot="31"), json=body, headers=stranger)
            assert resp.status == 403 and "cannot post for this bot" in (await resp.json())["message"]
            assert await _trace(redis, "31") == before, f"{path}: a refused shard post left a trace"
            # The same post with the right key is taken: the refusals were the key's.
            resp = await gateway.post(path.format(bot="31"), json=body, headers=owner)
            assert resp.status in (200, 204), (path, await resp.text())
        assert (await _trace(redis, "31"))[1] > 0
    finally:
        await gateway.close()


async def test_shard_posts_are_held_to_the_bot_and_account_rates(api, make_settings, redis):
    auth = await _account(api, "rated", "51", "52")
    settings = make_settings(stats_rate_burst=1, stats_rate_interval_s=3600, account_posts_per_min=3)
    gateway = await _client(ingest_app.build_app(settings))
    try:
        post = gateway.post
        assert (await post("/v1/bot/51", json={"guilds": 1, "shardId": 0}, headers=auth)).status == 204
        # The same shard again: that shard's own (stats) rate.
        resp = await post("/v1/bot/51", json={"guilds": 1, "shardId": 0}, headers=auth)
        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
        assert "limit" not in await resp.json()
        # Other shards, another bot, the DBots shape: the account's 3 posts a minute are spent
        # by all of them together, the refused post above included in none.
        assert (await post("/v1/bot/51", json={"guilds": 1, "shardId": 1}, headers=auth)).status == 204
        before = await _trace(redis, "52")
        assert before[1] == 0
        resp = await post("/bots/52/stats", json={"guildCount": 1, "shardId": 0}, headers=auth)
        assert resp.status == 200
        resp = await post("/v1/bot/52", json={"guilds": 1, "shardId": 1}, headers=auth)
        assert resp.status == 429
        body = await resp.json()
        assert (body["limit"], body["max"]) == ("postsPerMin", 3) and "for this account" in body["message"]
        assert int(resp.headers["Retry-After"]) >= 1
        assert (await _trace(redis, "52"))[0] == before[0] + 2  # shard 0's event and the totals
        # Shard 0's values, its rate state and when the totals were written: nothing of shard 1.
        fields = await redis.hkeys(shard_state_key(partition_of("52", 1), "52"))
        assert sorted(fields) == [b"0", b"=last", b"r:0"]
    finally:
        await gateway.close()


async def test_a_shard_posts_entries_take_custom_event_type_slots(api, make_settings, redis):  # type: ignore[no-untyped-def]
    auth = await _account(api, "typed", "61")
    gateway = await _client(ingest_app.build_app(make_settings(custom_event_types=1, stats_rate_burst=100)))
    try:
        custom = [{"type": "a", "value1": "1"}, {"type": "b", "value1": "2"}, {"type": "a", "value1": "3"}]
        body = {"guilds": 1, "shardId": 0, "custom": custom}
        resp = await gateway.post("/v1/bot/61", json=body, headers=auth)
        assert resp.status == 204 and resp.headers[ingest_app.DROPPED_TYPES_HEADER] == "b"
        # The entries kept are those whose own type got a slot, each matched to its type by
        # position in the script's arguments: the two of `a`, in order, and not the one of `b`.
        entries = await redis.xrange(stream_key(partition_of("61", 1)))
        events = [e for _, fields in entries for e in entry_events(fields[FIELD])]
        kept = [(e.payload.type, e.payload.value1) for e in events if isinstance(e.payload, CustomPayload)]
        assert kept == [("a", "1"), ("a", "3")], kept
        # The slot `a` took is the bot's, whichever route fills it next.
        resp = await gateway.post("/v1/bot/61/custom", json={"type": "c"}, headers=auth)
        assert resp.status == 403 and (await resp.json())["limit"] == "customEventTypes"
        assert (await gateway.post("/v1/bot/61/custom", json={"type": "a"}, headers=auth)).status == 200
    finally:
        await gateway.close()


async def _shard_gateway(make_settings, server, **overrides: object) -> tuple[TestClient, str]:  # type: ignore[no-untyped-def]
    _, key, _ = await seed(server.client)
    settings = make_settings(redis_url=server.url, stats_rate_burst=1000, **overrides)
    client = TestClient(GatewayServer(settings))
    await client.start_server()
    return client, key


async def _shard_post(client: TestClient, key: str, shard: int = 0) -> tuple[int, dict[str, str], dict]:  # type: ignore[type-arg]
    body = {"guilds": 3, "shardId": shard}
    resp = await client.post(f"/v1/bot/{BOT}", json=body, headers={"Authorization": key})
    answer = await resp.json() if resp.status != 204 else {}
    return resp.status, dict(resp.headers), answer


async def test_shard_posts_get_503_while_the_sampled_memory_is_over_the_mark(make_settings, servers):  # noqa: F811
    server = await servers()
    client, key = await _shard_gateway(make_settings, server, redis_memory_high_water_pct=90)
    stream, state = stream_key(partition_of(BOT, 1)), shard_state_key(partition_of(BOT, 1), BOT)
    try:
        assert (await _shard_post(client, key))[0] == 204
        length, fields = await server.client.xlen(stream), await server.client.hlen(state)
        used = (await server.client.info("memory"))["used_memory"]
        await server.client.config_set("maxmemory", str(int(used / 0.95)))
        await asyncio.sleep(SAMPLE_S * 3)
        for shard in (1, 2):
            status, headers, body = await _shard_post(client, key, shard)
            assert_refused(status, headers, body, "redis_memory", "memory")
        assert (await server.client.xlen(stream), await server.client.hlen(state)) == (length, fields)
        await server.client.config_set("maxmemory", "0")

        async def accepted() -> bool:
            return (await _shard_post(client, key, 1))[0] == 204

        await until(accepted)
    finally:
        await client.close()


async def test_shard_posts_get_503_naming_the_redis_reply_or_outage_never_500(make_settings, servers):  # noqa: F811
    server = await servers()
    client, key = await _shard_gateway(make_settings, server, redis_memory_high_water_pct=100)
    stream, state = stream_key(partition_of(BOT, 1)), shard_state_key(partition_of(BOT, 1), BOT)
    try:
        assert (await _shard_post(client, key))[0] == 204
        length, fields = await server.client.xlen(stream), await server.client.hlen(state)
        # The sampler stopped: the shard script meets Redis's own OOM reply.
        await client.server.app[ingest_app.ADMISSION].stop()
        used = (await server.client.info("memory"))["used_memory"]
        await server.client.config_set("maxmemory", str(used // 2))
        for shard in (1, 2):
            status, headers, body = await _shard_post(client, key, shard)
            assert_refused(status, headers, body, "redis_oom", "out of memory")
        assert (await server.client.xlen(stream), await server.client.hlen(state)) == (length, fields)
        await server.client.config_set("maxmemory", "0")

        async def accepted() -> bool:
            return (await _shard_post(client, key, 1))[0] == 204

        await until(accepted)
        # Redis gone: a 503 naming it, with Retry-After, never a 500.
        await server.close()
        status, headers, body = await _shard_post(client, key, 2)
        assert status == 503 and int(headers["Retry-After"]) >= 1, (status, body)
        assert body["reason"] in ("redis_unavailable", "registry_not_ready"), body
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("OOM command not allowed when used memory > 'maxmemory'.", "redis_oom"),
        ("READONLY You can't write against a read only replica.", "redis_readonly"),
        ("LOADING Redis is loading the dataset in memory", "redis_busy"),
        ("BUSY Redis is busy running a script.", "redis_busy"),
        ("MISCONF Redis is configured to save RDB snapshots, but it's unable to persist", "redis_misconf"),
    ],
)
def test_error_replies_parsed_by_redis_py_keep_their_reason(reply: str, reason: str) -> None:
    """The shard script runs through redis-py, whose parser turns `OOM …` into an
    OutOfMemoryError without the code in its text; the verdict still names it."""
    from redis._parsers.base import BaseParser

    from botpulse.ingest.admission import error_verdict

    assert error_verdict(BaseParser.parse_error(reply)).reason == reason
