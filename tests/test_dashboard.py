"""The dashboard over HTTP on real parts (valkey, chDB): sign-in and sessions, CSRF, settings
with the API's validation messages, badges, export, status pages, escaping and headers. The
browser flows are in test_dashboard_browser.py."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import markupsafe
import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from botpulse.query.app import build_app
from botpulse.query.dashboard import export, sessions
from botpulse.registry import apikeys
from botpulse.registry.catalog import Bot, create_account, now, regenerate_key, write_bot
from botpulse.schemas.alerts import DeliveryEntry, log_key
from botpulse.workers.rows import STATS_COLUMNS
from tests.test_query_stats import stat

HOSTILE = "<img src=x onerror=alert(1)>"
MIN = 60_000


class World(msgspec.Struct):
    client: TestClient
    store: Any
    redis: Any
    account: str
    key: str
    other_key: str
    prefix: str


async def _world(make_settings, store, redis, **overrides: Any) -> World:  # type: ignore[no-untyped-def]
    settings = make_settings(**overrides)
    acc, key = await create_account(store, redis, "one")
    _other, other_key = await create_account(store, redis, "two")
    created = now()
    await write_bot(store, redis, Bot("100", acc.id, "Public Bot", None, False, 10, None, created))
    await write_bot(store, redis, Bot("200", acc.id, "Secret Bot", None, True, 10, None, created))
    await write_bot(
        store,
        redis,
        Bot("300", acc.id, HOSTILE, 'https://x.test/a.png" onerror="alert(2)', False, 10, None, created),
    )
    client = TestClient(TestServer(build_app(settings, store), host="127.0.0.1"))
    await client.start_server()
    return World(client, store, redis, acc.id, key, other_key, settings.query_prefix)


@pytest.fixture
async def world(make_settings, store, redis) -> AsyncIterator[World]:  # type: ignore[no-untyped-def]
    w = await _world(make_settings, store, redis)
    yield w
    await w.client.close()


async def signin(w: World, key: str, headers: dict[str, str] | None = None) -> Any:
    page = await w.client.get(f"{w.prefix}/dashboard/signin", headers=headers or {})
    token = re.search(r'name="csrf" value="([^"]+)"', await page.text()).group(1)  # type: ignore[union-attr]
    return await w.client.post(
        f"{w.prefix}/dashboard/signin",
        data={"csrf": token, "key": key, "next": ""},
        allow_redirects=False,
        headers=headers or {},
    )


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]


def nonce_of(html: str) -> str:
    """The key regeneration form's nonce (taken once: the same form posted again is refused)."""
    return re.search(r'name="nonce" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]


async def test_signin_sets_a_strict_httponly_session_and_reads_private_bots_through_the_api(world):
    c = world.client
    assert (await c.get("/v1/bot/200")).status == 404  # anonymous: private is not found
    resp = await signin(world, world.key)
    assert resp.status == 303 and resp.headers["Location"] == "/dashboard"
    cookie = next(v for v in resp.headers.getall("Set-Cookie") if v.startswith("bp_session="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http, no trusted proxy
    assert world.key not in cookie
    # The session is a credential on the API's GET routes: the owner reads the private bot.
    resp = await c.get("/v1/bot/200")
    assert resp.status == 200 and (await resp.json())["username"] == "Secret Bot"
    page = await c.get("/dashboard")
    html = await page.text()
    assert page.status == 200 and "Secret Bot" in html and "Public Bot" in html
    # ... but never a credential for writes.
    resp = await c.patch("/v1/bot/100", json={"username": "x"})
    assert resp.status == 401


async def test_wrong_key_says_so_and_is_rate_limited(make_settings, store, redis):
    w = await _world(make_settings, store, redis, signin_max_failures=3)
    try:
        for _ in range(3):
            resp = await signin(w, "DS-wrong")
            assert resp.status == 401
            assert "That key is not a key of any account." in await resp.text()
        resp = await signin(w, w.key)  # even the right key waits now: the address is blocked
        assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
        assert "Too many wrong keys" in await resp.text()
        assert "bp_session=" not in " ".join(resp.headers.getall("Set-Cookie", []))
    finally:
        await w.client.close()


async def test_signin_form_without_its_token_is_refused(world):
    resp = await world.client.post(
        "/dashboard/signin", data={"csrf": "forged", "key": world.key}, allow_redirects=False
    )
    assert resp.status == 403
    assert (await world.client.get("/dashboard", allow_redirects=False)).status == 303


async def test_secure_cookie_only_when_a_trusted_proxy_says_https(make_settings, store, redis):
    proto = {"X-Forwarded-Proto": "https"}
    w = await _world(make_settings, store, redis)
    try:
        resp = await signin(w, w.key, proto)
        assert "Secure" not in next(v for v in resp.headers.getall("Set-Cookie") if "bp_session" in v)
    finally:
        await w.client.close()
    w = await _world(make_settings, store, redis, trust_proxy=True)
    try:
        page = await w.client.get("/dashboard/signin", headers=proto)
        token = csrf_of(await page.text())
        assert "Secure" in next(v for v in page.headers.getall("Set-Cookie") if "bp_signin" in v)
        # (the test client keeps Secure cookies to itself over http: the form's cookie goes by hand)
        resp = await w.client.post(
            "/dashboard/signin",
            data={"csrf": token, "key": w.key},
            headers={**proto, "Cookie": f"bp_signin={token}"},
            allow_redirects=False,
        )
        assert resp.status == 303, await resp.text()
        assert "Secure" in next(v for v in resp.headers.getall("Set-Cookie") if "bp_session" in v)
    finally:
        await w.client.close()


async def test_session_ends_on_key_regeneration_signout_and_absolute_expiry(world):
    c = world.client
    assert (await signin(world, world.key)).status == 303
    assert (await c.get("/v1/bot/200")).status == 200
    await regenerate_key(world.store, world.redis, world.account)  # e.g. from the CLI
    await _until_status(c, "/v1/bot/200", 404)
    assert (await c.get("/dashboard", allow_redirects=False)).status == 303

    # sign-out
    _, new_key = await regenerate_key(world.store, world.redis, world.account)
    await _until_signed_in(world, new_key)
    html = await (await c.get("/dashboard")).text()
    resp = await c.post("/dashboard/signout", data={"csrf": csrf_of(html)}, allow_redirects=False)
    assert resp.status == 303
    assert (await c.get("/v1/bot/200")).status == 404

    # absolute expiry: a session older than BOTPULSE_SESSION_MAX_S is refused however active
    assert (await signin(world, new_key)).status == 303
    [entry] = [k async for k in world.redis.scan_iter(match="bp:sess:*")]
    raw = msgspec.msgpack.decode(await world.redis.get(entry), type=sessions.Session)
    raw.started = time.time() - 604_801
    await world.redis.set(entry, msgspec.msgpack.encode(raw), keepttl=True)
    assert (await c.get("/v1/bot/200")).status == 404
    assert await world.redis.exists(entry) == 0
    # idle expiry is the entry's TTL, renewed on use
    assert (await signin(world, new_key)).status == 303
    [entry] = [k async for k in world.redis.scan_iter(match="bp:sess:*")]
    assert 0 < await world.redis.ttl(entry) <= 43_200


async def test_redis_holds_only_hashes_of_the_sessions_secrets(world):
    c = world.client
    await signin(world, world.key)
    token = next(m.value for m in c.session.cookie_jar if m.key == sessions.COOKIE)
    csrf = csrf_of(await (await c.get("/dashboard")).text())
    [entry] = [k async for k in world.redis.scan_iter(match="bp:sess:*")]
    stored = await world.redis.get(entry)
    for secret in (token, csrf, world.key):
        assert secret.encode() not in entry and secret.encode() not in stored
    assert csrf == sessions.csrf_for(token)  # derived from the cookie on each request, not kept


async def test_a_session_acts_with_its_keys_scope(world):
    """A read key: every view of its account's bots (private too), nothing that changes state.
    An ingest key (all bots, one bot, or a bot's token) opens no session: the API never lets it
    read. A named manage key's session outlives an account key regeneration; revoking the key
    ends it."""
    c, store, redis = world.client, world.store, world.redis
    read, read_key = await apikeys.create_key(
        store, redis, world.account, "ro", "read", by="t", max_keys=None
    )
    _, one_bot = await apikeys.create_key(store, redis, world.account, "i1", "ingest", ("100",), by="t",
                                          max_keys=None)  # fmt: skip
    _, token = await apikeys.rotate_bot_token(store, redis, world.account, "100", by="t")
    for ingest in (one_bot, token):
        resp = await signin(world, ingest)
        assert resp.status == 403
        text = await resp.text()
        assert "ingest scope" in text and "read or manage scope" in text
        assert "bp_session=" not in " ".join(resp.headers.getall("Set-Cookie", []))

    assert (await signin(world, read_key)).status == 303
    html = await (await c.get("/dashboard")).text()
    assert "Secret Bot" in html and 'id="read-only"' in html
    page = await c.get("/dashboard/bot/200")
    assert page.status == 200 and 'id="settings-link"' not in await page.text()
    assert (await c.get("/v1/bot/200")).status == 200
    assert (await c.get("/v1/bot/200/export")).status == 200
    csrf = csrf_of(html)
    for path, data in (
        ("/dashboard/bot/100/settings", {"csrf": csrf, "action": "bot", "username": "x"}),
        ("/dashboard/account/key", {"csrf": csrf}),
        ("/dashboard/status-page", {"csrf": csrf, "slug": "ro-page", "title": "x"}),
    ):
        resp = await c.post(path, data=data)
        text = await resp.text()
        assert resp.status == 403, path
        assert "read scope" in text and "manage scope" in text and "read-only" in text, path
    assert (await c.get("/dashboard/bot/100/settings")).status == 403
    assert (await (await c.get("/v1/bot/100")).json())["username"] == "Public Bot"
    await apikeys.revoke_key(store, redis, world.account, read.id, by="t")
    await _until_status(c, "/v1/bot/200", 404)
    assert (await c.get("/dashboard", allow_redirects=False)).status == 303

    manage, manage_key = await apikeys.create_key(store, redis, world.account, "m", "manage", by="t",
                                                  max_keys=None)  # fmt: skip
    await _until_signed_in(world, manage_key)
    html = await (await c.get("/dashboard/bot/100/settings")).text()
    resp = await c.post("/dashboard/account/key", data={"csrf": csrf_of(html), "nonce": nonce_of(html)})
    assert resp.status == 200
    assert (await c.get("/dashboard/bot/100/settings")).status == 200  # still its own key's session
    await apikeys.revoke_key(store, redis, world.account, manage.id, by="t")
    await _until_status(c, "/v1/bot/200", 404)


async def test_dashboard_writes_count_against_the_accounts_registry_writes(make_settings, store, redis):
    w = await _world(make_settings, store, redis, registry_writes_per_min=1)
    try:
        await signin(w, w.key)
        token = csrf_of(await (await w.client.get("/dashboard/bot/100/settings")).text())
        form = {"csrf": token, "action": "bot", "username": "Once"}
        assert (
            await w.client.post("/dashboard/bot/100/settings", data=form, allow_redirects=False)
        ).status == 303
        resp = await w.client.post("/dashboard/bot/100/settings", data=form | {"username": "Twice"})
        assert resp.status == 429 and "Too many registry changes" in await resp.text()
        assert (await (await w.client.get("/v1/bot/100")).json())["username"] == "Once"
    finally:
        await w.client.close()


async def _until_status(c: TestClient, path: str, status: int) -> None:
    deadline = time.monotonic() + 5
    while (await c.get(path)).status != status:
        assert time.monotonic() < deadline, f"{path} never answered {status}"
        await _sleep()


async def _until_signed_in(w: World, key: str) -> None:
    deadline = time.monotonic() + 5
    while (await signin(w, key)).status != 303:
        assert time.monotonic() < deadline
        await _sleep()


async def _sleep() -> None:
    import asyncio

    await asyncio.sleep(0.05)


async def test_settings_forms_need_the_csrf_token_and_show_the_apis_messages(world):
    c = world.client
    await signin(world, world.key)
    resp = await c.post("/dashboard/bot/100/settings", data={"action": "bot", "username": "Hacked"})
    assert resp.status == 403
    resp = await c.post("/dashboard/account/key", data={"csrf": "nope"})
    assert resp.status == 403
    html = await (await c.get("/dashboard/bot/100/settings")).text()
    token = csrf_of(html)
    resp = await c.post(
        "/dashboard/bot/100/settings",
        data={"csrf": token, "action": "bot", "username": "Public Bot", "avatar": "javascript:alert(1)"},
    )
    assert resp.status == 400
    text = await resp.text()
    shown = r'data-error-for="avatar"[^>]*>Invalid `avatar`: expected an http or https URL'
    assert re.search(shown, text), text
    resp = await c.post(
        "/dashboard/bot/100/settings",
        data={"csrf": token, "action": "bot", "username": "Renamed", "avatar": "https://cdn.test/a.png"},
        allow_redirects=False,
    )
    assert resp.status == 303
    body = await (await c.get("/v1/bot/100")).json()
    assert body["username"] == "Renamed" and body["avatar"] == "https://cdn.test/a.png"
    assert body["private"] is False  # unchecked box: stays public
    resp = await c.post(
        "/dashboard/bot/100/settings", data={"csrf": token, "action": "webhook", "voteWebhookURL": "ftp://x"}
    )
    assert resp.status == 400 and 'data-error-for="voteWebhookURL"' in await resp.text()
    # another account's bot is not found, even signed in
    await c.post("/dashboard/signout", data={"csrf": token})
    await signin(world, world.other_key)
    assert (await c.get("/dashboard/bot/100/settings")).status == 404
    assert (await c.get("/dashboard/bot/200")).status == 404


async def test_regenerating_in_the_dashboard_shows_the_key_once_and_keeps_this_session(world):
    c = world.client
    await signin(world, world.key)
    html = await (await c.get("/dashboard/bot/100/settings")).text()
    resp = await c.post("/dashboard/account/key", data={"csrf": csrf_of(html), "nonce": nonce_of(html)})
    text = await resp.text()
    new_key = re.search(r'id="new-key" value="(DS-[^"]+)"', text).group(1)  # type: ignore[union-attr]
    assert resp.headers["Cache-Control"] == "private, no-store"
    assert (await c.get("/v1/bot/200")).status == 200  # this session follows the new key
    assert (await c.get("/v1/bot/200", headers={"Authorization": world.key})).status == 404
    assert (await c.get("/v1/bot/200", headers={"Authorization": new_key})).status == 200
    assert new_key not in await (await c.get("/dashboard/bot/100/settings")).text()


async def test_pages_escape_hostile_names_and_avatars_and_send_the_csp(world):
    c = world.client
    await signin(world, world.key)
    for path in ("/dashboard", "/dashboard/bot/300", "/dashboard/bot/300/settings", "/dashboard/signin"):
        resp = await c.get(path)
        assert resp.status == 200, path
        csp = resp.headers["Content-Security-Policy"]
        assert csp.startswith("default-src 'self'") and "unsafe-inline" not in csp
        html = await resp.text()
        assert HOSTILE not in html and "<script>" not in html and not re.search(r"<script(?![^>]*src=)", html)
        assert 'onerror="alert(2)' not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in await (await c.get("/dashboard/bot/300")).text()


async def test_every_page_and_asset_works_under_the_prefix(make_settings, store, redis):
    w = await _world(make_settings, store, redis, query_prefix="/stats")
    try:
        assert (await signin(w, w.key)).headers["Location"] == "/stats/dashboard"
        html = await (await w.client.get("/stats/dashboard/bot/100")).text()
        assets = re.findall(r'(?:src|href)="(/stats/dashboard/assets/[^"]+)"', html)
        assert len(assets) == 4
        for url in assets:
            resp = await w.client.get(url)
            assert resp.status == 200 and resp.headers["Cache-Control"].endswith("immutable")
        assert 'data-base="/stats"' in html
        assert (await w.client.get("/stats/badge/100/status.svg")).status == 200
        assert (await w.client.get("/stats/v1/bot/100/export")).status == 200
        assert (await w.client.get("/dashboard")).status == 404
    finally:
        await w.client.close()


# --- badges -----------------------------------------------------------------------------------
async def test_badges_headers_etag_privacy_and_escaping(world):
    c = world.client
    t = int(time.time() * 1000)
    await world.store.insert("bot_stats", [stat("100", t - MIN, guilds=1234, users=5_600_000)], STATS_COLUMNS)
    resp = await c.get("/badge/100/guilds.svg")
    svg = await resp.text()
    assert resp.status == 200 and resp.content_type == "image/svg+xml"
    assert resp.headers["Cache-Control"] == "public, max-age=60"
    assert ">1.2k<" in svg and ">guilds<" in svg
    again = await c.get("/badge/100/guilds.svg", headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status == 304
    assert ">5.6M<" in await (await c.get("/badge/100/users.svg")).text()
    assert ">online<" in await (await c.get("/badge/100/status.svg?style=flat-square")).text()
    uptime = await (await c.get("/badge/100/uptime-24h.svg")).text()
    assert re.search(r">0\.0\d+%<", uptime) and "#e05d44" in uptime  # one post: about a minute of 24 h
    for path in ("/badge/200/guilds.svg", "/badge/nope/guilds.svg"):
        resp = await c.get(path, headers={"Authorization": world.key})
        grey = await resp.text()
        assert resp.status == 404 and resp.content_type == "image/svg+xml"  # private and unknown alike
        assert ">unknown<" in grey and "#9f9f9f" in grey and "1.2k" not in grey
    hostile = await (await c.get("/badge/100/status.svg", params={"label": HOSTILE})).text()
    assert HOSTILE not in hostile and "&lt;img src=x onerror=alert(1)&gt;" in hostile
    assert (await c.get("/badge/100/status.svg?style=plastic")).status == 400
    assert (await c.get("/badge/100/nope.svg")).status == 404


async def test_badge_text_is_measured_so_a_long_label_widens_the_badge(world):
    short = await (await world.client.get("/badge/100/status.svg?label=a")).text()
    long = await (await world.client.get("/badge/100/status.svg?label=WWWWWWWWWW")).text()
    width = lambda svg: int(re.search(r'<svg[^>]* width="(\d+)"', svg).group(1))  # noqa: E731
    label_box = lambda svg: int(re.search(r'<rect width="(\d+)" height="20" fill="#555"', svg).group(1))  # noqa: E731
    assert width(long) > width(short)
    assert label_box(long) >= 10 * 11 * 0.8  # ten W's at 11 px are wider than 88 px


async def test_a_burst_of_badge_requests_reads_clickhouse_once_per_cache_period(make_settings, store, redis):
    import asyncio

    w = await _world(make_settings, store, redis, public_cache_s=2)
    try:
        t = int(time.time() * 1000)
        await store.insert("bot_stats", [stat("100", t - 2 * MIN, guilds=10)], STATS_COLUMNS)
        answers = await asyncio.gather(*(w.client.get("/badge/100/guilds.svg") for _ in range(20)))
        texts = [await a.text() for a in answers]
        assert all(">10<" in text for text in texts)
        await store.insert("bot_stats", [stat("100", t - MIN, guilds=20)], STATS_COLUMNS)
        assert ">10<" in await (await w.client.get("/badge/100/guilds.svg")).text()  # cached
        await asyncio.sleep(2.1)
        assert ">20<" in await (await w.client.get("/badge/100/guilds.svg")).text()  # fresh again
    finally:
        await w.client.close()


# --- export -----------------------------------------------------------------------------------
async def test_export_buckets_match_the_api_and_posts_stream_in_pages(world, monkeypatch):
    c = world.client
    t0 = (int(time.time() * 1000) // MIN - 200) * MIN
    rows = [stat("100", t0 + i * MIN, guilds=i, users=2 * i, custom={"votes": float(i)}) for i in range(120)]
    rows.append(stat("100", t0 + 5 * MIN, guilds=5, users=10))  # same ms as another post
    await world.store.insert("bot_stats", rows, STATS_COLUMNS)
    q = {"start": str(t0), "end": str(t0 + 120 * MIN), "dataPoints": "12"}
    api = (await (await c.get("/v1/bot/100", params={**q, "returnStats": "true"})).json())["stats"]
    jsonl = await (await c.get("/v1/bot/100/export", params={**q, "format": "jsonl"})).text()
    assert [json.loads(line) for line in jsonl.splitlines()] == api
    resp = await c.get("/v1/bot/100/export", params=q)
    assert resp.headers["Content-Type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(await resp.text())))
    assert [int(r["timestamp"]) for r in table] == [b["time"] for b in api]
    assert [r["guilds"] for r in table] == [str(b["guilds"]) for b in api]
    assert table[0]["custom.votes"] == str(api[0]["custom"]["votes"])

    monkeypatch.setattr(export, "PAGE_ROWS", 7)  # many pages, and a page edge inside equal ms
    posts = await (await c.get("/v1/bot/100/export", params={**q, "data": "posts", "format": "jsonl"})).text()
    got = [json.loads(line) for line in posts.splitlines()]
    assert len(got) == 121 and len({p["eventId"] for p in got}) == 121
    assert [p["time"] for p in got] == sorted(p["time"] for p in got)
    assert got[0]["guilds"] == 0 and got[-1]["custom"] == {"votes": 119.0}
    posts_csv = await (await c.get("/v1/bot/100/export", params={**q, "data": "posts"})).text()
    assert len(list(csv.DictReader(io.StringIO(posts_csv)))) == 121


async def test_export_privacy_and_range_limit(world):
    c = world.client
    assert (await c.get("/v1/bot/200/export")).status == 404
    assert (await c.get("/v1/bot/200/export", headers={"Authorization": world.other_key})).status == 404
    assert (await c.get("/v1/bot/200/export", headers={"Authorization": world.key})).status == 200
    t = int(time.time() * 1000)
    resp = await c.get("/v1/bot/100/export", params={"start": str(t - 91 * 86_400_000), "end": str(t)})
    assert resp.status == 400 and (await resp.json())["field"] == "start"
    resp = await c.get("/v1/bot/100/export", params={"format": "xml"})
    assert resp.status == 400 and (await resp.json())["field"] == "format"


# --- status pages -----------------------------------------------------------------------------
async def _save_status(w: World, key: str, **form: Any) -> Any:
    await signin(w, key)
    html = await (await w.client.get("/dashboard/status-page")).text()
    data: list[tuple[str, str]] = [("csrf", csrf_of(html))]
    for name, value in form.items():
        for v in value if isinstance(value, list) else [value]:
            data.append((name, v))
    return await w.client.post("/dashboard/status-page", data=data, allow_redirects=False)


async def test_status_page_is_opt_in_public_only_and_its_slug_is_unique(world):
    c = world.client
    assert (await c.get("/status/acme-bots")).status == 404
    resp = await _save_status(world, world.key, slug="acme-bots", title="Acme", bots=["100", "200"])
    assert resp.status == 303
    assert (await c.get("/status/acme-bots")).status == 404  # saved, but not turned on
    resp = await _save_status(
        world, world.key, slug="acme-bots", title="Acme", bots=["100", "200"], enabled="on"
    )
    assert resp.status == 303
    c.session.cookie_jar.clear()
    resp = await c.get("/status/acme-bots")
    html = await resp.text()
    assert resp.status == 200 and "Public Bot" in html and "Secret Bot" not in html
    assert resp.headers["Content-Security-Policy"].startswith("default-src 'self'")
    resp = await _save_status(world, world.other_key, slug="acme-bots", title="Mine", enabled="on")
    assert resp.status == 409 and 'data-error-for="slug"' in await resp.text()
    resp = await _save_status(world, world.other_key, slug="x", title="Mine", enabled="on")
    assert resp.status == 400 and 'data-error-for="slug"' in await resp.text()
    resp = await _save_status(
        world, world.other_key, slug="two-bots", title="Mine", bots=["100"], enabled="on"
    )
    assert resp.status == 400 and 'data-error-for="bots"' in await resp.text()


def test_uplot_is_vendored_pinned_and_licensed() -> None:
    from importlib import resources

    vendor = resources.files("botpulse.query.dashboard") / "static" / "vendor"
    js = (vendor / "uPlot.iife.min.js").read_text()
    assert js.startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")
    assert "MIT License" in (vendor / "uPlot.LICENSE").read_text()
    assert "1.6.32" in (vendor / "README.md").read_text()


async def test_the_bot_page_weighs_under_150_kb_compressed(world):
    html = await (await world.client.get("/dashboard/bot/100")).text()
    total = len(gzip.compress(html.encode()))
    urls = re.findall(r'(?:src|href)="(/dashboard/assets/[^"]+)"', html)
    assert any("uPlot" in u for u in urls)
    for url in urls:
        resp = await world.client.get(url, headers={"Accept-Encoding": "gzip"})
        assert resp.headers["Content-Encoding"] == "gzip"
        total += int(resp.headers["Content-Length"])
    assert total < 150_000


# --- alerts ---------------------------------------------------------------------------------------
# As the alerts tests run: http allowed, 127.0.0.1 the one network let in, and 127.0.0.1 a host a
# `discord` destination may name (nothing is ever sent: the page only adds and lists).
ALERTS = {
    "alerts_allow_http": True,
    "alerts_allow_networks": "127.0.0.1/32",
    "alerts_discord_hosts": "127.0.0.1",
}


async def _api_message(w: World, path: str, body: dict[str, Any]) -> str:
    """What the account API says to the same body (the page must show exactly that)."""
    resp = await w.client.post(path, json=body, headers={"Authorization": w.key})
    assert resp.status == 400, await resp.text()
    return str((await resp.json())["message"])


def _shown(html: str, field: str, message: str) -> bool:
    """`message` (escaped as Jinja escapes it) in the error span next to `field`."""
    return f'data-error-for="{field}" role="alert">{markupsafe.escape(message)}</span>' in html


async def test_alerts_page_adds_lists_mutes_and_deletes_through_the_alerts_api(make_settings, store, redis):
    w = await _world(make_settings, store, redis, **ALERTS)
    c, auth = w.client, {"Authorization": w.key}
    try:
        await signin(w, w.key)
        html = await (await c.get("/dashboard")).text()
        assert 'id="nav-alerts" ' in html or 'id="nav-alerts">' in html
        html = await (await c.get("/dashboard/alerts")).text()
        csrf = csrf_of(html)
        hook = {"name": HOSTILE, "type": "webhook", "url": "http://127.0.0.1:9/hook?token=hook-cred&x"}

        # Without the CSRF token: 403, nothing added.
        resp = await c.post("/dashboard/alerts/destinations", data=hook | {"nonce": nonce_of(html)})
        assert resp.status == 403
        # A URL the SSRF rules refuse: the API's own message, next to `url`; nothing added.
        metadata = {"name": "meta", "type": "webhook", "url": "http://169.254.169.254/latest/meta-data"}
        expected = await _api_message(w, "/v1/alerts/destinations", metadata)
        resp = await c.post(
            "/dashboard/alerts/destinations", data=metadata | {"csrf": csrf, "nonce": nonce_of(html)}
        )
        text = await resp.text()
        assert resp.status == 400 and _shown(text, "destination.url", expected), text
        assert 'value="http://169.254.169.254/latest/meta-data"' in text  # the form as sent
        # A bad type: the struct's message next to `type`.
        bad_type = {"name": "x", "type": "email", "url": "http://127.0.0.1:9/h"}
        expected = await _api_message(w, "/v1/alerts/destinations", bad_type)
        resp = await c.post(
            "/dashboard/alerts/destinations", data=bad_type | {"csrf": csrf, "nonce": nonce_of(text)}
        )
        assert resp.status == 400 and _shown(await resp.text(), "destination.type", expected)
        assert (await (await c.get("/v1/alerts/destinations", headers=auth)).json())["destinations"] == []

        # A webhook: its secret shown this once, never cached; the same form again is refused.
        html = await (await c.get("/dashboard/alerts")).text()
        form = hook | {"csrf": csrf, "nonce": nonce_of(html)}
        resp = await c.post("/dashboard/alerts/destinations", data=form)
        text = await resp.text()
        assert resp.status == 200 and resp.headers["Cache-Control"] == "private, no-store"
        secret = re.search(r'id="new-secret" value="(whsec_[^"]+)"', text).group(1)  # type: ignore[union-attr]
        assert HOSTILE not in text and str(markupsafe.escape(HOSTILE)) in text
        resp = await c.post("/dashboard/alerts/destinations", data=form)
        assert resp.status == 409 and "already sent" in await resp.text()
        # A Discord webhook: back to the page.
        html = await (await c.get("/dashboard/alerts")).text()
        discord = {
            "name": "ops",
            "type": "discord",
            "url": "http://127.0.0.1:9/api/webhooks/42/very-secret-token",
        }
        resp = await c.post(
            "/dashboard/alerts/destinations",
            data=discord | {"csrf": csrf, "nonce": nonce_of(html)},
            allow_redirects=False,
        )
        assert resp.status == 303 and resp.headers["Location"] == "/dashboard/alerts?saved=destination"

        listed = (await (await c.get("/v1/alerts/destinations", headers=auth)).json())["destinations"]
        assert len(listed) == 2
        html = await (await c.get("/dashboard/alerts")).text()
        for d in listed:  # each URL exactly as the API's listing shows it
            assert f'<code data-field="url">{markupsafe.escape(d["url"])}</code>' in html, d
        for leak in (secret, "very-secret-token", "hook-cred", HOSTILE):
            assert leak not in html
        hook_id = next(d["id"] for d in listed if d["type"] == "webhook")
        ops_id = next(d["id"] for d in listed if d["type"] == "discord")

        # Rules: a number that is none, the API's message next to `minutes`.
        rule = [
            ("csrf", csrf),
            ("name", "Down"),
            ("bot", "100"),
            ("kind", "offline"),
            ("destinations", hook_id),
        ]
        expected = await _api_message(
            w,
            "/v1/alerts/rules",
            {"name": "Down", "bot": "100", "kind": "offline", "destinations": [hook_id], "minutes": "soon"},
        )
        resp = await c.post("/dashboard/alerts/rules", data=[*rule, ("minutes", "soon")])
        assert resp.status == 400 and _shown(await resp.text(), "rule.minutes", expected)
        # A bot that is not the account's (the form lists only its own): refused naming `bot`.
        expected = await _api_message(
            w,
            "/v1/alerts/rules",
            {"name": "Down", "bot": "999", "kind": "offline", "destinations": [hook_id]},
        )
        resp = await c.post("/dashboard/alerts/rules", data=[*rule[:2], ("bot", "999"), *rule[3:]])
        assert resp.status == 400 and _shown(await resp.text(), "rule.bot", expected)
        # No destination chosen: the struct's message next to `destinations`.
        resp = await c.post("/dashboard/alerts/rules", data=rule[:-1])
        assert resp.status == 400 and 'data-error-for="rule.destinations"' in await resp.text()
        # A threshold field on an offline rule: the API's cross-field check.
        resp = await c.post("/dashboard/alerts/rules", data=[*rule, ("metric", "guilds")])
        assert resp.status == 400 and _shown(
            await resp.text(), "rule.metric", "metric does not apply to a offline rule"
        )

        resp = await c.post("/dashboard/alerts/rules", data=[*rule, ("minutes", "7")], allow_redirects=False)
        assert resp.status == 303
        threshold = [
            ("csrf", csrf),
            ("name", "Few guilds"),
            ("bot", "200"),
            ("kind", "threshold"),
            ("destinations", hook_id),
            ("destinations", ops_id),
            ("metric", "guilds"),
            ("op", "below"),
            ("value", "10"),
            ("minutes", ""),
        ]
        resp = await c.post("/dashboard/alerts/rules", data=threshold, allow_redirects=False)
        assert resp.status == 303
        rules = (await (await c.get("/v1/alerts/rules", headers=auth)).json())["rules"]
        offline = next(r for r in rules if r["kind"] == "offline")
        below = next(r for r in rules if r["kind"] == "threshold")
        assert offline["minutes"] == 7 and offline["destinations"] == [hook_id] and offline["bot"] == "100"
        assert below["minutes"] == 5 and below["op"] == "below" and below["value"] == 10  # the API's default
        assert below["destinations"] == [hook_id, ops_id]

        # The delivery log the evaluator writes is shown (escaped), newest first.
        entry = DeliveryEntry(
            at=1_780_000_061_000,
            destination=hook_id,
            destination_type="webhook",
            incident="inc_1",
            event="opened",
            attempt=2,
            outcome="failed",
            status=500,
            latency_ms=12,
            error=HOSTILE,
        )
        await redis.lpush(log_key(offline["id"]), msgspec.json.encode(entry))
        html = await (await c.get("/dashboard/alerts")).text()
        block = html.split(f'data-rule="{offline["id"]}"', 1)[1].split("</article>", 1)[0]
        assert 'data-field="kind">offline<' in block and 'data-field="state" class="ok">ok<' in block
        assert "not muted" in block and "failed" in block and "HTTP 500" in block
        assert HOSTILE not in html and "2026-05-28T" in block

        # Mute, unmute.
        resp = await c.post(
            f"/dashboard/alerts/rules/{offline['id']}/mute",
            data={"csrf": csrf, "muted": "true"},
            allow_redirects=False,
        )
        assert resp.status == 303
        got = await (await c.get(f"/v1/alerts/rules/{offline['id']}", headers=auth)).json()
        assert got["muted"] is True
        html = await (await c.get("/dashboard/alerts")).text()
        block = html.split(f'data-rule="{offline["id"]}"', 1)[1].split("</article>", 1)[0]
        assert 'data-field="muted">muted<' in block and ">Unmute<" in block
        resp = await c.post(
            f"/dashboard/alerts/rules/{offline['id']}/mute",
            data={"csrf": csrf, "muted": "false"},
            allow_redirects=False,
        )
        assert resp.status == 303
        assert (await (await c.get(f"/v1/alerts/rules/{offline['id']}", headers=auth)).json()).get(
            "muted", False
        ) is False
        # Without the CSRF token: 403, nothing changes.
        resp = await c.post(f"/dashboard/alerts/rules/{offline['id']}/mute", data={"muted": "true"})
        assert resp.status == 403
        assert (await (await c.get(f"/v1/alerts/rules/{offline['id']}", headers=auth)).json()).get(
            "muted", False
        ) is False

        # A destination a rule uses: the API's 409, said on the page.
        resp = await c.post(f"/dashboard/alerts/destinations/{hook_id}/delete", data={"csrf": csrf})
        assert resp.status == 409
        assert re.search(
            r'data-error-for="action.form" role="alert">Destination is used by rules alr_', await resp.text()
        )

        # Another account's session: the rules and destinations are not found (404), and stay.
        other = await _signed_in_client(w, w.other_key)
        try:
            page = await other.get("/dashboard/alerts")
            other_html = await page.text()
            assert page.status == 200 and hook_id not in other_html and offline["id"] not in other_html
            other_csrf = csrf_of(other_html)
            for path, data in (
                (f"/dashboard/alerts/rules/{offline['id']}/mute", {"muted": "true"}),
                (f"/dashboard/alerts/rules/{offline['id']}/delete", {}),
                (f"/dashboard/alerts/destinations/{ops_id}/delete", {}),
                ("/dashboard/alerts/rules/alr_0000000000000000/delete", {}),
                ("/dashboard/alerts/rules/not-an-id/mute", {"muted": "true"}),
            ):
                resp = await other.post(path, data=data | {"csrf": other_csrf})
                assert resp.status == 404, path
            # ... nor can it point a rule of its own at them.
            resp = await other.post(
                "/dashboard/alerts/rules",
                data=[
                    ("csrf", other_csrf),
                    ("name", "x"),
                    ("bot", "100"),
                    ("kind", "offline"),
                    ("destinations", hook_id),
                ],
            )
            assert resp.status == 400 and 'data-error-for="rule.bot"' in await resp.text()
        finally:
            await other.close()
        got = await (await c.get(f"/v1/alerts/rules/{offline['id']}", headers=auth)).json()
        assert got.get("muted", False) is False  # (the API leaves out a false `muted`)
        assert len((await (await c.get("/v1/alerts/destinations", headers=auth)).json())["destinations"]) == 2

        # Delete the rules, then the destination they used.
        for r in (offline, below):
            resp = await c.post(
                f"/dashboard/alerts/rules/{r['id']}/delete", data={"csrf": csrf}, allow_redirects=False
            )
            assert resp.status == 303
            assert (await c.get(f"/v1/alerts/rules/{r['id']}", headers=auth)).status == 404
        resp = await c.post(
            f"/dashboard/alerts/destinations/{hook_id}/delete", data={"csrf": csrf}, allow_redirects=False
        )
        assert resp.status == 303
        listed = (await (await c.get("/v1/alerts/destinations", headers=auth)).json())["destinations"]
        assert [d["id"] for d in listed] == [ops_id]
    finally:
        await w.client.close()


async def _signed_in_client(w: World, key: str) -> aiohttp.ClientSession:
    """A second browser (its own cookie jar) on the same server, signed in with `key`."""
    jar = aiohttp.CookieJar(unsafe=True)  # the test server is 127.0.0.1
    client = aiohttp.ClientSession(base_url=str(w.client.make_url("")), cookie_jar=jar)
    page = await client.get("/dashboard/signin")
    resp = await client.post(
        "/dashboard/signin",
        data={"csrf": csrf_of(await page.text()), "key": key, "next": ""},
        allow_redirects=False,
    )
    assert resp.status == 303
    return client


async def test_alerts_page_is_read_only_for_a_read_session(make_settings, store, redis):
    w = await _world(make_settings, store, redis, **ALERTS)
    c, auth = w.client, {"Authorization": w.key}
    try:
        made = await c.post(
            "/v1/alerts/destinations",
            headers=auth,
            json={"name": "ops", "type": "webhook", "url": "http://127.0.0.1:9/h"},
        )
        hook_id = (await made.json())["id"]
        made = await c.post(
            "/v1/alerts/rules",
            headers=auth,
            json={"name": "Down", "bot": "100", "kind": "offline", "destinations": [hook_id]},
        )
        rule_id = (await made.json())["id"]
        _, read_key = await apikeys.create_key(store, redis, w.account, "ro", "read", by="t", max_keys=None)
        await _until_signed_in(w, read_key)
        page = await c.get("/dashboard/alerts")
        html = await page.text()
        assert page.status == 200 and 'id="alerts-read-only"' in html
        assert f'data-rule="{rule_id}"' in html and f'data-destination="{hook_id}"' in html
        assert (
            'id="destination-form"' not in html and 'id="rule-form"' not in html and "data-mute=" not in html
        )
        csrf = csrf_of(html)
        for path, data in (
            (
                "/dashboard/alerts/destinations",
                {"name": "x", "type": "webhook", "url": "http://127.0.0.1:9/x", "nonce": "n1"},
            ),
            (
                "/dashboard/alerts/rules",
                {"name": "x", "bot": "100", "kind": "offline", "destinations": hook_id},
            ),
            (f"/dashboard/alerts/rules/{rule_id}/mute", {"muted": "true"}),
            (f"/dashboard/alerts/rules/{rule_id}/delete", {}),
            (f"/dashboard/alerts/destinations/{hook_id}/delete", {}),
        ):
            resp = await c.post(path, data=data | {"csrf": csrf})
            text = await resp.text()
            assert resp.status == 403, path
            assert "read scope" in text and "manage scope" in text, path
        assert len((await (await c.get("/v1/alerts/rules", headers=auth)).json())["rules"]) == 1
        assert len((await (await c.get("/v1/alerts/destinations", headers=auth)).json())["destinations"]) == 1
        got = await (await c.get(f"/v1/alerts/rules/{rule_id}", headers=auth)).json()
        assert got.get("muted", False) is False  # (the API leaves out a false `muted`)
    finally:
        await w.client.close()
