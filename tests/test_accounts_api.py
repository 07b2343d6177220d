"""The account API of the query service, on real parts: bot registration and changes, the
DBots-compatible paths, the admin API, cross-account refusals for every endpoint, key
regeneration seen by a second process, and losing Redis entirely."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from botpulse.ingest import app as ingest_app
from botpulse.query import app as query_app
from botpulse.registry import index
from botpulse.registry.index import RegistryCache

ADMIN = "test-admin-kF3n9QzL0pW7xV2bR8tY5uM1cJ6hD4sA"
WAIT_S = 5.0  # bound on waiting for pollers; never a speed assertion


async def _client(app) -> TestClient:  # type: ignore[no-untyped-def]
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def api(make_settings, store, redis) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    client = await _client(query_app.build_app(make_settings(admin_token=ADMIN), store))
    yield client
    await client.close()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": key}


async def _account(api: TestClient, name: str) -> tuple[str, str]:
    resp = await api.post("/v1/admin/accounts", json={"name": name}, headers=_auth(f"Bearer {ADMIN}"))
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    return body["id"], body["key"]


async def _until(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {WAIT_S}s: {what}")


async def test_register_and_change_a_bot(api):
    account, key = await _account(api, "alpha")
    resp = await api.post(
        "/v1/bots", json={"id": "123456789012345678", "username": "Alpha Bot"}, headers=_auth(key)
    )
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body == {
        "id": "123456789012345678",
        "account": account,
        "username": "Alpha Bot",
        "avatar": None,
        "private": False,
        "customSlots": 10,
        "customMetrics": [],
        "voteWebhookURL": None,
        "createdAt": body["createdAt"],
    }
    assert abs(body["createdAt"] - time.time() * 1000) < 600_000

    resp = await api.post(
        "/v1/bots", json={"id": "123456789012345678", "username": "again"}, headers=_auth(key)
    )
    assert resp.status == 409
    assert (await resp.json())["field"] == "id"

    resp = await api.patch(
        "/v1/bot/123456789012345678",
        json={"username": "Renamed", "avatar": "https://cdn.example/a.png", "private": True},
        headers=_auth(f"Bearer {key}"),
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["username"], body["avatar"], body["private"]) == (
        "Renamed",
        "https://cdn.example/a.png",
        True,
    )

    resp = await api.get("/v1/account", params={"apikey": key})
    assert resp.status == 200
    me = await resp.json()
    assert me["id"] == account and me["name"] == "alpha" and me["keyPrefix"] == key[:7] + "…"
    assert [b["id"] for b in me["bots"]] == ["123456789012345678"]
    assert key not in await resp.text()


BAD_BOTS = [
    ({"id": "bad id!", "username": "x"}, "id"),
    ({"id": "x" * 65, "username": "x"}, "id"),
    ({"id": 123, "username": "x"}, "id"),
    ({"id": "1", "username": ""}, "username"),
    ({"id": "1", "username": "x" * 257}, "username"),
    ({"id": "1", "username": 5}, "username"),
    ({"id": "1"}, "username"),
    ({"username": "x"}, "id"),
    ({"id": "1", "username": "x", "avatar": "javascript:alert(1)"}, "avatar"),
    ({"id": "1", "username": "x", "avatar": "https://" + "a" * 2048}, "avatar"),
    ({"id": "1", "username": "x", "private": "yes"}, "private"),
    ({"id": "1", "username": "x", "customSlots": 50}, "customSlots"),
    ({"id": "1", "username": "x", "color": "red"}, "color"),
]
MALFORMED = [b"", b"{", b"[1]", b'"x"', b"[" * 100_000 + b"]" * 100_000]


async def test_bad_bodies_are_400_naming_the_field(api):
    _, key = await _account(api, "alpha")
    for body, field in BAD_BOTS:
        resp = await api.post("/v1/bots", json=body, headers=_auth(key))
        assert resp.status == 400, (body, await resp.text())
        answer = await resp.json()
        assert answer["field"] == field and answer["message"], body
    for raw in MALFORMED:
        resp = await api.post("/v1/bots", data=raw, headers=_auth(key) | {"Content-Type": "application/json"})
        assert resp.status == 400, raw[:10]
        assert "message" in await resp.json()
    resp = await api.post("/v1/bots", json={"id": "1", "username": "x" * 2_000_000}, headers=_auth(key))
    assert resp.status == 413
    assert "too large" in (await resp.json())["message"]
    await api.post("/v1/bots", json={"id": "1", "username": "ok"}, headers=_auth(key))
    for body, field in [
        ({}, None),
        ({"username": None}, "username"),
        ({"voteWebhookURL": "x"}, "voteWebhookURL"),
    ]:
        resp = await api.patch("/v1/bot/1", json=body, headers=_auth(key))
        assert resp.status == 400, body
        assert (await resp.json()).get("field") == field
    me = await (await api.get("/v1/account", headers=_auth(key))).json()
    assert [(b["id"], b["username"]) for b in me["bots"]] == [("1", "ok")]


ACCOUNT_ENDPOINTS = [
    ("POST", "/v1/bots"),
    ("PATCH", "/v1/bot/1"),
    ("GET", "/v1/account"),
    ("POST", "/v1/account/key/regenerate"),
    ("GET", "/bots/1/log"),
    ("POST", "/bots/1/keys/regen"),
    ("GET", "/v1/account/keys"),
    ("POST", "/v1/account/keys"),
    ("DELETE", "/v1/account/keys/key_0123456789abcdef"),
    ("GET", "/bots/1/api"),
    ("PATCH", "/bots/1/api"),
]


async def test_missing_or_bad_key_is_401(api):
    _, real = await _account(api, "alpha")
    await api.post("/v1/bots", json={"id": "1", "username": "b"}, headers=_auth(real))
    for method, path in ACCOUNT_ENDPOINTS:
        for headers in ({}, _auth("DS-not-a-real-key"), _auth(""), _auth("Bearer " + real[:-1])):
            resp = await api.request(method, path, json={"username": "x"}, headers=headers)
            assert resp.status == 401, (method, path, headers)
            assert await resp.json() == {"message": "Unauthorized"}
    assert (await api.get("/v1/account", headers=_auth(real))).status == 200


async def test_another_accounts_bot_is_never_manageable(api, make_settings):
    _, a_key = await _account(api, "alpha")
    _, b_key = await _account(api, "beta")
    assert (
        await api.post("/v1/bots", json={"id": "777", "username": "A"}, headers=_auth(a_key))
    ).status == 201
    assert (
        await api.post("/v1/bots", json={"id": "888", "username": "B", "private": True}, headers=_auth(b_key))
    ).status == 201
    assert (await api.patch("/v1/bot/777", json={"private": True}, headers=_auth(a_key))).status == 200
    before_log = await (await api.get("/bots/777/log", headers=_auth(a_key))).json()

    not_manageable = {"message": "Bot not manageable"}
    for method, path, body in [
        ("PATCH", "/v1/bot/777", {"username": "hijacked"}),
        ("GET", "/bots/777/log", None),
        ("POST", "/bots/777/keys/regen", None),
        ("GET", "/bots/777/api", None),
        ("PATCH", "/bots/777/api", {"voteWebhookURL": "https://evil.example/hook"}),
    ]:
        resp = await api.request(method, path, json=body, headers=_auth(b_key))
        assert resp.status == 400, (method, path, await resp.text())
        assert await resp.json() == not_manageable, (method, path)
    # Taking the id over is a conflict, not a transfer.
    resp = await api.post("/v1/bots", json={"id": "777", "username": "mine now"}, headers=_auth(b_key))
    assert resp.status == 409
    # The account view lists only the caller's bots.
    me = await (await api.get("/v1/account", headers=_auth(b_key))).json()
    assert [bot["id"] for bot in me["bots"]] == ["888"]
    # A's private bot reads as absent to B and to nobody, present to A.
    assert (await api.get("/v1/bot/777", headers=_auth(b_key))).status == 404
    assert (await api.get("/v1/bot/777")).status == 404
    assert (await api.get("/v1/bot/777", headers=_auth(a_key))).status == 200

    # Nothing changed: the bot, its log and A's key.
    bot = await (await api.get("/bots/777/api", headers=_auth(a_key))).json()
    assert bot == {"_id": "777", "voteWebhookURL": None, "keyPrefix": a_key[:7] + "…"}
    assert await (await api.get("/bots/777/log", headers=_auth(a_key))).json() == before_log
    me = await (await api.get("/v1/account", headers=_auth(a_key))).json()
    assert me["bots"][0]["username"] == "A"

    # B's key cannot post for A's bot at the gateway either.
    gateway = await _client(ingest_app.build_app(make_settings()))
    try:
        resp = await gateway.post("/v1/bot/777", json={"guilds": 1}, headers=_auth(b_key))
        assert resp.status == 403
        resp = await gateway.post("/v1/bot/777", json={"guilds": 1}, headers=_auth(a_key))
        assert resp.status == 204
    finally:
        await gateway.close()


async def test_unknown_bot_is_404(api):
    _, key = await _account(api, "alpha")
    for method, path in [("PATCH", "/v1/bot/404"), ("GET", "/bots/404/log"), ("GET", "/bots/404/api")]:
        resp = await api.request(method, path, json={"username": "x"}, headers=_auth(key))
        assert resp.status == 404, (method, path)
        assert await resp.json() == {"message": "Not found"}


async def test_dbots_log_is_newest_first_and_paginated(api):
    account, key = await _account(api, "alpha")
    await api.post("/v1/bots", json={"id": "42", "username": "one"}, headers=_auth(key))
    for name in ("two", "three"):
        assert (await api.patch("/v1/bot/42", json={"username": name}, headers=_auth(key))).status == 200
    resp = await api.patch(
        "/bots/42/api", json={"voteWebhookURL": "https://hooks.example/vote"}, headers=_auth(key)
    )
    assert resp.status == 200

    resp = await api.get("/bots/42/log", headers=_auth(key))
    assert resp.status == 200
    assert resp.headers["X-Total-Count"] == "4"
    body = await resp.json()
    assert set(body) == {"_id", "changes"} and body["_id"] == "42"
    changes = body["changes"]
    assert [set(c) for c in changes] == [{"at", "by", "changes"}] * 4
    assert [c["by"] for c in changes] == [account] * 4
    assert changes[0]["changes"] == {
        "old": {"voteWebhookURL": None},
        "new": {"voteWebhookURL": "https://hooks.example/vote"},
    }
    assert changes[1]["changes"] == {"old": {"username": "two"}, "new": {"username": "three"}}
    assert changes[2]["changes"] == {"old": {"username": "one"}, "new": {"username": "two"}}
    assert changes[3]["changes"]["old"] == {}
    assert changes[3]["changes"]["new"]["username"] == "one"
    assert [c["at"] for c in changes] == sorted((c["at"] for c in changes), reverse=True)

    page2 = await (
        await api.get("/bots/42/log", params={"limit": "2", "page": "2"}, headers=_auth(key))
    ).json()
    assert page2["changes"] == changes[2:4]
    for bad in ({"limit": "0"}, {"limit": "101"}, {"page": "x"}, {"page": "0"}):
        resp = await api.get("/bots/42/log", params=bad, headers=_auth(key))
        assert resp.status == 400
        assert (await resp.json())["field"] == next(iter(bad))


async def test_dbots_api_and_vote_webhook(api):
    _, key = await _account(api, "alpha")
    await api.post("/v1/bots", json={"id": "43", "username": "b"}, headers=_auth(key))
    resp = await api.get("/bots/43/api", headers=_auth(key))
    assert await resp.json() == {"_id": "43", "voteWebhookURL": None, "keyPrefix": key[:7] + "…"}
    assert key not in await resp.text()

    url = "http://hooks.example:8080/vote?x=1"
    resp = await api.patch("/bots/43/api", json={"voteWebhookURL": url}, headers=_auth(key))
    assert resp.status == 200
    assert (await resp.json())["voteWebhookURL"] == url
    long_ok = "https://h.example/" + "a" * (2048 - len("https://h.example/"))
    assert (
        await api.patch("/bots/43/api", json={"voteWebhookURL": long_ok}, headers=_auth(key))
    ).status == 200
    for bad in [
        "ftp://h.example/x",
        "https://",
        "not a url",
        "https://h.example/" + "a" * 2048,
        5,
        "http://h:99999/",
    ]:
        resp = await api.patch("/bots/43/api", json={"voteWebhookURL": bad}, headers=_auth(key))
        assert resp.status == 400, bad
        assert (await resp.json())["field"] == "voteWebhookURL"
    for bad_body in [{}, {"username": "x"}]:
        resp = await api.patch("/bots/43/api", json=bad_body, headers=_auth(key))
        assert resp.status == 400
    assert (await (await api.get("/bots/43/api", headers=_auth(key))).json())["voteWebhookURL"] == long_ok
    resp = await api.patch("/bots/43/api", json={"voteWebhookURL": None}, headers=_auth(key))
    assert (await resp.json())["voteWebhookURL"] is None


async def test_regenerated_key_is_refused_by_another_process(api, make_settings, store):
    """Two query-service instances (each with its own registry cache) and a gateway-style cache:
    after a regeneration through the first, the old key is refused and the new one accepted by all."""
    _, old_key = await _account(api, "alpha")
    await api.post("/v1/bots", json={"id": "50", "username": "b"}, headers=_auth(old_key))
    other = await _client(query_app.build_app(make_settings(admin_token=ADMIN), store))
    gateway_cache = RegistryCache(other.app[query_app.REDIS], refresh_ms=250)
    await gateway_cache.start()
    try:
        assert (await other.get("/v1/account", headers=_auth(old_key))).status == 200
        assert await gateway_cache.account_for_key(old_key) is not None
        resp = await api.post("/v1/account/key/regenerate", headers=_auth(old_key))
        assert resp.status == 200
        body = await resp.json()
        assert set(body) == {"token"}
        new_key = body["token"]
        assert new_key.startswith("DS-") and new_key != old_key
        # The process that regenerated refuses the old key at once.
        assert (await api.get("/v1/account", headers=_auth(old_key))).status == 401
        assert (await api.get("/v1/account", headers=_auth(new_key))).status == 200

        async def switched() -> bool:
            old = (await other.get("/v1/account", headers=_auth(old_key))).status
            new = (await other.get("/v1/account", headers=_auth(new_key))).status
            cached_old = await gateway_cache.account_for_key(old_key)
            return old == 401 and new == 200 and cached_old is None

        await _until(switched, "the other processes switch keys")
    finally:
        await gateway_cache.stop()
        await other.close()


async def test_admin_api_requires_the_operator_token(api, make_settings, store):
    for headers in ({}, _auth("Bearer wrong"), _auth(ADMIN + "x")):
        resp = await api.post("/v1/admin/accounts", json={"name": "x"}, headers=headers)
        assert resp.status == 401
        assert await resp.json() == {"message": "Unauthorized"}
    resp = await api.post("/v1/admin/accounts", json={"name": ""}, headers=_auth(f"Bearer {ADMIN}"))
    assert resp.status == 400 and (await resp.json())["field"] == "name"
    resp = await api.post("/v1/admin/accounts", json={}, headers=_auth(ADMIN))
    assert resp.status == 400 and (await resp.json())["field"] == "name"
    resp = await api.get("/v1/admin/accounts", headers=_auth(ADMIN))
    assert await resp.json() == {"accounts": []}

    disabled = await _client(query_app.build_app(make_settings(admin_token=None), store))
    try:
        resp = await disabled.post("/v1/admin/accounts", json={"name": "x"}, headers=_auth(ADMIN))
        assert resp.status == 403
        assert "BOTPULSE_ADMIN_TOKEN" in (await resp.json())["message"]
    finally:
        await disabled.close()


async def test_admin_bot_operations(api):
    admin = _auth(f"Bearer {ADMIN}")
    a, a_key = await _account(api, "alpha")
    b, _ = await _account(api, "beta")
    resp = await api.post(
        "/v1/admin/bots",
        json={
            "id": "60",
            "account": a,
            "username": "ops",
            "customSlots": 3,
            "voteWebhookURL": "https://v.example",
        },
        headers=admin,
    )
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["customSlots"] == 3
    resp = await api.post(
        "/v1/admin/bots", json={"id": "61", "account": "acc_nope", "username": "x"}, headers=admin
    )
    assert resp.status == 400 and (await resp.json())["field"] == "account"
    resp = await api.patch("/v1/admin/bots/60", json={"account": b}, headers=admin)
    assert resp.status == 200 and (await resp.json())["account"] == b
    # Moved: A no longer manages it.
    assert (await api.get("/bots/60/api", headers=_auth(a_key))).status == 400
    listed = await (await api.get("/v1/admin/bots", params={"account": b}, headers=admin)).json()
    assert [x["id"] for x in listed["bots"]] == ["60"]
    accounts = await (await api.get("/v1/admin/accounts", headers=admin)).json()
    assert [(x["id"], x["bots"]) for x in accounts["accounts"]] == [(a, 0), (b, 1)]
    resp = await api.delete("/v1/admin/bots/60", headers=admin)
    assert resp.status == 200 and await resp.json() == {"id": "60", "removed": True}
    assert (await api.delete("/v1/admin/bots/60", headers=admin)).status == 404
    resp = await api.post(f"/v1/admin/accounts/{a}/key/regenerate", headers=admin)
    assert resp.status == 200
    new_key = (await resp.json())["token"]
    assert (await api.get("/v1/account", headers=_auth(new_key))).status == 200
    assert (await api.get("/v1/account", headers=_auth(a_key))).status == 401
    assert (await api.post("/v1/admin/accounts/acc_nope/key/regenerate", headers=admin)).status == 404
    resp = await api.post("/v1/admin/registry/sync", headers=admin)
    assert resp.status == 200 and (await resp.json())["bots"] == 0


async def test_losing_redis_entirely_loses_nothing(api, make_settings, store, redis):
    account, key = await _account(api, "alpha")
    assert (await api.post("/v1/bots", json={"id": "70", "username": "b"}, headers=_auth(key))).status == 201
    await redis.flushall()

    # The running query service answers from a rebuilt index on the next request...
    resp = await api.get("/v1/account", headers=_auth(key))
    assert resp.status == 200
    assert [b["id"] for b in (await resp.json())["bots"]] == ["70"]
    assert await index.is_ready(redis)

    # ...and its keeper rebuilds it by itself when nobody asks.
    await redis.flushall()

    async def rebuilt() -> bool:
        return await index.is_ready(redis)

    await _until(rebuilt, "the keeper rebuilds the index")
    cache = RegistryCache(redis)
    assert await cache.account_for_key(key) == account
    assert (await cache.bot("70")) is not None

    # A fresh process after losing Redis also starts from a complete index.
    await redis.flushall()
    fresh = await _client(query_app.build_app(make_settings(admin_token=ADMIN), store))
    try:
        assert await RegistryCache(redis).account_for_key(key) == account
        resp = await fresh.patch("/v1/bot/70", json={"username": "after restart"}, headers=_auth(key))
        assert resp.status == 200
    finally:
        await fresh.close()


async def _raw_get(client: TestClient, path: str, authorization: bytes) -> int:
    """A request whose Authorization header is not UTF-8 (aiohttp's client would refuse to send it)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: " + authorization
        + b"\r\nConnection: close\r\n\r\n"
    )  # fmt: skip
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    return int(status_line.split()[1])


async def test_key_or_token_that_is_not_utf8_is_refused_not_an_error(api):
    await _account(api, "alpha")
    assert await _raw_get(api, "/v1/account", b"DS-\xff\xfe") == 401
    assert await _raw_get(api, "/v1/admin/accounts", b"Bearer \xff") == 401
