"""The ingest gateway against a real Redis: every endpoint, alias, auth case, limit and bad input.

Each test posts through an in-process gateway (aiohttp TestServer on 127.0.0.1) and reads back
what reached the partition's stream.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from ingest_server import GatewayServer

from botpulse.ingest import app as ingest_app
from botpulse.ingest.app import DROPPED_HEADER
from botpulse.registry import index
from botpulse.registry.keys import generate_key, hash_key
from botpulse.runtime.settings import Settings
from botpulse.schemas.registry import IndexedBot
from botpulse.schemas.stream import (
    CustomPayload,
    StatsPayload,
    StreamEvent,
    custom_slots_key,
    decode_event,
    entry_events,
    partition_of,
    stream_key,
)

BOT = "1001"  # 3 custom-metric slots
OTHER_BOT = "2002"  # belongs to another account


@dataclass
class Env:
    client: TestClient
    key: str
    other_key: str
    account_id: str
    redis: aioredis.Redis
    settings: Settings

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": key or self.key}

    async def entries(self, bot_id: str = BOT) -> list[StreamEvent]:
        partition = partition_of(bot_id, self.settings.stream_partitions)
        raw = await self.redis.xrange(stream_key(partition))
        # Posts appended in one script call share an entry: every event of every entry.
        return [e for _, fields in raw for e in entry_events(fields[b"e"]) if e.bot_id == bot_id]

    async def stream_length(self) -> int:
        total = 0
        for p in range(self.settings.stream_partitions):
            total += await self.redis.xlen(stream_key(p))
        return total


async def seed(redis: aioredis.Redis) -> tuple[str, str, str]:
    """Accounts and bots straight into the registry index: the gateway reads nothing else (and a
    ClickHouse database per test would cost seconds; test_ingest_disstat.py goes through
    `registry.catalog`)."""
    account_id, key = "acc_" + secrets.token_hex(8), generate_key()
    other_id, other_key = "acc_" + secrets.token_hex(8), generate_key()
    await index.put_account_key(redis, account_id, hash_key(key), None)
    await index.put_account_key(redis, other_id, hash_key(other_key), None)
    await index.put_bot(redis, IndexedBot(BOT, account_id, "Bot", False, 3))
    await index.put_bot(redis, IndexedBot(OTHER_BOT, other_id, "Other", False, 10))
    await redis.set(index.READY_KEY, "1")
    return account_id, key, other_key


@pytest.fixture
async def make_env(make_settings, redis) -> AsyncIterator[Callable[..., object]]:  # type: ignore[no-untyped-def]
    clients: list[TestClient] = []

    async def make(**overrides: object) -> Env:
        settings = make_settings(**overrides)
        if not clients:
            make.seeded = await seed(redis)  # type: ignore[attr-defined]
        account_id, key, other_key = make.seeded  # type: ignore[attr-defined]
        client = TestClient(GatewayServer(settings))
        await client.start_server()
        clients.append(client)
        return Env(client, key, other_key, account_id, redis, settings)

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def env(make_env) -> Env:  # type: ignore[no-untyped-def]
    return await make_env()


async def body_of(resp: ClientResponse) -> dict[str, object]:
    assert resp.content_type == "application/json", resp.content_type
    return json.loads(await resp.read())


# --- DisStat stats ------------------------------------------------------------------------------


async def test_stats_post_answers_204_json_and_appends_one_event(env: Env) -> None:
    before = int(time.time() * 1000)
    resp = await env.client.post(
        f"/v1/bot/{BOT}",
        json={
            "guilds": 12,
            "users": 3400,
            "shards": 2,
            "apiPing": None,
            "ramUsage": 123456789,
            "ramTotal": 987654321,
            "cpu": 12.5,
            "bandwidth": 4096,
        },
        headers=env.auth(),
    )
    assert resp.status == 204
    assert resp.headers["Content-Type"].startswith("application/json")
    assert await resp.read() == b""
    assert DROPPED_HEADER not in resp.headers
    [event] = await env.entries()
    assert event.kind == "stats"
    assert event.account_id == env.account_id
    assert event.received_ms >= before
    assert event.payload == StatsPayload(
        guilds=12, users=3400, shards=2, api_ping=None, ram_usage=123456789.0,
        ram_total=987654321.0, cpu=12.5, bandwidth=4096.0,
    )  # fmt: skip


async def _raw_exchange(env: Env, requests: list[bytes]) -> list[bytes]:
    """Each request on one connection, in turn; each answer's bytes (head and body) as read."""
    server = env.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    answers = []
    try:
        for request in requests:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = [
                int(line.split(b":")[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            ]
            answers.append(head + (await reader.readexactly(length[0]) if length else b""))
        writer.write_eof()
        answers.append(await asyncio.wait_for(reader.read(), 5))  # b"" once the server closes
    finally:
        writer.close()
    return answers


def _post(env: Env, target: str, *, version: str = "1.1", extra: str = "") -> bytes:
    body = b'{"guilds": 5}'
    return (
        f"POST {target} HTTP/{version}\r\nHost: x\r\nAuthorization: {env.key}\r\n{extra}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def test_stats_answers_on_one_keep_alive_connection(env: Env) -> None:
    first, second, rest = await _raw_exchange(env, [_post(env, f"/v1/bot/{BOT}")] * 2)
    for answer in (first, second):
        status, *headers = answer.removesuffix(b"\r\n\r\n").split(b"\r\n")
        assert status == b"HTTP/1.1 204 No Content"
        names = {h.split(b":")[0].lower(): h.split(b":", 1)[1].strip() for h in headers}
        assert names[b"content-type"] == b"application/json"
        assert names[b"date"].endswith(b" GMT")
        assert b"connection" not in names and b"content-length" not in names
    assert rest == b""
    assert len(await env.entries()) == 2


async def test_stats_requests_the_shortcut_leaves_to_the_app_answer_the_same(make_env) -> None:  # type: ignore[no-untyped-def]
    """HTTP/1.0, `Connection: close`, `Expect: 100-continue`, a percent-escaped id and the key in
    the query: every form of the stats post is appended once and answered 204."""
    env = await make_env(stats_rate_burst=10)
    [closed, _] = await _raw_exchange(env, [_post(env, f"/v1/bot/{BOT}", extra="Connection: close\r\n")])
    assert closed.startswith(b"HTTP/1.1 204 ") and b"Connection: close" in closed
    [old, _] = await _raw_exchange(env, [_post(env, f"/v1/bot/{BOT}", version="1.0")])
    assert old.startswith(b"HTTP/1.0 204 ") or old.startswith(b"HTTP/1.1 204 ")
    escaped = "/v1/bot/" + "".join(f"%{ord(c):02X}" for c in BOT)
    resp = await env.client.post(escaped, json={"guilds": 5}, headers=env.auth())
    assert resp.status == 204, await resp.text()
    resp = await env.client.post(f"/v1/bot/{BOT}", json={"guilds": 5}, params={"apikey": env.key})
    assert resp.status == 204, await resp.text()
    resp = await env.client.post(
        f"/v1/bot/{BOT}", json={"guilds": 5}, headers={**env.auth(), "Expect": "100-continue"}
    )
    assert resp.status == 204, await resp.text()
    assert len(await env.entries()) == 5
    resp = await env.client.post(f"/v1/bot/{BOT}%2Fcustom", json={"guilds": 5}, headers=env.auth())
    assert resp.status == 404, await resp.text()


@pytest.mark.parametrize(
    ("alias", "field"),
    [
        ("totalRam", "ram_total"),
        ("total_ram", "ram_total"),
        ("cpuUsage", "cpu"),
        ("cpu_usage", "cpu"),
        ("ram_usage", "ram_usage"),
    ],
)
async def test_stats_aliases(env: Env, alias: str, field: str) -> None:
    resp = await env.client.post(f"/v1/bot/{BOT}", json={"guilds": 1, alias: 77}, headers=env.auth())
    assert resp.status == 204, await resp.text()
    [event] = await env.entries()
    assert getattr(event.payload, field) == 77.0
    assert event.payload.custom_metrics == {}  # an alias is not a custom metric


async def test_alias_error_names_the_field_the_client_sent(env: Env) -> None:
    resp = await env.client.post(f"/v1/bot/{BOT}", json={"guilds": 1, "cpu_usage": "x"}, headers=env.auth())
    assert resp.status == 400
    assert (await body_of(resp))["field"] == "cpu_usage"


@pytest.mark.parametrize(
    "body",
    [
        {"guilds": 0},
        {"guilds": 5, "users": None, "shards": None, "apiPing": None, "cpu": None},
        {"guilds": 5, "users": 0, "shards": 0, "apiPing": 0, "cpu": 0, "ramUsage": 0, "bandwidth": 0},
    ],
)
async def test_absent_null_and_zero_are_valid(env: Env, body: dict[str, object]) -> None:
    resp = await env.client.post(f"/v1/bot/{BOT}", json=body, headers=env.auth())
    assert resp.status == 204, await resp.text()
    [event] = await env.entries()
    assert event.payload.guilds == body["guilds"]
    assert event.payload.users == body.get("users")


async def test_custom_entries_in_stats_post_become_custom_events(env: Env) -> None:
    big = 123456789012345678901  # beyond even 2^64: kept digit for digit
    resp = await env.client.post(
        f"/v1/bot/{BOT}",
        data=(
            '{"guilds": 3, "customData": [{"type": "command", "value1": "ping", '
            f'"value2": 987654321987654321, "value3": {big}}}, {{"type": "votes", "value1": 1.5}}]}}'
        ),
        headers={**env.auth(), "Content-Type": "application/json"},
    )
    assert resp.status == 204, await resp.text()
    events = await env.entries()
    assert [e.kind for e in events] == ["stats", "custom", "custom"]
    assert events[1].payload == CustomPayload("command", "ping", "987654321987654321", str(big))
    assert events[2].payload == CustomPayload("votes", "1.5")
    assert len({e.event_id for e in events}) == 3
    assert {e.received_ms for e in events} == {events[0].received_ms}


async def test_custom_metrics_take_slots_and_extra_names_are_dropped(env: Env) -> None:
    resp = await env.client.post(
        f"/v1/bot/{BOT}",
        json={"guilds": 1, "cpu": 40.0, "ramTotal": 12.5, "music": 4, "votes": 2.5, "queue": 7, "extra": 1},
        headers=env.auth(),
    )
    assert resp.status == 204
    # Slots are taken in the order the names appear; the bot has 3.
    assert resp.headers[DROPPED_HEADER] == "extra"
    [event] = await env.entries()
    assert event.payload == StatsPayload(
        guilds=1, cpu=40.0, ram_total=12.5, custom_metrics={"music": 4.0, "votes": 2.5, "queue": 7.0}
    )
    slots = await env.redis.smembers(custom_slots_key(partition_of(BOT, 1), BOT))
    assert slots == {b"music", b"votes", b"queue"}

    # Known names keep their slot; a new name with no slot left is dropped again (with odd chars
    # percent-encoded in the header), and when every metric is dropped the event still goes in.
    resp = await env.client.post(f"/v1/bot/{BOT}", json={"guilds": 2, "queue": 8}, headers=env.auth())
    assert resp.status == 204 and DROPPED_HEADER not in resp.headers
    resp = await env.client.post(f"/v1/bot/{BOT}", json={"guilds": 3, "Müsik, live": 1}, headers=env.auth())
    assert resp.headers[DROPPED_HEADER] == "M%C3%BCsik%2C%20live"
    events = await env.entries()
    assert [e.payload.custom_metrics for e in events] == [
        {"music": 4.0, "votes": 2.5, "queue": 7.0},
        {"queue": 8.0},
        {},
    ]
    assert events[2].payload.guilds == 3


async def test_non_numeric_unknown_properties_are_properties(env: Env) -> None:
    # Strings and booleans are stored as properties (tests/test_compat.py); objects and arrays
    # are still ignored, as DisStat does.
    resp = await env.client.post(
        f"/v1/bot/{BOT}", json={"guilds": 1, "note": "hi", "flags": [1], "on": True}, headers=env.auth()
    )
    assert resp.status == 204
    [event] = await env.entries()
    assert event.payload.custom_metrics == {}
    assert event.payload.props == {"note": "hi", "on": "true"}


# --- DisStat custom ------------------------------------------------------------------------------


async def test_custom_post_answers_200_empty_object(env: Env) -> None:
    # The npm client's postCommand(name, userId, guildId); the ids are above 2^53.
    resp = await env.client.post(
        f"/v1/bot/{BOT}/custom",
        data='{"type": "command", "value1": "help", "value2": 9007199254740993, "value3": null}',
        headers={**env.auth(), "Content-Type": "application/json"},
    )
    assert resp.status == 200
    assert await body_of(resp) == {}
    [event] = await env.entries()
    assert event.payload == CustomPayload("command", "help", "9007199254740993", None)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"value1": 1}, "type"),
        ({"type": ""}, "type"),
        ({"type": "x" * 65}, "type"),
        ({"type": "a", "value1": "x" * 257}, "value1"),
        ({"type": "a", "value2": True}, "value2"),
        ({"type": "a", "value3": {"nested": 1}}, "value3"),
        ({"type": 5}, "type"),
    ],
)
async def test_custom_post_bad_input(env: Env, body: dict[str, object], field: str) -> None:
    resp = await env.client.post(f"/v1/bot/{BOT}/custom", json=body, headers=env.auth())
    assert resp.status == 400
    answer = await body_of(resp)
    assert answer["field"] == field
    assert field in str(answer["message"])
    assert await env.stream_length() == 0


# --- DBots ---------------------------------------------------------------------------------------


async def test_dbots_post(env: Env) -> None:
    resp = await env.client.post(
        f"/bots/{BOT}/stats", json={"guildCount": 42, "shardCount": 2, "userCount": 900}, headers=env.auth()
    )
    assert resp.status == 200
    assert await body_of(resp) == {"guildCount": 42}
    [event] = await env.entries()
    assert event.payload == StatsPayload(guilds=42, shards=2, users=900)


async def test_dbots_errors(env: Env) -> None:
    resp = await env.client.post(f"/bots/{BOT}/stats", json={"guildCount": 1})
    assert (resp.status, (await body_of(resp))["message"]) == (401, "Unauthorized")
    resp = await env.client.post("/bots/999/stats", json={"guildCount": 1}, headers=env.auth())
    assert (resp.status, (await body_of(resp))["message"]) == (404, "Not found")
    resp = await env.client.post(f"/bots/{BOT}/stats", json={"shardCount": 1}, headers=env.auth())
    assert (resp.status, (await body_of(resp))["field"]) == (400, "guildCount")


# --- Statcord v3 ---------------------------------------------------------------------------------


def statcord_body(key: str, **changes: object) -> dict[str, object]:
    body: dict[str, object] = {  # the shape statcord.py / statcord.js post
        "id": BOT,
        "key": key,
        "servers": "25",
        "users": "5000",
        "commands": "17",
        "active": [123456789012345678, 223456789012345678],
        "popular": [{"name": "help", "count": "9"}, {"name": "play", "count": "8"}],
        "memactive": "2000000000",
        "memload": "25",
        "cpuload": "12.5",
        "bandwidth": "1024",
        "custom1": "0",
        "custom2": "0",
    }
    body.update(changes)
    return body


async def test_statcord_post(env: Env) -> None:
    resp = await env.client.post("/v3/stats", json=statcord_body("statcord.com-" + env.key))
    assert resp.status == 200
    assert await body_of(resp) == {"error": False, "message": "Stats posted"}
    events = await env.entries()
    assert events[0].payload == StatsPayload(
        guilds=25, users=5000, ram_usage=2e9, ram_total=8e9, cpu=12.5, bandwidth=1024.0,
        custom_metrics={"commands": 17.0, "active_users": 2.0},
    )  # fmt: skip
    assert [e.payload for e in events[1:]] == [
        CustomPayload("popular_command", "help", "9"),
        CustomPayload("popular_command", "play", "8"),
    ]


async def test_statcord_errors_and_rate_limit(env: Env) -> None:
    resp = await env.client.post("/v3/stats", json=statcord_body("statcord.com-wrong"))
    assert resp.status == 401
    assert (await body_of(resp))["error"] is True
    for memload in ("lots", "1e-300"):  # 1e-300 % would make the derived total RAM infinite
        resp = await env.client.post("/v3/stats", json=statcord_body(env.key, memload=memload))
        answer = await body_of(resp)
        assert (resp.status, answer["field"], answer["error"]) == (400, "memload", True)
    for _ in range(env.settings.stats_rate_burst):
        assert (await env.client.post("/v3/stats", json=statcord_body(env.key))).status == 200
    resp = await env.client.post("/v3/stats", json=statcord_body(env.key))
    assert resp.status == 429
    answer = await body_of(resp)
    assert answer["error"] is True
    assert 1 <= answer["timeleft"] == answer["wait"] == int(resp.headers["Retry-After"]) <= 30


# --- auth ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["raw", "bearer", "query"])
async def test_key_styles(env: Env, style: str) -> None:
    headers = {"raw": env.auth(), "bearer": {"Authorization": f"Bearer {env.key}"}, "query": {}}[style]
    params = {"apikey": env.key} if style == "query" else {}
    resp = await env.client.post(f"/v1/bot/{BOT}", json={"guilds": 1}, headers=headers, params=params)
    assert resp.status == 204


@pytest.mark.parametrize(
    ("bot", "key", "status"),
    [
        (BOT, None, 401),
        (BOT, "DS-not-a-key", 401),
        (OTHER_BOT, "mine", 403),
        ("31337", "mine", 404),
        ("31337", "DS-not-a-key", 401),
    ],
)
async def test_auth_refusals(env: Env, bot: str, key: str | None, status: int) -> None:
    headers = {} if key is None else {"Authorization": env.key if key == "mine" else key}
    for path in (f"/v1/bot/{bot}", f"/v1/bot/{bot}/custom"):
        resp = await env.client.post(path, json={"guilds": 1, "type": "t"}, headers=headers)
        assert resp.status == status
        assert "message" in await body_of(resp)
    assert await env.stream_length() == 0


async def test_regenerated_key_stops_working(env: Env) -> None:
    assert (await env.client.post(f"/v1/bot/{BOT}", json={"guilds": 1}, headers=env.auth())).status == 204
    await index.put_account_key(env.redis, env.account_id, hash_key("DS-new"), hash_key(env.key))
    deadline = time.monotonic() + 5
    status = 204
    while time.monotonic() < deadline and status != 401:
        await asyncio.sleep(0.05)
        status = (
            await env.client.post(f"/v1/bot/{BOT}/custom", json={"type": "t"}, headers=env.auth())
        ).status
    assert status == 401
    resp = await env.client.post(f"/v1/bot/{BOT}/custom", json={"type": "t"}, headers=env.auth("DS-new"))
    assert resp.status == 200


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"{not json", None),
        (b"", None),
        (b"[1, 2]", None),
        (b'"guilds"', None),
        (b'{"guilds": "many"}', "guilds"),
        (b'{"guilds": NaN}', None),
        (b'{"guilds": 1, "cpu": Infinity}', None),
        (b'{"guilds": -1}', "guilds"),
        (b'{"guilds": 1, "users": -5}', "users"),
        (b'{"guilds": 1.5}', "guilds"),
        (b'{"guilds": 9007199254740993}', "guilds"),
        (b'{"guilds": 1, "ramUsage": 1e300}', "ramUsage"),
        (b'{"guilds": 1, "bigmetric": 1e300}', "bigmetric"),
        (b'{"users": 1}', "guilds"),
        (b'{"guilds": 1, "custom": {"type": "a"}}', "custom"),
        (b'{"guilds": 1, "custom": [{"type": "a", "value1": "' + b"x" * 257 + b'"}]}', "custom[0].value1"),
        (b'{"guilds": 1, "custom": [' + b",".join([b'{"type": "a"}'] * 101) + b"]}", "custom"),
        (b'{"guilds": 1, "' + b"m" * 65 + b'": 1}', "m" * 64),
        (b'{"guilds": 1, "deep": ' + b"[" * 5000 + b"]" * 5000 + b"}", None),
        (b'{"guilds": 1, "deep": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}", None),
    ],
)
async def test_bad_stats_bodies(env: Env, raw: bytes, field: str | None) -> None:
    resp = await env.client.post(
        f"/v1/bot/{BOT}", data=raw, headers={**env.auth(), "Content-Type": "application/json"}
    )
    assert resp.status == 400, await resp.text()
    answer = await body_of(resp)
    assert answer["message"]
    assert answer.get("field") == field
    assert await env.stream_length() == 0


async def test_too_many_custom_metrics(env: Env) -> None:
    body = {"guilds": 1, **{f"m{i}": i for i in range(101)}}
    resp = await env.client.post(f"/v1/bot/{BOT}", json=body, headers=env.auth())
    assert resp.status == 400
    assert await env.stream_length() == 0


async def test_body_over_limit_is_413_from_content_length(env: Env) -> None:
    big = b'{"guilds": 1, "pad": "' + b"x" * 70_000 + b'"}'
    resp = await env.client.post(f"/v1/bot/{BOT}", data=big, headers=env.auth())
    assert resp.status == 413
    assert "message" in await body_of(resp)

    async def chunks():  # type: ignore[no-untyped-def]
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    # No Content-Length (chunked): refused while reading, still 413.
    resp = await env.client.post(f"/v1/bot/{BOT}", data=chunks(), headers=env.auth())
    assert resp.status == 413
    assert "message" in await body_of(resp)
    assert await env.stream_length() == 0


async def test_chunked_body_that_arrived_whole_is_bounded_too(make_env) -> None:  # type: ignore[no-untyped-def]
    """A chunked post sent in one write with its headers is complete before the handler runs
    (read without waiting): the body limit still holds, and a body within it is taken."""
    env = await make_env(max_body_bytes=2048)

    async def raw_post(body: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", env.client.port)
        chunks = b"".join(
            b"%x\r\n%b\r\n" % (len(body[i : i + 500]), body[i : i + 500]) for i in range(0, len(body), 500)
        )
        writer.write(
            f"POST /v1/bot/{BOT} HTTP/1.1\r\nHost: x\r\nAuthorization: {env.key}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n".encode()
            + chunks
            + b"0\r\n\r\n"
        )
        answer = await reader.read()
        writer.close()
        return answer

    over = await raw_post(b'{"guilds": 1, "pad": "' + b"x" * 3000 + b'"}')
    assert over.startswith(b"HTTP/1.1 413"), over[:80]
    assert await env.stream_length() == 0
    within = await raw_post(b'{"guilds": 7' + b" " * 1500 + b"}")  # padded with JSON whitespace
    assert within.startswith(b"HTTP/1.1 204"), within[:80]
    assert [e.payload.guilds for e in await env.entries()] == [7]  # type: ignore[union-attr]


async def test_unknown_route_and_method(env: Env) -> None:
    resp = await env.client.get("/v2/whatever")
    assert resp.status == 404
    assert (await body_of(resp))["message"] == "Not found"
    resp = await env.client.get(f"/v1/bot/{BOT}")
    assert resp.status == 405
    assert "POST" in resp.headers["Allow"]
    assert (await body_of(resp))["field"] == "method"
    resp = await env.client.delete(f"/v1/bot/{BOT}/custom")
    assert resp.status == 405


# --- rate limits ---------------------------------------------------------------------------------


async def test_stats_rate_limit_holds_across_gateway_processes(make_env) -> None:  # type: ignore[no-untyped-def]
    first = await make_env(stats_rate_interval_s=30.0, stats_rate_burst=3)
    second = await make_env(stats_rate_interval_s=30.0, stats_rate_burst=3)
    statuses = []
    for client in (first.client, second.client, first.client):
        resp = await client.post(f"/v1/bot/{BOT}", json={"guilds": 1}, headers=first.auth())
        statuses.append(resp.status)
    resp = await second.client.post(f"/v1/bot/{BOT}", json={"guilds": 1}, headers=first.auth())
    assert statuses == [204, 204, 204]
    assert resp.status == 429
    assert 1 <= int(resp.headers["Retry-After"]) <= 30
    assert (await body_of(resp))["retryAfter"] == int(resp.headers["Retry-After"])
    assert len(await first.entries()) == 3
    # DBots posts are stats posts too; custom posts have their own limit.
    assert (
        await second.client.post(f"/bots/{BOT}/stats", json={"guildCount": 1}, headers=first.auth())
    ).status == 429
    assert (
        await second.client.post(f"/v1/bot/{BOT}/custom", json={"type": "t"}, headers=first.auth())
    ).status == 200


async def test_rate_limit_counts_posts_of_one_bot_sent_together(make_env) -> None:  # type: ignore[no-untyped-def]
    """Posts of the same bot that share one script call each see the ones before them."""
    env = await make_env(stats_rate_interval_s=30.0, stats_rate_burst=3, custom_rate_per_min=2)
    stats = [env.client.post(f"/v1/bot/{BOT}", json={"guilds": 1}, headers=env.auth()) for _ in range(5)]
    custom = [
        env.client.post(f"/v1/bot/{BOT}/custom", json={"type": "t"}, headers=env.auth()) for _ in range(4)
    ]
    statuses = [resp.status for resp in await asyncio.gather(*stats, *custom)]
    assert sorted(statuses[:5]) == [204] * 3 + [429] * 2
    assert sorted(statuses[5:]) == [200] * 2 + [429] * 2
    assert len(await env.entries()) == 5


async def test_custom_rate_limit(make_env) -> None:  # type: ignore[no-untyped-def]
    env = await make_env(custom_rate_per_min=5)
    statuses = [
        (await env.client.post(f"/v1/bot/{BOT}/custom", json={"type": "t"}, headers=env.auth())).status
        for _ in range(6)
    ]
    assert statuses == [200] * 5 + [429]
    assert len(await env.entries()) == 5
    # Another bot's budget is its own.
    resp = await env.client.post(
        f"/v1/bot/{OTHER_BOT}/custom", json={"type": "t"}, headers=env.auth(env.other_key)
    )
    assert resp.status == 200


# --- durability and backpressure -----------------------------------------------------------------


async def test_backlog_over_high_water_is_503(make_env) -> None:  # type: ignore[no-untyped-def]
    env = await make_env(stream_high_water=2)
    for _ in range(2):
        assert (
            await env.client.post(f"/v1/bot/{BOT}/custom", json={"type": "t"}, headers=env.auth())
        ).status == 200
    resp = await env.client.post(f"/v1/bot/{BOT}/custom", json={"type": "t"}, headers=env.auth())
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) >= 1
    assert len(await env.entries()) == 2


async def test_registry_not_ready_is_503(env: Env) -> None:
    await env.redis.delete(index.READY_KEY)
    deadline = time.monotonic() + 5
    status = 0
    while time.monotonic() < deadline and status != 503:
        status = (await env.client.post(f"/v1/bot/{BOT}", json={"guilds": 1}, headers=env.auth())).status
        await asyncio.sleep(0.05)
    assert status == 503
    length = await env.stream_length()
    resp = await env.client.post(f"/v1/bot/{BOT}/custom", json={"type": "t"}, headers=env.auth())
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) >= 1
    assert await env.stream_length() == length


async def test_index_lost_under_a_cached_ready_flag_is_503_not_401(env: Env) -> None:
    # The first lookup after Redis was emptied finds no key: that is "retry", not "unknown key".
    assert (await env.client.post(f"/v1/bot/{BOT}", json={"guilds": 1}, headers=env.auth())).status == 204
    await env.redis.flushall()
    resp = await env.client.post(f"/v1/bot/{OTHER_BOT}", json={"guilds": 1}, headers=env.auth(env.other_key))
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) >= 1


async def test_impossible_bot_id_is_404_without_a_lookup(env: Env) -> None:
    registry = env.client.server.app[ingest_app.REGISTRY]
    for bot_id in ("a%20b", "x" * 65, "%C3%A9t%C3%A9"):
        resp = await env.client.post(f"/v1/bot/{bot_id}", json={"guilds": 1}, headers=env.auth())
        assert resp.status == 404
        assert (await body_of(resp))["message"]
    assert not any(key != BOT for key in registry._bots)  # nothing cached for impossible ids
    assert await env.stream_length() == 0


async def test_script_reloaded_after_redis_lost_it(env: Env) -> None:
    await env.redis.script_flush()
    resp = await env.client.post(f"/v1/bot/{BOT}/custom", json={"type": "t"}, headers=env.auth())
    assert resp.status == 200
    assert len(await env.entries()) == 1


async def test_partitions_spread_bots_over_streams(make_env) -> None:  # type: ignore[no-untyped-def]
    env = await make_env(stream_partitions=8)
    assert (
        await env.client.post(f"/v1/bot/{BOT}/custom", json={"type": "t"}, headers=env.auth())
    ).status == 200
    assert (
        await env.client.post(
            f"/v1/bot/{OTHER_BOT}/custom", json={"type": "t"}, headers=env.auth(env.other_key)
        )
    ).status == 200
    for bot in (BOT, OTHER_BOT):
        raw = await env.redis.xrange(stream_key(partition_of(bot, 8)))
        assert [e.bot_id for _, f in raw for e in entry_events(f[b"e"])].count(bot) == 1
    assert partition_of(BOT, 8) != partition_of(OTHER_BOT, 8)  # or this test proves nothing


async def test_concurrent_posts_are_coalesced_into_few_pipelines(env: Env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    appender = env.client.app[ingest_app.APPENDER]
    calls: list[int] = []
    real = appender._execute

    async def counting(posts):  # type: ignore[no-untyped-def]
        calls.append(len(posts))
        return await real(posts)

    monkeypatch.setattr(appender, "_execute", counting)
    results = await asyncio.gather(
        *(
            env.client.post(f"/v1/bot/{BOT}/custom", json={"type": "t", "value1": i}, headers=env.auth())
            for i in range(40)
        )
    )
    assert [r.status for r in results] == [200] * 40
    assert sum(calls) == 40
    assert max(calls) > 1  # at least one pipeline carried several posts
    assert sorted(int(e.payload.value1) for e in await env.entries()) == list(range(40))  # type: ignore[union-attr, arg-type]


async def test_health_endpoints(env: Env) -> None:
    resp = await env.client.get("/healthz")
    assert (resp.status, await body_of(resp)) == (200, {"status": "ok"})
    resp = await env.client.get("/readyz")
    assert (resp.status, await body_of(resp)) == (200, {"status": "ready"})


def test_stream_payload_roundtrip_keeps_msgspec_contract() -> None:
    # The Lua script re-packs a stats event with cmsgpack when it drops metrics: integral floats
    # come back as msgpack ints, which the contract must still read as floats.
    event = msgspec.msgpack.encode(
        {"event_id": "x", "received_ms": 1, "bot_id": "b", "account_id": "a",
         "payload": {"kind": "stats", "guilds": 1, "cpu": 40, "custom_metrics": {"m": 2}}}
    )  # fmt: skip
    assert decode_event(event).payload == StatsPayload(guilds=1, cpu=40.0, custom_metrics={"m": 2.0})


async def test_batched_calls_answer_each_post_its_own_outcome(make_env) -> None:  # type: ignore[no-untyped-def]
    # Posts of one tick share a script call per partition; each still gets its own verdict.
    env = await make_env(stream_partitions=8, stats_rate_burst=2)
    await env.redis.script_flush()  # and the first calls come back NOSCRIPT, then go again as EVAL
    posts = [(BOT, env.key)] * 3 + [(OTHER_BOT, env.other_key)] * 3
    results = await asyncio.gather(
        *(env.client.post(f"/v1/bot/{bot}", json={"guilds": 1}, headers=env.auth(key)) for bot, key in posts)
    )
    statuses = [r.status for r in results]
    assert sorted(statuses[:3]) == [204, 204, 429]
    assert sorted(statuses[3:]) == [204, 204, 429]
    assert len(await env.entries(BOT)) == 2
    assert len(await env.entries(OTHER_BOT)) == 2


def test_the_appender_encodes_its_calls_as_the_script_reads_them() -> None:
    """`script_call` writes the RESP itself (heads cached per bot and account, rate fields once a
    call): read back as Redis reads it, it is the argument list the script reads
    (ingest/append.py, the comment above `_BODY`)."""
    import hiredis

    from botpulse.ingest.append import SHA, Limits, Post, script_call
    from botpulse.schemas.stream import custom_slots_key, custom_types_key, prop_slots_key, rate_key

    def post(i: int, **extra: object) -> Post:
        fields: dict[str, object] = {"metric_names": [], "events": [b"event-%d" % i]} | extra
        return Post(
            partition=3, bot_id=f"30000000000000000{i}", stats=i % 2 == 0, slot_limit=20 + i,
            account_id=f"acc_{i % 2}", account_interval_ms=6 + i, account_burst=1000 + i, type_limit=300,
            prop_limit=7, **fields,  # type: ignore[arg-type]
        )  # fmt: skip

    mixed = {"metric_names": ["m", "Müsik, live"], "prop_names": ["lang"], "types": ["cmd", "vote"]}
    posts = [
        post(0),
        post(1, events=[b"stats", b"c1", b"c2"], **mixed),
        post(2, types=["only"], events=[b"\x00\r\n$3"]),
        post(3, prop_names=["p"] * 300),
        post(0),  # the first post's head again, from the cache
    ]
    limits = Limits(30_000, 3, 1_000, 10)
    keys: list[bytes] = [stream_key(3).encode(), rate_key(3).encode()]
    fields: list[str] = []
    heads: list[object] = []
    events: list[bytes] = []
    for p in posts:
        names, props, types = list(p.metric_names), list(p.prop_names), list(p.types)
        at = []
        for field in (("s:" if p.stats else "c:") + p.bot_id, "a:" + p.account_id):
            if field not in fields:
                fields.append(field)
            at.append(fields.index(field) + 1)
        heads += [
            *at,
            p.account_interval_ms,
            p.account_burst,
            len(names),
            len(props),
            len(p.events),
            len(types),
        ]
        for wanted, key, limit in (
            (names, custom_slots_key(3, p.bot_id), p.slot_limit),
            (props, prop_slots_key(3, p.bot_id), p.prop_limit),
            (types, custom_types_key(3, p.bot_id), p.type_limit),
        ):
            if wanted:
                keys.append(key.encode())
                heads.append(limit)
        heads += [*names, *props, *types]
        events += p.events
    assert fields == ["s:300000000000000000", "a:acc_0", "c:300000000000000001", "a:acc_1",
                      "s:300000000000000002", "c:300000000000000003"]  # fmt: skip
    reader = hiredis.Reader()
    reader.feed(script_call("EVALSHA", SHA, posts, 1_000_000, limits))
    args = reader.gets()
    assert reader.gets() is False  # one command, nothing left over
    n = len(keys)
    assert args[: 3 + n] == [b"EVALSHA", SHA.encode(), b"%d" % n, *keys]
    assert args[3 + n : 8 + n] == [b"1000000", b"30000", b"3", b"1000", b"10"]
    assert msgspec.msgpack.decode(args[8 + n]) == fields
    assert msgspec.msgpack.decode(args[9 + n]) == heads
    assert args[10 + n :] == events
