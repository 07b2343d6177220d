"""Scoped keys on real parts: named keys of every scope, a bot's own token, revocation seen by
every process, last-used times, and the BOLA matrix — two accounts x public/private bot x post /
read / manage x every kind of key — over every route of the gateway and the query service
(aliases, shard posts, the alert rules and destinations included)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp.test_utils import TestClient, TestServer

from botpulse.ingest import app as ingest_app
from botpulse.query import app as query_app
from botpulse.registry import apikeys
from botpulse.registry.index import USED_KEY, RegistryCache
from botpulse.registry.keys import hash_key

ADMIN = "keys-admin-Vb8Nm3Qw6Er1Ty4Ui7Op0As2Df5Gh9Jk"
WAIT_S = 5.0  # bound on waiting for pollers; never a speed assertion
ROOMY = dict(  # no rate limit or quota gets in the matrix's way (they are tested on their own)
    admin_token=ADMIN,
    stats_rate_burst=1_000_000,
    custom_rate_per_min=1_000_000,
    registry_writes_per_min=100_000,
    account_posts_per_min=10_000_000,
    # The alert destinations of the matrix point at 127.0.0.1 (nothing is sent to them).
    alerts_allow_http=True,
    alerts_allow_networks="127.0.0.1/32",
)


async def _client(app) -> TestClient:  # type: ignore[no-untyped-def]
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def api(make_settings, store, redis) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    client = await _client(query_app.build_app(make_settings(**ROOMY), store))
    yield client
    await client.close()


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": key} if key else {}


async def _account(api: TestClient, name: str) -> tuple[str, str]:
    resp = await api.post("/v1/admin/accounts", json={"name": name}, headers=_auth(f"Bearer {ADMIN}"))
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    return body["id"], body["key"]


async def _key(api: TestClient, manage_key: str, **body: object) -> dict:  # type: ignore[type-arg]
    resp = await api.post("/v1/account/keys", json=body, headers=_auth(manage_key))
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def _until(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {WAIT_S}s: {what}")


# --- named keys -----------------------------------------------------------------------------------
async def test_named_keys_are_shown_once_listed_with_their_scope_and_stored_as_hashes(api, store):
    _, key = await _account(api, "alpha")
    await api.post("/v1/bots", json={"id": "11", "username": "b"}, headers=_auth(key))
    created = await _key(api, key, name="CI dashboard", scope="read")
    secret = created.pop("key")
    assert secret.startswith("DS-") and secret != key
    assert created == {
        "id": created["id"],
        "name": "CI dashboard",
        "scope": "read",
        "bots": [],
        "bot": None,
        "keyPrefix": secret[:7] + "…",
        "createdAt": created["createdAt"],
        "lastUsedAt": None,
    }
    ingest = await _key(api, key, name="bot config", scope="ingest", bots=["11"])
    assert ingest["bots"] == ["11"]

    resp = await api.get("/v1/account/keys", headers=_auth(key))
    assert resp.status == 200
    text = await resp.text()
    listed = (await resp.json())["keys"]
    assert [(k["id"], k["scope"]) for k in listed] == [
        ("account", "manage"),
        (created["id"], "read"),
        (ingest["id"], "ingest"),
    ]
    assert secret not in text and key not in text and ingest["key"] not in text
    # ClickHouse holds the hash and the prefix, never the key.
    rows = await store.query(
        "SELECT key_hash, key_prefix FROM api_keys WHERE id = {id:String}", {"id": created["id"]}
    )
    assert rows == [(hash_key(secret), secret[:7] + "…")]
    dump = await store.query("SELECT * FROM api_keys")
    assert secret not in repr(dump)

    for body, field_name in [
        ({"name": "x", "scope": "admin"}, "scope"),
        ({"scope": "read"}, "name"),
        ({"name": "x", "scope": "read", "bots": ["11"]}, "bots"),
        ({"name": "x", "scope": "ingest", "bots": ["nope"]}, "bots"),
        ({"name": "x", "scope": "ingest", "bots": ["11\n"]}, "bots[0]"),  # the element at fault
        ({"name": "x", "scope": "ingest", "color": 1}, "color"),
    ]:
        resp = await api.post("/v1/account/keys", json=body, headers=_auth(key))
        assert resp.status == 400, body
        assert (await resp.json())["field"] == field_name, body


async def test_a_key_outside_its_scope_gets_403_naming_the_scope_it_lacks(api, make_settings):
    _, key = await _account(api, "alpha")
    await api.post("/v1/bots", json={"id": "12", "username": "b"}, headers=_auth(key))
    read = (await _key(api, key, name="r", scope="read"))["key"]
    ingest = (await _key(api, key, name="i", scope="ingest"))["key"]

    resp = await api.patch("/v1/bot/12", json={"username": "x"}, headers=_auth(read))
    assert resp.status == 403
    assert await resp.json() == {
        "message": "This API key has the read scope; managing the account needs the manage scope",
        "scope": "read",
        "missingScope": "manage",
    }
    resp = await api.get("/v1/bot/12", headers=_auth(ingest))
    assert resp.status == 403
    assert (await resp.json())["missingScope"] == "read"
    assert (await api.get("/v1/bot/12", headers=_auth(read))).status == 200

    gateway = await _client(ingest_app.build_app(make_settings(**ROOMY)))
    try:
        resp = await gateway.post("/v1/bot/12", json={"guilds": 1}, headers=_auth(read))
        assert resp.status == 403
        body = await resp.json()
        assert body["missingScope"] == "ingest" and "ingest scope" in body["message"]
        assert (await gateway.post("/v1/bot/12", json={"guilds": 1}, headers=_auth(ingest))).status == 204
        # The account key keeps posting, as DisStat clients do.
        assert (await gateway.post("/v1/bot/12", json={"guilds": 2}, headers=_auth(key))).status == 204
    finally:
        await gateway.close()


async def test_revoking_one_key_leaves_the_others_and_every_process_refuses_it(
    api, make_settings, store, redis
):
    _, key = await _account(api, "alpha")
    await api.post("/v1/bots", json={"id": "13", "username": "b"}, headers=_auth(key))
    doomed = await _key(api, key, name="leaked", scope="ingest")
    kept = await _key(api, key, name="kept", scope="ingest")
    other = await _client(query_app.build_app(make_settings(**ROOMY), store))
    gateway = await _client(ingest_app.build_app(make_settings(**ROOMY)))
    try:
        assert (
            await gateway.post("/v1/bot/13", json={"guilds": 1}, headers=_auth(doomed["key"]))
        ).status == 204
        resp = await api.delete(f"/v1/account/keys/{doomed['id']}", headers=_auth(key))
        assert resp.status == 200 and await resp.json() == {"id": doomed["id"], "revoked": True}
        assert (await api.delete(f"/v1/account/keys/{doomed['id']}", headers=_auth(key))).status == 404

        async def refused_everywhere() -> bool:
            posted = await gateway.post("/v1/bot/13", json={"guilds": 1}, headers=_auth(doomed["key"]))
            read = await other.get("/v1/account", headers=_auth(doomed["key"]))
            return posted.status == 401 and read.status == 401

        await _until(
            refused_everywhere, "the revoked key is refused by the gateway and the other query process"
        )
        assert (
            await gateway.post("/v1/bot/13", json={"guilds": 1}, headers=_auth(kept["key"]))
        ).status == 204
        assert (await gateway.post("/v1/bot/13", json={"guilds": 1}, headers=_auth(key))).status == 204
        listed = [
            k["id"] for k in (await (await api.get("/v1/account/keys", headers=_auth(key))).json())["keys"]
        ]
        assert listed == ["account", kept["id"]]
        # A rebuild from ClickHouse does not bring it back.
        await redis.flushall()
        assert (await api.get("/v1/account", headers=_auth(key))).status == 200
        assert await RegistryCache(redis).credential(doomed["key"]) is None
        assert (await RegistryCache(redis).credential(kept["key"])).scope == "ingest"  # type: ignore[union-attr]
    finally:
        await gateway.close()
        await other.close()


async def test_bot_token_rotation_changes_that_bot_only_and_get_changes_nothing(api, make_settings):
    _, key = await _account(api, "alpha")
    for bot in ("14", "15"):
        await api.post("/v1/bots", json={"id": bot, "username": "b"}, headers=_auth(key))
    named = (await _key(api, key, name="n", scope="ingest"))["key"]
    resp = await api.get("/bots/14/keys/regen", headers=_auth(key))
    assert resp.status == 405 and resp.headers["Allow"] == "POST"
    assert "POST" in (await resp.json())["message"]
    assert len((await (await api.get("/v1/account/keys", headers=_auth(key))).json())["keys"]) == 2

    first = await (await api.post("/bots/14/keys/regen", headers=_auth(key))).json()
    assert set(first) == {"token", "id", "scope", "bots"} and first["bots"] == ["14"]
    other_bot = await (await api.post("/bots/15/keys/regen", headers=_auth(key))).json()
    second = await (await api.post("/bots/14/keys/regen", headers=_auth(key))).json()
    assert second["token"] != first["token"]
    gateway = await _client(ingest_app.build_app(make_settings(**ROOMY)))
    try:
        post = gateway.post
        assert (await post("/v1/bot/14", json={"guilds": 1}, headers=_auth(first["token"]))).status == 401
        assert (await post("/v1/bot/14", json={"guilds": 1}, headers=_auth(second["token"]))).status == 204
        # The token posts for its own bot only; every other key still works.
        resp = await post("/v1/bot/15", json={"guilds": 1}, headers=_auth(second["token"]))
        assert resp.status == 403 and "limited to other bots" in (await resp.json())["message"]
        for other_key in (key, named, other_bot["token"]):
            assert (await post("/v1/bot/15", json={"guilds": 1}, headers=_auth(other_key))).status == 204
    finally:
        await gateway.close()
    tokens = [
        k for k in (await (await api.get("/v1/account/keys", headers=_auth(key))).json())["keys"] if k["bot"]
    ]
    assert sorted((k["bot"], k["id"]) for k in tokens) == sorted(
        [("14", second["id"]), ("15", other_bot["id"])]
    )


async def test_last_used_is_kept_in_memory_then_redis_then_clickhouse(api, make_settings, store, redis):
    start = int(time.time() * 1000)
    account, key = await _account(api, "alpha")
    await api.post("/v1/bots", json={"id": "16", "username": "b"}, headers=_auth(key))
    ingest = await _key(api, key, name="i", scope="ingest")
    gateway = await _client(ingest_app.build_app(make_settings(**ROOMY)))
    try:
        before = int(time.time() * 1000)
        for _ in range(5):
            assert (
                await gateway.post("/v1/bot/16", json={"guilds": 1}, headers=_auth(ingest["key"]))
            ).status == 204
        # Nothing is written per post: the times wait in the process until its flush.
        assert await redis.hget(USED_KEY, ingest["id"]) is None
        await gateway.app[ingest_app.REGISTRY].flush_usage()
        assert int(await redis.hget(USED_KEY, ingest["id"])) >= before
    finally:
        await gateway.close()
    await api.app[query_app.REGISTRY].flush_usage()  # the query process's own use of the account key
    keys = {
        k["id"]: k for k in (await (await api.get("/v1/account/keys", headers=_auth(key))).json())["keys"]
    }
    assert keys[ingest["id"]]["lastUsedAt"] >= before
    assert keys["account"]["lastUsedAt"] >= start
    assert await apikeys.flush_usage(store, redis) >= 2
    await redis.delete(USED_KEY)
    used = await apikeys.last_used(store, redis, [ingest["id"], account])
    assert used[ingest["id"]] >= before and used[account] >= start


# --- the BOLA matrix --------------------------------------------------------------------------------
POST, READ, MANAGE = "post", "read", "manage"
SCOPE_OF = {"account": "manage", "manage": "manage", "read": "read", "ingest": "ingest",
            "ingest_one": "ingest", "bot_token": "ingest"}  # fmt: skip


@dataclass
class World:
    accounts: dict[str, str] = field(default_factory=dict)  # A/B -> account id
    keys: dict[tuple[str, str], str] = field(default_factory=dict)  # (owner, kind) -> key
    key_ids: dict[tuple[str, str], str] = field(default_factory=dict)
    bots: dict[str, tuple[str, bool]] = field(default_factory=dict)  # bot -> (owner, private)


async def _world(api: TestClient) -> World:
    w = World()
    for owner, public, private in (("A", "1001", "1002"), ("B", "2001", "2002")):
        account, key = await _account(api, owner)
        w.accounts[owner] = account
        w.keys[(owner, "account")] = key
        for bot, is_private in ((public, False), (private, True)):
            body = {"id": bot, "username": f"{owner} {bot}", "private": is_private}
            assert (await api.post("/v1/bots", json=body, headers=_auth(key))).status == 201
            w.bots[bot] = (owner, is_private)
        for kind, body in (
            ("manage", {"name": "m", "scope": "manage"}),
            ("read", {"name": "r", "scope": "read"}),
            ("ingest", {"name": "i", "scope": "ingest"}),
            ("ingest_one", {"name": "i1", "scope": "ingest", "bots": [public]}),
        ):
            made = await _key(api, key, **body)
            w.keys[(owner, kind)], w.key_ids[(owner, kind)] = made["key"], made["id"]
        token = await (await api.post(f"/bots/{private}/keys/regen", headers=_auth(key))).json()
        w.keys[(owner, "bot_token")], w.key_ids[(owner, "bot_token")] = token["token"], token["id"]
    return w


def _expected(
    w: World, action: str, holder: str | None, kind: str | None, bot: str, datagram: bool = False
) -> int:
    """The status every (key, bot, action) must get: success is 2xx, written here as 200."""
    owner, private = w.bots[bot]
    if kind in (None, "bogus"):
        if action == READ and not datagram:
            return 404 if private else 200  # anonymous: public bots only
        return 401
    scope = SCOPE_OF[kind]
    if action == POST:
        if scope == "read" or holder != owner:
            return 403
        if kind == "ingest_one" and bot != f"{'1' if owner == 'A' else '2'}001":
            return 403
        if kind == "bot_token" and bot != f"{'1' if owner == 'A' else '2'}002":
            return 403
        return 200
    if action == READ:
        if scope == "ingest":
            return 403
        if datagram:
            return 200 if holder == owner else 404
        return 404 if private and holder != owner else 200
    if scope != "manage":
        return 403
    return 200 if holder == owner else 400  # DBots answers 400 "Bot not manageable"


def _ok(status: int) -> int:
    return 200 if 200 <= status < 300 else status


def _statcord(bot: str, key: str | None) -> dict[str, object]:
    return {"id": bot, "key": key or "", "servers": "3", "users": "10", "memactive": "1", "memload": "50"}


async def test_bola_matrix_every_route_every_key_kind(api, make_settings, store):
    w = await _world(api)
    gateway = await _client(ingest_app.build_app(make_settings(**ROOMY)))
    holders: list[tuple[str | None, str | None]] = [(None, None), (None, "bogus")]
    holders += [(h, k) for h in ("A", "B") for k in SCOPE_OF]
    failures: list[str] = []

    def key_of(holder: str | None, kind: str | None) -> str | None:
        if kind == "bogus":
            return "DS-" + "x" * 43
        return w.keys[(holder, kind)] if holder and kind else None

    async def check(action: str, label: str, status: int, holder, kind, bot, datagram: bool = False) -> None:  # type: ignore[no-untyped-def]
        want = _expected(w, action, holder, kind, bot, datagram)
        if _ok(status) != want:
            failures.append(f"{label} bot={bot} key={holder}/{kind}: {status}, expected {want}")

    try:
        for bot in w.bots:
            for holder, kind in holders:
                key = key_of(holder, kind)
                h = _auth(key)
                # post: every gateway route
                for path, body in (
                    (f"/v1/bot/{bot}", {"guilds": 1}),
                    (f"/v1/bot/{bot}", {"guilds": 1, "shardId": 0}),  # one shard's post
                    (f"/v1/bot/{bot}/custom", {"type": "cmd", "value1": "x"}),
                    (f"/bots/{bot}/stats", {"guildCount": 1}),
                    (f"/bots/{bot}/stats", {"guildCount": 1, "shardId": 1}),
                    (f"/api/v1/bots/{bot}/stats", {"guildCount": 1}),  # DBots' base path
                ):
                    resp = await gateway.post(path, json=body, headers=h)
                    await check(POST, f"POST {path}", resp.status, holder, kind, bot)
                resp = await gateway.post("/v3/stats", json=_statcord(bot, key))
                if key is None:  # Statcord's body must carry a key: a 400 naming it
                    if (resp.status, (await resp.json()).get("field")) != (400, "key"):
                        failures.append(f"POST /v3/stats without a key: {resp.status}")
                else:
                    await check(POST, "POST /v3/stats", resp.status, holder, kind, bot)
                # read: every per-bot read route
                for path in (f"/v1/bot/{bot}", f"/v1/bot/{bot}/uptime", f"/v1/bot/{bot}/top?type=cmd",
                             f"/v1/bot/{bot}?returnStats=true", f"/v1/bot/{bot}/shards",
                             f"/v1/bot/{bot}/shards/uptime"):  # fmt: skip
                    resp = await api.get(path, headers=h)
                    await check(READ, f"GET {path}", resp.status, holder, kind, bot)
                for path in (
                    f"/api/v1/uptime?partner_node_id={bot}",
                    f"/api/v1/partner/detail?partner_node_id={bot}",
                ):
                    resp = await api.get(path, headers=h)
                    await check(READ, f"GET {path}", resp.status, holder, kind, bot, datagram=True)
                # manage: every per-bot account route (the rotation last: it replaces a token)
                for method, path, body in (
                    ("PATCH", f"/v1/bot/{bot}", {"username": f"renamed {bot}"}),
                    ("GET", f"/bots/{bot}/log", None),
                    ("GET", f"/bots/{bot}/api", None),
                    ("PATCH", f"/bots/{bot}/api", {"voteWebhookURL": None}),
                    ("POST", f"/bots/{bot}/keys/regen", None),
                ):
                    resp = await api.request(method, path, json=body, headers=h)
                    await check(MANAGE, f"{method} {path}", resp.status, holder, kind, bot)
                    if resp.status == 200 and path.endswith("/keys/regen"):
                        if w.bots[bot][1]:  # the matrix's bot token is the private bot's: follow it
                            w.keys[(holder, "bot_token")] = (await resp.json())["token"]
                        await asyncio.sleep(0.3)  # let the gateway's cache see the new token

        # Listings: a read or manage key sees its own private bots and no one else's, whichever
        # listing route and however the key travels (Rocket.Chat clients send X-Auth-Token).
        listings = (
            ("/v1/bots", {"count": "100"}, "bots", "id", False),
            ("/v1/bots/search", {"q": "0", "count": "100"}, "bots", "id", False),
            ("/api/v1/statistics.list", {"count": "100"}, "statistics", "_id", False),
            ("/api/v1/statistics.list", {"count": "100"}, "statistics", "_id", True),
        )
        for holder, kind in holders:
            key = key_of(holder, kind)
            scope = SCOPE_OF.get(kind or "", "")
            want = {b for b, (owner, private) in w.bots.items() if not private or (scope and owner == holder)}
            for path, query, records, id_name, rocket in listings:
                label = f"GET {path}{' (X-Auth-Token)' if rocket else ''} key={holder}/{kind}"
                headers = _auth(key)
                if rocket:
                    headers = {"X-Auth-Token": key} if key else {}
                    if holder:
                        headers["X-User-Id"] = w.accounts[holder]
                resp = await api.get(path, params=query, headers=headers)
                if scope == "ingest":
                    if resp.status != 403:
                        failures.append(f"{label}: {resp.status}, expected 403")
                    continue
                if rocket and kind == "bogus":
                    if resp.status != 401:
                        failures.append(f"{label}: {resp.status}, expected 401")
                    continue
                ids = {b[id_name] for b in (await resp.json())[records]}
                if ids != want:
                    failures.append(f"{label}: {sorted(ids)}, expected {sorted(want)}")
            for query in ({}, {"metric": "users", "period": "day"}, {"metric": "guilds", "per": "shards"}):
                top = await (await api.get("/v1/top", params=query, headers=_auth(key))).json()
                if {b["id"] for b in top["bots"]} - {"1001", "2001"}:
                    failures.append(f"GET /v1/top {query} key={holder}/{kind} lists a private bot: {top}")

        # Account routes: only a manage key of the account; never another account's keys.
        for holder, kind in holders[2:]:
            key = key_of(holder, kind)
            scope = SCOPE_OF[kind]  # type: ignore[index]
            other = "B" if holder == "A" else "A"
            for method, path, body, ok_scopes, want_ok in (
                ("GET", "/v1/account", None, ("read", "manage"), 200),
                ("GET", "/v1/account/keys", None, ("manage",), 200),
                ("POST", "/v1/account/keys", {"name": "x", "scope": "read"}, ("manage",), 201),
                ("POST", "/v1/bots", {"id": f"9{holder}{kind}", "username": "n"}, ("manage",), 201),
                ("DELETE", f"/v1/account/keys/{w.key_ids[(other, 'read')]}", None, ("manage",), 404),
                ("POST", "/v1/bots", {"id": "1001", "username": "taken"}, ("manage",), 409),
            ):
                resp = await api.request(method, path, json=body, headers=_auth(key))
                want = want_ok if scope in ok_scopes else 403
                if resp.status != want:
                    failures.append(f"{method} {path} key={holder}/{kind}: {resp.status}, expected {want}")
                if resp.status == 200 and path == "/v1/account":
                    mine = {b["id"] for b in (await resp.json())["bots"]}
                    if any(w.bots.get(b, (holder,))[0] != holder for b in mine):
                        failures.append(f"GET /v1/account key={holder}/{kind} lists another account's bot")
        # Regenerating the account key: refused for every non-manage key (the success is tested above).
        for holder, kind in holders[2:]:
            if SCOPE_OF[kind] != "manage":  # type: ignore[index]
                resp = await api.post("/v1/account/key/regenerate", headers=_auth(key_of(holder, kind)))
                if resp.status != 403:
                    failures.append(f"POST /v1/account/key/regenerate key={holder}/{kind}: {resp.status}")
        failures += await _alerts_matrix(api, w, holders, key_of)
    finally:
        await gateway.close()
    assert not failures, "\n".join(failures)
    # Nothing of B's changed through A's keys: B's other keys are all alive.
    for kind in ("manage", "read", "ingest", "ingest_one"):
        assert await api.app[query_app.REGISTRY].credential(w.keys[("B", kind)]) is not None


async def _alerts_matrix(api: TestClient, w: World, holders, key_of) -> list[str]:  # type: ignore[no-untyped-def]
    """Every /v1/alerts route x every kind of key: reading takes read or manage, every change
    manage; another account's rule or destination is 404 (as if it did not exist), its bot 400
    "Bot not manageable" (as for the bot routes above); no key or a bogus one 401. Afterwards each
    account's own rule and destination are as they were."""
    failures: list[str] = []
    rules: dict[str, str] = {}
    dests: dict[str, str] = {}
    for owner, bot in (("A", "1001"), ("B", "2001")):
        h = _auth(w.keys[(owner, "account")])
        body = {"name": f"{owner} hook", "type": "webhook", "url": "http://127.0.0.1:9/hook"}
        resp = await api.post("/v1/alerts/destinations", json=body, headers=h)
        assert resp.status == 201, await resp.text()
        dests[owner] = (await resp.json())["id"]
        body = {"name": f"{owner} down", "bot": bot, "kind": "offline", "destinations": [dests[owner]]}
        resp = await api.post("/v1/alerts/rules", json=body, headers=h)
        assert resp.status == 201, await resp.text()
        rules[owner] = (await resp.json())["id"]

    for holder, kind in holders:
        key = key_of(holder, kind)
        h = _auth(key)
        scope = SCOPE_OF.get(kind or "", "")
        mine, theirs = (holder, "B" if holder == "A" else "A") if holder else ("A", "B")
        own_bot = f"{'1' if mine == 'A' else '2'}001"
        other_bot = f"{'2' if mine == 'A' else '1'}001"

        def want(action: str, ok: int, foreign: bool = False, *, scope: str = scope) -> int:
            if not scope:
                return 401
            if scope == "ingest" or (action == MANAGE and scope != "manage"):
                return 403
            return 404 if foreign else ok

        def offline(bot: str, destination: str) -> dict[str, object]:
            return {"name": "n", "bot": bot, "kind": "offline", "destinations": [destination]}

        cases: list[tuple[str, str, object, int]] = [
            ("GET", "/v1/alerts/rules", None, want(READ, 200)),
            ("GET", "/v1/alerts/destinations", None, want(READ, 200)),
            ("GET", f"/v1/alerts/rules/{rules[mine]}", None, want(READ, 200)),
            ("GET", f"/v1/alerts/rules/{rules[mine]}/deliveries", None, want(READ, 200)),
            ("GET", f"/v1/alerts/rules/{rules[theirs]}", None, want(READ, 200, True)),
            ("GET", f"/v1/alerts/rules/{rules[theirs]}/deliveries", None, want(READ, 200, True)),
            ("PATCH", f"/v1/alerts/rules/{rules[theirs]}", {"name": "stolen"}, want(MANAGE, 200, True)),
            ("PATCH", f"/v1/alerts/rules/{rules[mine]}", {"muted": False}, want(MANAGE, 200)),
            ("DELETE", f"/v1/alerts/rules/{rules[theirs]}", None, want(MANAGE, 204, True)),
            ("DELETE", f"/v1/alerts/destinations/{dests[theirs]}", None, want(MANAGE, 204, True)),
            ("POST", "/v1/alerts/rules", offline(own_bot, dests[mine]), want(MANAGE, 201)),
            ("POST", "/v1/alerts/rules", offline(other_bot, dests[mine]), want(MANAGE, 400)),
            ("POST", "/v1/alerts/rules", offline(own_bot, dests[theirs]), want(MANAGE, 400)),
            ("POST", "/v1/alerts/destinations", {"name": "n", "type": "webhook", "url": "http://127.0.0.1:9/x"},
             want(MANAGE, 201)),
        ]  # fmt: skip
        for method, path, body, expected in cases:
            resp = await api.request(method, path, json=body, headers=h)
            if resp.status != expected:
                failures.append(f"{method} {path} key={holder}/{kind}: {resp.status}, expected {expected}")
                continue
            if (
                resp.status == 200
                and method == "GET"
                and path in ("/v1/alerts/rules", "/v1/alerts/destinations")
            ):
                listed = next(iter((await resp.json()).values()))
                ids = {item["id"] for item in listed}
                if rules[theirs] in ids or dests[theirs] in ids:
                    failures.append(f"GET {path} key={holder}/{kind} lists another account's: {sorted(ids)}")
                if not ids & {rules[mine], dests[mine]}:
                    failures.append(f"GET {path} key={holder}/{kind} misses the account's own")

    for owner in ("A", "B"):
        h = _auth(w.keys[(owner, "account")])
        resp = await api.get(f"/v1/alerts/rules/{rules[owner]}", headers=h)
        if resp.status != 200 or (await resp.json())["name"] != f"{owner} down":
            failures.append(f"{owner}'s rule changed through another account's key: {await resp.text()}")
        listed = (await (await api.get("/v1/alerts/destinations", headers=h)).json())["destinations"]
        if dests[owner] not in {d["id"] for d in listed}:
            failures.append(f"{owner}'s destination was removed through another account's key")
    return failures
