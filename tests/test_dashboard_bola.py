"""The dashboard's BOLA matrix, beside tests/test_keys.py's over the API and on its world: two
accounts, each with a public and a private bot and every kind of key (the account key, named
manage/read/ingest keys, an ingest key limited to one bot, a bot's own token). Each key tries to
sign in; then every dashboard route is called for every bot with that session: the owner's
session (manage), the other account's, a read-only session, the bot-scoped keys (an ingest key
may not read at the API, so it gets no session either) and no session at all.

The test also checks that the matrix names every route the dashboard mounts: a new dashboard
route without a row here fails it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from botpulse.query import app as query_app
from botpulse.query.dashboard import pages, status_pages
from botpulse.query.spec import SPECS
from botpulse.runtime.openapi import undocumented
from tests.test_keys import READ as API_READ
from tests.test_keys import ROOMY, SCOPE_OF, World, _client, _expected, _world
from tests.test_openapi import OPERATOR_ROUTES

# Every route the matrix calls, as the dashboard mounts it (checked against the router below).
COVERED = {
    ("GET", "/dashboard"),
    ("GET", "/dashboard/"),
    ("GET", "/dashboard/signin"),
    ("POST", "/dashboard/signin"),
    ("POST", "/dashboard/signout"),
    ("GET", "/dashboard/bot/{botId}"),
    ("GET", "/dashboard/bot/{botId}/settings"),
    ("POST", "/dashboard/bot/{botId}/settings"),
    ("POST", "/dashboard/account/key"),
    ("GET", "/dashboard/status-page"),
    ("POST", "/dashboard/status-page"),
    ("GET", "/dashboard/alerts"),
    ("POST", "/dashboard/alerts/destinations"),
    ("POST", "/dashboard/alerts/destinations/{id}/delete"),
    ("POST", "/dashboard/alerts/rules"),
    ("POST", "/dashboard/alerts/rules/{id}/mute"),
    ("POST", "/dashboard/alerts/rules/{id}/delete"),
    ("GET", "/dashboard/assets/{name}"),
    ("GET", "/status/{slug}"),
    ("GET", "/badge/{botId}/{metric}"),
    ("GET", "/v1/bot/{botId}/export"),
}
SIGNS_IN = {"account", "manage", "read"}  # the kinds of key a session may be opened with


@pytest.fixture
async def dash(make_settings, store, redis) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    client = await _client(query_app.build_app(make_settings(**ROOMY), store))
    yield client
    await client.close()


def test_the_matrix_covers_every_dashboard_route(make_settings, store) -> None:  # type: ignore[no-untyped-def]
    """Every mounted route that is not one of the API's (described in query/spec.py, the export
    aside) nor an operator's is a dashboard route, and each is in COVERED."""
    app = query_app.build_app(make_settings(), store)
    own_api = {(m, p) for m, p, _ in pages.API_ROUTES}
    others = [r for r in SPECS.routes if (r.method, r.path) not in own_api]
    mounted = {tuple(line.split(" ", 1)) for line in undocumented(app, others, ignore=OPERATOR_ROUTES)}
    assert mounted == COVERED
    declared = {(m, p) for m, p, _ in (*pages.BROWSER_ROUTES, *pages.API_ROUTES)}
    assert declared == COVERED


@dataclass
class Holder:
    owner: str | None  # A, B or None
    kind: str | None  # a kind of key of test_keys.SCOPE_OF, "bogus", or None: never signs in
    http: aiohttp.ClientSession
    csrf: str = ""

    @property
    def label(self) -> str:
        return f"{self.owner}/{self.kind}"

    @property
    def signed_in(self) -> bool:
        return self.kind in SIGNS_IN

    @property
    def manager(self) -> bool:
        return self.signed_in and SCOPE_OF[self.kind or ""] == "manage"


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    return found.group(1) if found else ""


async def _sign_in(h: Holder, key: str) -> aiohttp.ClientResponse:
    page = await h.http.get("/dashboard/signin")
    resp = await h.http.post(
        "/dashboard/signin",
        data={"csrf": _csrf(await page.text()), "key": key, "next": ""},
        allow_redirects=False,
    )
    await resp.read()
    return resp


async def test_dashboard_bola_matrix_every_route_every_key_kind(dash: TestClient, store, redis) -> None:  # type: ignore[no-untyped-def]
    w: World = await _world(dash)
    # A's status page is on (its public and private bot chosen); B's is saved but off.
    for owner, bots, enabled in (("A", ["1001", "1002"], True), ("B", ["2001"], False)):
        page = status_pages.StatusPage("", f"{owner.lower()}-status", owner, bots, enabled)
        await status_pages.save(store, redis, w.accounts[owner], page)

    # Alerts (their destinations point at 127.0.0.1, which ROOMY lets in; nothing is sent): per
    # account a destination and a rule that stay (the other account tries them), and per key
    # holder a rule with a destination of its own, which a manage session then deletes.
    async def alert(owner: str) -> tuple[str, str]:
        auth = {"Authorization": w.keys[(owner, "account")]}
        made = await dash.post(
            "/v1/alerts/destinations",
            headers=auth,
            json={"name": "d", "type": "webhook", "url": "http://127.0.0.1:9/h"},
        )
        assert made.status == 201, await made.text()
        dst = (await made.json())["id"]
        rule = {
            "name": "r",
            "bot": "1001" if owner == "A" else "2001",
            "kind": "offline",
            "destinations": [dst],
        }
        made = await dash.post("/v1/alerts/rules", headers=auth, json=rule)
        assert made.status == 201, await made.text()
        return dst, (await made.json())["id"]

    shared = {owner: await alert(owner) for owner in ("A", "B")}
    own_alerts = {(owner, kind): await alert(owner) for owner in ("A", "B") for kind in SCOPE_OF}
    asset = re.search(r'href="(/dashboard/assets/[^"]+)"', await (await dash.get("/dashboard/signin")).text())
    assert asset, "the sign-in page links no stylesheet"
    base = str(dash.make_url(""))
    holders: list[Holder] = []
    for owner, kind in [(None, None), (None, "bogus")] + [(o, k) for o in ("A", "B") for k in SCOPE_OF]:
        jar = aiohttp.CookieJar(unsafe=True)  # the test server is 127.0.0.1
        holders.append(Holder(owner, kind, aiohttp.ClientSession(base_url=base, cookie_jar=jar)))
    failures: list[str] = []

    def want(label: str, got: int, expected: int) -> None:
        if got != expected:
            failures.append(f"{label}: {got}, expected {expected}")

    async def call(h: Holder, method: str, path: str, **kw: object) -> tuple[int, str]:
        resp = await h.http.request(method, path, allow_redirects=False, **kw)  # type: ignore[arg-type]
        return resp.status, await resp.text()

    def by_scope(h: Holder, manage: int) -> int:
        """A page that changes things: `manage` for a manage session, 403 for a read-only one,
        the redirect to sign-in without a session."""
        return manage if h.manager else 403 if h.signed_in else 303

    try:
        # --- sign-in (POST /dashboard/signin): only keys that may read open a session -------------
        for h in holders:
            if h.kind is None:
                continue
            key = "DS-" + "x" * 43 if h.kind == "bogus" else w.keys[(h.owner, h.kind)]  # type: ignore[index]
            resp = await _sign_in(h, key)
            want(f"POST /dashboard/signin key={h.label}", resp.status,
                 303 if h.signed_in else 401 if h.kind == "bogus" else 403)  # fmt: skip
            if resp.status == 403 and "ingest scope" not in await resp.text():
                failures.append(f"POST /dashboard/signin key={h.label}: the refusal does not name the scope")
            if h.signed_in:
                h.csrf = _csrf(await (await h.http.get("/dashboard")).text())
                if not h.csrf:
                    failures.append(f"GET /dashboard key={h.label}: no CSRF token on the page")

        for h in holders:
            label = f"key={h.label}"
            # --- account-wide pages --------------------------------------------------------------
            got, html = await call(h, "GET", "/dashboard")
            want(f"GET /dashboard {label}", got, 200 if h.signed_in else 303)
            if got == 200:
                listed = set(re.findall(r'<tr data-bot="([^"]+)"', html))
                mine = {b for b, (owner, _) in w.bots.items() if owner == h.owner}
                if listed != mine:
                    failures.append(f"GET /dashboard {label} lists {sorted(listed)}, not {sorted(mine)}")
                if ('id="read-only"' in html) == h.manager:
                    failures.append(f"GET /dashboard {label}: the read-only mark is wrong")
            want(f"GET /dashboard/ {label}", (await call(h, "GET", "/dashboard/"))[0], 303)
            got, _ = await call(h, "GET", "/dashboard/signin")
            want(f"GET /dashboard/signin {label}", got, 303 if h.signed_in else 200)
            got, html = await call(h, "GET", "/dashboard/status-page")
            want(f"GET /dashboard/status-page {label}", got, by_scope(h, 200))
            if got == 403 and "read scope" not in html:
                failures.append(f"GET /dashboard/status-page {label}: the refusal does not say why")
            # Saving one's own page keeps its state (A's on, B's off); another account's bot on
            # it is refused, naming the field.
            form = [("csrf", h.csrf), ("slug", f"{(h.owner or 'x').lower()}-status"), ("title", "T")]
            form += [("enabled", "on")] if h.owner == "A" else []
            own = "1001" if h.owner == "A" else "2001"
            for bots, ok in (([own], 303), (["1002", "2002"], 400)):
                got, html = await call(
                    h, "POST", "/dashboard/status-page", data=form + [("bots", b) for b in bots]
                )
                want(f"POST /dashboard/status-page bots={bots} {label}", got, by_scope(h, ok))
                if got == 400 and 'data-error-for="bots"' not in html:
                    failures.append(f"POST /dashboard/status-page {label}: the 400 names no field")
            # Public status pages: anyone sees an enabled one, with its public bots only.
            got, html = await call(h, "GET", "/status/a-status")
            want(f"GET /status/a-status {label}", got, 200)
            if 'data-bot="1002"' in html or 'data-bot="1001"' not in html:
                failures.append(f"GET /status/a-status {label}: wrong bots shown")
            want(f"GET /status/b-status (off) {label}", (await call(h, "GET", "/status/b-status"))[0], 404)
            want(f"GET {asset.group(1)} {label}", (await call(h, "GET", asset.group(1)))[0], 200)
            got, _ = await call(h, "GET", "/dashboard/assets/nope.css")
            want(f"GET /dashboard/assets/nope.css {label}", got, 404)

            # --- alerts --------------------------------------------------------------------------
            got, html = await call(h, "GET", "/dashboard/alerts")
            want(f"GET /dashboard/alerts {label}", got, 200 if h.signed_in else 303)
            mine_at = h.owner or "A"
            theirs_at = "B" if mine_at == "A" else "A"
            own_dst, own_rule = own_alerts.get((mine_at, h.kind or ""), shared[mine_at])
            their_dst, their_rule = shared[theirs_at]
            if got == 200:
                listed = set(re.findall(r'data-rule="(alr_[0-9a-f]+)"', html))
                theirs = {shared[theirs_at][1]} | {
                    r for (o, _), (_, r) in own_alerts.items() if o == theirs_at
                }
                if listed & theirs or own_rule not in listed or shared[mine_at][1] not in listed:
                    failures.append(f"GET /dashboard/alerts {label} lists {sorted(listed)}")
                if ('id="rule-form"' in html) != h.manager:
                    failures.append(
                        f"GET /dashboard/alerts {label}: the forms are shown to the wrong session"
                    )
            hook = {
                "csrf": h.csrf,
                "nonce": f"n-{h.label}",
                "name": "d",
                "type": "webhook",
                "url": "http://127.0.0.1:9/hook",
            }
            got, _ = await call(h, "POST", "/dashboard/alerts/destinations", data=hook)
            want(f"POST /dashboard/alerts/destinations {label}", got, by_scope(h, 200))
            bot_of = {"A": "1001", "B": "2001"}
            for bot, dst, ok in (
                (bot_of[mine_at], shared[mine_at][0], 303),
                (bot_of[theirs_at], shared[mine_at][0], 400),  # another account's bot
                (bot_of[mine_at], their_dst, 400),  # another account's destination
            ):
                rule = {"csrf": h.csrf, "name": "r", "bot": bot, "kind": "offline", "destinations": dst}
                got, _ = await call(h, "POST", "/dashboard/alerts/rules", data=rule)
                want(
                    f"POST /dashboard/alerts/rules bot={bot} destination={dst} {label}", got, by_scope(h, ok)
                )
            for path, ok in (
                (f"/dashboard/alerts/rules/{their_rule}/mute", 404),
                (f"/dashboard/alerts/rules/{their_rule}/delete", 404),
                (f"/dashboard/alerts/destinations/{their_dst}/delete", 404),
                (f"/dashboard/alerts/rules/{own_rule}/mute", 303),
                (f"/dashboard/alerts/rules/{own_rule}/delete", 303),
                (f"/dashboard/alerts/destinations/{own_dst}/delete", 303),
            ):
                # Without the CSRF token first: refused whoever holds the session.
                got, _ = await call(h, "POST", path, data={"muted": "true"})
                want(f"POST {path} without CSRF {label}", got, 403 if h.signed_in else 303)
                got, _ = await call(h, "POST", path, data={"csrf": h.csrf, "muted": "true"})
                want(f"POST {path} {label}", got, by_scope(h, ok))

            # --- per bot -------------------------------------------------------------------------
            for bot, (owner, private) in w.bots.items():
                mine = h.signed_in and owner == h.owner
                at = f"bot={bot} {label}"
                got, _ = await call(h, "GET", f"/dashboard/bot/{bot}")
                want(f"GET /dashboard/bot/{{id}} {at}", got, 404 if private and not mine else 200)
                settings = by_scope(h, 200 if mine else 404)
                got, _ = await call(h, "GET", f"/dashboard/bot/{bot}/settings")
                want(f"GET /dashboard/bot/{{id}}/settings {at}", got, settings)
                rename = {"csrf": h.csrf, "action": "bot", "username": f"by {h.label}"}
                got, _ = await call(
                    h,
                    "POST",
                    f"/dashboard/bot/{bot}/settings",
                    data=rename | ({"private": "on"} if private else {}),
                )
                want(f"POST /dashboard/bot/{{id}}/settings {at}", got, 303 if settings == 200 else settings)
                # No CSRF token: refused whoever holds the session (and nothing changes).
                forged = {"action": "bot", "username": "forged"}
                got, _ = await call(h, "POST", f"/dashboard/bot/{bot}/settings", data=forged)
                want(
                    f"POST /dashboard/bot/{{id}}/settings without CSRF {at}", got, 403 if h.signed_in else 303
                )
                got, _ = await call(h, "GET", f"/badge/{bot}/status.svg")
                want(f"GET /badge/{{id}}/status.svg {at}", got, 404 if private else 200)
                # The session is the API's credential on reads: the export and the bot itself.
                for path in (f"/v1/bot/{bot}/export", f"/v1/bot/{bot}"):
                    got, _ = await call(h, "GET", path)
                    want(f"GET {path} with the session {at}", got, 404 if private and not mine else 200)
                # ... and with the key itself, the API's rule (an ingest key may not read: 403).
                if h.owner and h.kind:
                    resp = await dash.get(
                        f"/v1/bot/{bot}/export", headers={"Authorization": w.keys[(h.owner, h.kind)]}
                    )
                    want(f"GET /v1/bot/{{id}}/export with the key {at}", resp.status,
                         _expected(w, API_READ, h.owner, h.kind, bot))  # fmt: skip

        # Nobody renamed another account's bot, whatever they held.
        for bot, (owner, _) in w.bots.items():
            resp = await dash.get(f"/v1/bot/{bot}", headers={"Authorization": w.keys[(owner, "account")]})
            name = (await resp.json())["username"]
            if name not in (f"{owner} {bot}", f"by {owner}/account", f"by {owner}/manage"):
                failures.append(f"bot {bot} of {owner} was renamed to {name!r}")

        # Nobody muted or deleted another account's rule or destination; only a manage session
        # deleted its own.
        for owner in ("A", "B"):
            auth = {"Authorization": w.keys[(owner, "account")]}
            resp = await dash.get(f"/v1/alerts/rules/{shared[owner][1]}", headers=auth)
            if resp.status != 200 or (await resp.json()).get("muted"):
                failures.append(f"the shared rule of {owner} was changed: {resp.status}")
            listed = {
                d["id"]
                for d in (await (await dash.get("/v1/alerts/destinations", headers=auth)).json())[
                    "destinations"
                ]
            }
            if shared[owner][0] not in listed:
                failures.append(f"the shared destination of {owner} was deleted")
            for kind in SCOPE_OF:
                kept = SCOPE_OF[kind] != "manage" or kind not in SIGNS_IN
                got = (
                    await dash.get(f"/v1/alerts/rules/{own_alerts[(owner, kind)][1]}", headers=auth)
                ).status
                if got != (200 if kept else 404):
                    failures.append(f"the rule of {owner}/{kind}: {got}")

        # --- regenerating the account key, then signing out (they end sessions: last) -----------
        for h in holders:
            form = {"csrf": h.csrf, "nonce": f"once-{h.label}"}
            got, html = await call(h, "POST", "/dashboard/account/key", data=form)
            want(f"POST /dashboard/account/key key={h.label}", got, by_scope(h, 200))
            if got == 200 and 'id="new-key"' not in html:
                failures.append(f"POST /dashboard/account/key key={h.label}: no new key shown")
        for h in holders:
            if h.signed_in:
                got, _ = await call(h, "POST", "/dashboard/signout", data={"csrf": h.csrf})
                want(f"POST /dashboard/signout key={h.label}", got, 303)
                got, _ = await call(h, "GET", "/dashboard")
                want(f"GET /dashboard after sign-out key={h.label}", got, 303)
    finally:
        for h in holders:
            await h.http.close()
    assert not failures, "\n".join(failures)
