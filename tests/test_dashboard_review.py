"""The security review's findings on the dashboard, each on the real app (valkey, chDB): bad form
bodies, file parts, the wrong-key limit's bypasses, headers of the refused page and of CORS,
sign-in replacing the old session, the key regeneration posted twice, status page titles and
the avatar CSP."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest

from botpulse.query.dashboard import pages
from botpulse.registry import apikeys
from tests.test_dashboard import World, _save_status, _world, csrf_of, nonce_of, signin

MULTIPART = {"Content-Type": "multipart/form-data; boundary=zz"}
BROKEN = b"\xff\xfe"


@pytest.fixture
async def world(make_settings, store, redis) -> AsyncIterator[World]:  # type: ignore[no-untyped-def]
    w = await _world(make_settings, store, redis)
    yield w
    await w.client.close()


async def _form_token(w: World) -> str:
    return csrf_of(await (await w.client.get("/dashboard/signin")).text())


async def test_a_malformed_multipart_body_is_a_400_on_every_form(world: World) -> None:
    c = world.client
    resp = await c.post("/dashboard/signin", data=BROKEN, headers=MULTIPART, allow_redirects=False)
    assert resp.status == 400, await resp.text()
    assert "could not be read" in await resp.text()
    await signin(world, world.key)
    for path in ("/dashboard/bot/100/settings", "/dashboard/status-page", "/dashboard/account/key",
                 "/dashboard/signout"):  # fmt: skip
        resp = await c.post(path, data=BROKEN, headers=MULTIPART, allow_redirects=False)
        assert resp.status == 400, (path, resp.status)
        assert resp.headers["Cache-Control"] == "private, no-store"
        assert "could not be read" in await resp.text()
    assert (await c.get("/v1/bot/200")).status == 200  # still signed in: nothing was done


async def test_a_file_part_is_refused_naming_its_field(world: World) -> None:
    c = world.client
    await signin(world, world.key)
    token = csrf_of(await (await c.get("/dashboard/bot/100/settings")).text())
    form = aiohttp.FormData()
    form.add_field("csrf", token)
    form.add_field("action", "bot")
    form.add_field("username", b"Evil", filename="a", content_type="text/plain")
    resp = await c.post("/dashboard/bot/100/settings", data=form, allow_redirects=False)
    assert resp.status == 400 and "`username`" in await resp.text()
    assert (await (await c.get("/v1/bot/100")).json())["username"] == "Public Bot"
    c.session.cookie_jar.clear()
    signin_form = aiohttp.FormData()
    signin_form.add_field("csrf", await _form_token(world))
    signin_form.add_field("key", world.key.encode(), filename="k")
    resp = await c.post("/dashboard/signin", data=signin_form, allow_redirects=False)
    assert resp.status == 400 and "`key`" in await resp.text()


async def test_alternating_wrong_keys_with_a_valid_one_hits_the_limit(make_settings, store, redis) -> None:  # type: ignore[no-untyped-def]
    w = await _world(make_settings, store, redis, signin_max_failures=3)
    try:
        got = []
        for _ in range(4):
            got.append((await signin(w, "DS-wrong")).status)
            w.client.session.cookie_jar.clear()
            own = await signin(w, w.other_key)  # the attacker's own account: a valid key
            got.append(own.status)
            w.client.session.cookie_jar.clear()
        # Three wrong keys block the address, the valid keys between them notwithstanding.
        assert got == [401, 303, 401, 303, 401, 429, 429, 429], got
    finally:
        await w.client.close()


async def test_parallel_wrong_keys_get_at_most_the_limit_of_401s(make_settings, store, redis) -> None:  # type: ignore[no-untyped-def]
    w = await _world(make_settings, store, redis)  # the default: 10 wrong keys
    try:
        token = await _form_token(w)
        url = w.client.make_url("/dashboard/signin")
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:

            async def attempt(i: int) -> int:
                async with http.post(
                    url,
                    data={"csrf": token, "key": f"DS-wrong-{i}"},
                    headers={"Cookie": f"bp_signin={token}"},
                    allow_redirects=False,
                ) as resp:
                    return resp.status

            statuses = await asyncio.gather(*(attempt(i) for i in range(40)))
        assert statuses.count(401) == 10 and statuses.count(429) == 30, statuses
    finally:
        await w.client.close()


async def test_ipv6_clients_are_counted_by_their_64(make_settings, store, redis) -> None:  # type: ignore[no-untyped-def]
    w = await _world(make_settings, store, redis, signin_max_failures=2, trust_proxy=True)
    try:

        def via(address: str) -> dict[str, str]:
            return {"X-Forwarded-For": address}

        assert (await signin(w, "DS-wrong", via("2001:db8:1:2::1"))).status == 401
        assert (await signin(w, "DS-wrong", via("2001:db8:1:2:ffff::9"))).status == 401
        assert (await signin(w, "DS-wrong", via("2001:db8:1:2:abcd::3"))).status == 429  # same /64
        assert (await signin(w, "DS-wrong", via("2001:db8:1:3::1"))).status == 401  # the next /64
    finally:
        await w.client.close()


async def test_vary_keeps_cookie_beside_origin(world: World) -> None:
    await signin(world, world.key)
    for path in ("/dashboard", "/dashboard/signin", "/dashboard/bot/100"):
        resp = await world.client.get(path)
        vary = {v.strip() for v in resp.headers.get("Vary", "").split(",")}
        assert {"Cookie", "Origin"} <= vary, (path, resp.headers.get("Vary"))
    resp = await world.client.get("/v1/bot/100")
    assert resp.headers["Vary"] == "Origin"


async def test_the_refused_page_is_never_cached(world: World) -> None:
    _, read_key = await apikeys.create_key(
        world.store, world.redis, world.account, "ro", "read", by="t", max_keys=None
    )
    await signin(world, read_key)
    resp = await world.client.get("/dashboard/bot/100/settings")
    assert resp.status == 403
    html = await resp.text()
    assert 'name="csrf"' in html  # the sign-out form: the session's token is on the page
    assert resp.headers["Cache-Control"] == "private, no-store"
    assert resp.headers["Content-Security-Policy"] == pages.CSP


async def test_signing_in_again_ends_the_old_session(world: World) -> None:
    c = world.client
    assert (await signin(world, world.key)).status == 303
    old = next(m.value for m in c.session.cookie_jar if m.key == "bp_session")
    c.session.cookie_jar.clear()
    token = await _form_token(world)
    c.session.cookie_jar.update_cookies({"bp_session": old})
    resp = await c.post("/dashboard/signin", data={"csrf": token, "key": world.key}, allow_redirects=False)
    assert resp.status == 303
    new = next(m.value for m in c.session.cookie_jar if m.key == "bp_session")
    assert new != old
    assert len([k async for k in world.redis.scan_iter(match="bp:sess:*")]) == 1
    c.session.cookie_jar.clear()
    assert (await c.get("/v1/bot/200", headers={"Cookie": f"bp_session={old}"})).status == 404
    assert (await c.get("/v1/bot/200", headers={"Cookie": f"bp_session={new}"})).status == 200


async def test_posting_the_regeneration_again_does_not_regenerate_again(world: World) -> None:
    c = world.client
    await signin(world, world.key)
    html = await (await c.get("/dashboard/bot/100/settings")).text()
    assert "sessions opened with a named key keep working" in html
    form = {"csrf": csrf_of(html), "nonce": nonce_of(html)}
    first = await c.post("/dashboard/account/key", data=form)
    key = re.search(r'id="new-key" value="(DS-[^"]+)"', await first.text()).group(1)  # type: ignore[union-attr]
    again = await c.post("/dashboard/account/key", data=form)  # a reload of the answer
    assert again.status == 409 and 'id="new-key"' not in await again.text()
    assert (await c.get("/v1/bot/200", headers={"Authorization": key})).status == 200  # still the key
    resp = await c.post("/dashboard/account/key", data={"csrf": form["csrf"]})
    assert resp.status == 400 and "`nonce`" in await resp.text()


async def test_status_titles_refuse_invisible_and_control_characters(world: World) -> None:
    for bad in ("Acme\u202eevil", "Ac\u200bme", "Ac\x7fme", "Ac\x85me", "Ac\u2028me", "Ac\u2029me"):
        resp = await _save_status(world, world.key, slug="acme-bots", title=bad)
        assert resp.status == 400 and 'data-error-for="title"' in await resp.text(), repr(bad)
    resp = await _save_status(world, world.key, slug="acme-bots", title="Acme Bøts ✓")
    assert resp.status == 303


async def test_avatars_load_over_https_only(world: World) -> None:
    await signin(world, world.key)
    resp = await world.client.get("/dashboard")
    csp = resp.headers["Content-Security-Policy"]
    assert "img-src 'self' https:;" in csp and "http:" not in csp.replace("https:", "")
