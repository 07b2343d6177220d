"""What one account may cost, on real parts: quotas on bots, keys and registry writes (operator
defaults, per-account overrides), the account-level post rate and the custom-event type slots in
the gateway's admission script, and ids that only look like others."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from botpulse.ingest import app as ingest_app
from botpulse.query import app as query_app
from botpulse.registry import index, model

ADMIN = "limits-admin-Lk2Jh4Gf6Ds8Aq1Wz3Xc5Vb7Nm9Po0I"
OPERATOR = {"Authorization": f"Bearer {ADMIN}"}
WAIT_S = 5.0


async def _client(app) -> TestClient:  # type: ignore[no-untyped-def]
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def api(make_settings, store, redis) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    client = await _client(query_app.build_app(make_settings(admin_token=ADMIN), store))
    yield client
    await client.close()


async def _account(api: TestClient, name: str = "alpha") -> tuple[str, dict[str, str]]:
    resp = await api.post("/v1/admin/accounts", json={"name": name}, headers=OPERATOR)
    body = await resp.json()
    return body["id"], {"Authorization": body["key"]}


async def _limit(api: TestClient, account: str, **limits: object) -> dict:  # type: ignore[type-arg]
    resp = await api.patch(f"/v1/admin/accounts/{account}/limits", json=limits, headers=OPERATOR)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["limits"]


async def test_bots_and_keys_per_account_with_an_operator_override(api):
    account, auth = await _account(api)
    limits = await _limit(api, account, bots=2, keys=1)
    assert (limits["bots"], limits["keys"], sorted(limits["overridden"])) == (2, 1, ["bots", "keys"])
    for bot in ("1", "2"):
        assert (await api.post("/v1/bots", json={"id": bot, "username": "b"}, headers=auth)).status == 201
    resp = await api.post("/v1/bots", json={"id": "3", "username": "b"}, headers=auth)
    assert resp.status == 403
    body = await resp.json()
    assert (body["limit"], body["max"]) == ("bots", 2) and "2 of 2 bots" in body["message"]
    # The operator is not bound by the account's quota.
    resp = await api.post(
        "/v1/admin/bots", json={"id": "3", "account": account, "username": "b"}, headers=OPERATOR
    )
    assert resp.status == 201

    assert (
        await api.post("/v1/account/keys", json={"name": "a", "scope": "read"}, headers=auth)
    ).status == 201
    resp = await api.post("/v1/account/keys", json={"name": "b", "scope": "read"}, headers=auth)
    assert resp.status == 403 and (await resp.json())["limit"] == "keys"
    # A bot's own token takes no key slot (there is one per bot at most).
    assert (await api.post("/bots/1/keys/regen", headers=auth)).status == 200

    me = await (await api.get("/v1/account", headers=auth)).json()
    assert me["limits"]["bots"] == 2 and me["limits"]["keys"] == 1
    # null goes back to the operator's setting.
    limits = await _limit(api, account, bots=None)
    assert limits["bots"] == 100 and limits["overridden"] == ["keys"]
    assert (await api.post("/v1/bots", json={"id": "4", "username": "b"}, headers=auth)).status == 201


async def test_limits_api_refuses_bad_values_naming_the_field(api):
    account, _ = await _account(api)
    for body, field in [
        ({"bots": 0}, "bots"),
        ({"bots": "10"}, "bots"),
        ({"customEventTypes": 5000}, "customEventTypes"),
        ({"speed": 1}, "speed"),
        ({}, None),
    ]:
        resp = await api.patch(f"/v1/admin/accounts/{account}/limits", json=body, headers=OPERATOR)
        assert resp.status == 400, body
        assert (await resp.json()).get("field") == field
    resp = await api.patch("/v1/admin/accounts/acc_nope/limits", json={"bots": 1}, headers=OPERATOR)
    assert resp.status == 404
    _, auth = await _account(api, "beta")
    resp = await api.patch(f"/v1/admin/accounts/{account}/limits", json={"bots": 1}, headers=auth)
    assert resp.status == 401


async def test_registry_writes_per_minute_keep_the_caches_warm(api, redis):
    account, auth = await _account(api)
    await _limit(api, account, registryWritesPerMin=3)
    assert (await api.post("/v1/bots", json={"id": "1", "username": "b0"}, headers=auth)).status == 201
    for name in ("b1", "b2"):
        assert (await api.patch("/v1/bot/1", json={"username": name}, headers=auth)).status == 200
    version = await redis.get(index.VERSION_KEY)
    resp = await api.patch("/v1/bot/1", json={"username": "b3"}, headers=auth)
    assert resp.status == 429
    body = await resp.json()
    assert body["limit"] == "registryWritesPerMin" and body["max"] == 3 and "3 per minute" in body["message"]
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    # The refused write changed nothing: no version bump, so no cache anywhere was emptied.
    assert await redis.get(index.VERSION_KEY) == version
    # Reads are not writes.
    assert (await api.get("/v1/account", headers=auth)).status == 200
    # Another account has its own budget.
    _, other = await _account(api, "beta")
    assert (await api.post("/v1/bots", json={"id": "2", "username": "x"}, headers=other)).status == 201


async def test_account_post_rate_caps_all_its_bots_together(api, make_settings):
    account, auth = await _account(api)
    for bot in ("1", "2", "3"):
        await api.post("/v1/bots", json={"id": bot, "username": "b"}, headers=auth)
    settings = make_settings(stats_rate_burst=100, account_posts_per_min=4)
    gateway = await _client(ingest_app.build_app(settings))
    try:
        statuses = []
        for bot in ("1", "2", "3", "1", "2", "3"):
            resp = await gateway.post(f"/v1/bot/{bot}", json={"guilds": 1}, headers=auth)
            statuses.append(resp.status)
        assert statuses == [204] * 4 + [429] * 2
        body = await resp.json()
        assert body["limit"] == "postsPerMin" and body["max"] == 4
        assert "for this account" in body["message"] and int(resp.headers["Retry-After"]) >= 1
        # Another account is not held back by this one.
        _, other = await _account(api, "beta")
        await api.post("/v1/bots", json={"id": "9", "username": "b"}, headers=other)

        async def accepted() -> bool:
            return (await gateway.post("/v1/bot/9", json={"guilds": 1}, headers=other)).status == 204

        await _until(accepted, "the other account's bot is accepted")
        # The operator raises the account's rate; the gateway applies it within a refresh.
        await _limit(api, account, postsPerMin=100_000)

        async def raised() -> bool:
            return (await gateway.post("/v1/bot/3", json={"guilds": 1}, headers=auth)).status == 204

        await _until(raised, "the account's new rate reaches the gateway")
    finally:
        await gateway.close()


async def test_custom_event_types_take_slots_and_bound_the_answer(api, make_settings):
    account, auth = await _account(api)
    await api.post("/v1/bots", json={"id": "5", "username": "b"}, headers=auth)
    gateway = await _client(ingest_app.build_app(make_settings(custom_event_types=2, stats_rate_burst=100)))
    try:
        post = gateway.post
        for type_ in ("a", "b", "a"):
            assert (await post("/v1/bot/5/custom", json={"type": type_}, headers=auth)).status == 200
        resp = await post("/v1/bot/5/custom", json={"type": "c", "value1": "x"}, headers=auth)
        assert resp.status == 403
        body = await resp.json()
        assert (body["field"], body["limit"], body["max"]) == ("type", "customEventTypes", 2)
        # In a stats post the entries without a slot are dropped and named; the rest is stored.
        resp = await post(
            "/v1/bot/5",
            json={"guilds": 1, "customData": [{"type": "b"}, {"type": "d"}, {"type": "e"}]},
            headers=auth,
        )
        assert resp.status == 204 and resp.headers[ingest_app.DROPPED_TYPES_HEADER] == "d,e"
        # The operator's override gives the account's bots more slots.
        await _limit(api, account, customEventTypes=3)

        async def more() -> bool:
            return (await post("/v1/bot/5/custom", json={"type": "c"}, headers=auth)).status == 200

        await _until(more, "the new type limit reaches the gateway")
    finally:
        await gateway.close()


async def test_bot_ids_with_a_trailing_newline_are_refused_everywhere(api, make_settings):
    _, auth = await _account(api)
    assert (await api.post("/v1/bots", json={"id": "123", "username": "real"}, headers=auth)).status == 201
    for lookalike in ("123\n", "123\r\n", "\n123", "12 3"):
        with pytest.raises(model.Invalid):
            model.bot_id(lookalike)
        resp = await api.post("/v1/bots", json={"id": lookalike, "username": "fake"}, headers=auth)
        assert resp.status == 400 and (await resp.json())["field"] == "id", repr(lookalike)
    gateway = await _client(ingest_app.build_app(make_settings()))
    try:
        assert ingest_app.BOT_ID.match("123\n") is None
        resp = await gateway.post("/v1/bot/123%0A", json={"guilds": 1}, headers=auth)
        assert resp.status == 404
        body = {"id": "123\n", "key": auth["Authorization"], "servers": "1", "users": "1"}
        assert (await gateway.post("/v3/stats", json=body)).status == 404
        assert (await api.patch("/v1/bot/123%0A", json={"username": "x"}, headers=auth)).status == 404
    finally:
        await gateway.close()
    me = await (await api.get("/v1/account", headers=auth)).json()
    assert [b["id"] for b in me["bots"]] == ["123"]


async def _until(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {WAIT_S}s: {what}")
