"""The dashboard's pages, badges and export, served by the query service.

Pages are server-rendered (Jinja2, autoescaped) shells; their numbers come from the public
query API, fetched by `static/app.js` (the same routes any client uses), so a page and the API
never disagree. Every HTML answer carries a `Content-Security-Policy` with `default-src 'self'`
and no inline script. Only the owner's forms write, each with the session's CSRF token, through
the same validation as the account API (`registry.model`), whose messages are shown next to the
field they name. What a session may do is what its key may do at the account API
(`accounts_api.require_scope`): a read key's session shows every page of its account's bots but
changes nothing (403 with the reason); a form's write counts against the account's registry
writes per minute like the API's (`accounts_api.charge`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiDict, MultiDictProxy

from botpulse.query import accounts_api, alerts_api
from botpulse.query.dashboard import badges, export, sessions, status_pages
from botpulse.query.dashboard.assets import Assets
from botpulse.query.resources import REDIS, REGISTRY, SETTINGS, STORE
from botpulse.query.responses import error
from botpulse.query.uptime import connection_status, last_seen, now_ms, uptimes
from botpulse.registry import alerts as rules_db
from botpulse.registry import audit, catalog, model
from botpulse.registry.catalog import Bot
from botpulse.registry.keys import hash_key
from botpulse.schemas.account import BotPatch, DestinationCreate, RuleChanges, RuleCreate, WebhookPatch
from botpulse.schemas.registry import INGEST, MANAGE, READ

ASSETS = web.AppKey("dashboard_assets", Assets)
TEMPLATES = web.AppKey("dashboard_templates", jinja2.Environment)
SLUGS = web.AppKey("dashboard_status_slugs", status_pages.SlugCache)

# Avatars are the only third-party content a page shows (images only, never sent a referrer),
# and only over https: a plain-http image would let anyone on the path see and change it.
CSP = (
    "default-src 'self'; img-src 'self' https:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
AUDIT_PAGE = 20
DAY_MS = 86_400_000
BADGE_METRICS = {
    "status": "status",
    "uptime-24h": "uptime 24h",
    "uptime-7d": "uptime 7d",
    "uptime-30d": "uptime 30d",
    "guilds": "guilds",
    "users": "users",
}
_UPTIME_SPANS = {"uptime-24h": DAY_MS, "uptime-7d": 7 * DAY_MS, "uptime-30d": 30 * DAY_MS}


def avatar_url(url: str | None) -> str:
    """The avatar if it is an https URL (the registry accepts http too, but the pages' CSP
    loads images over https only, so an http avatar is shown as none rather than as a broken
    image; checked here so no other scheme ever reaches a page), else empty."""
    if not url or any(c.isspace() or ord(c) < 32 for c in url):
        return ""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    return url if parts.scheme == "https" and parts.hostname else ""


def iso_ms(ms: int) -> str:
    """A time in ms since the epoch (the alerts' times), as the audit log shows its times."""
    return audit.iso(dt.datetime.fromtimestamp(ms / 1000, dt.UTC))


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("botpulse.query.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["avatar"] = avatar_url
    env.filters["compact"] = badges.compact
    env.filters["iso"] = audit.iso
    env.filters["iso_ms"] = iso_ms
    return env


def base_path(request: web.Request) -> str:
    return request.app[SETTINGS].query_prefix


def render(
    request: web.Request, name: str, status: int = 200, *, cache: str = "private, no-store", **context: Any
) -> web.Response:
    base = base_path(request)
    assets = request.app[ASSETS]
    html = (
        request.app[TEMPLATES]
        .get_template(name)
        .render(
            base=base,
            asset=lambda logical: assets.url(base, logical),
            signed_in=context.pop("signed_in", None),
            **context,
        )
    )
    return web.Response(
        text=html, status=status, content_type="text/html", charset="utf-8", headers=_headers(cache)
    )


def _headers(cache: str = "private, no-store") -> dict[str, str]:
    """Every page's headers: what a page answer carries whether returned or raised."""
    return {**_PAGE_HEADERS, "Cache-Control": cache, "Vary": "Cookie"}


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={**_PAGE_HEADERS, "Location": location})


def not_found(request: web.Request, signed_in: sessions.SignedIn | None) -> web.Response:
    return render(request, "not_found.html", 404, signed_in=signed_in)


def refused(
    request: web.Request,
    signed_in: sessions.SignedIn | None,
    message: str,
    status: type[web.HTTPException] = web.HTTPForbidden,
) -> web.HTTPException:
    """A page saying why (403 unless told; raised: the handlers' checks stop the request there).
    It carries render()'s headers: it holds the sign-out form's CSRF token, so it is never
    cached (`private, no-store`)."""
    page = render(request, "refused.html", status.status_code, signed_in=signed_in, message=message)
    return status(text=page.text, content_type="text/html", headers=_headers())


class BadForm(Exception):
    """A posted body that is not a form of text fields (the message names the field)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


async def read_form(request: web.Request) -> MultiDictProxy[str]:
    """The posted form, the one way every dashboard form is read: text fields only. A body that
    cannot be parsed (a broken multipart body, bytes that are not text) or a field sent as a
    file (whose str() would be stored as `FileField(...)`) is `BadForm`, a 400, never a 500."""
    try:
        form = await request.post()
    except (ValueError, RuntimeError, HttpProcessingError):
        raise BadForm("The form could not be read (a malformed body); please send it again.") from None
    fields: MultiDict[str] = MultiDict()
    for name, value in form.items():
        if not isinstance(value, str):
            raise BadForm(f"The field `{name}` was sent as a file; the dashboard's forms take text only.")
        fields.add(name, value)
    return MultiDictProxy(fields)


def _safe_next(request: web.Request, raw: str | None) -> str:
    base = base_path(request)
    default = f"{base}/dashboard"
    if not raw or "//" in raw or "\\" in raw or any(ord(c) < 33 for c in raw):
        return default
    return raw if raw.startswith((f"{base}/dashboard", f"{base}/status/")) else default


async def _bot_records(request: web.Request, bot_id: str) -> Bot | None:
    from botpulse.query.app import BOT_RECORDS  # app registers these routes, so it imports us

    if not model.BOT_ID.match(bot_id):
        return None
    return await request.app[BOT_RECORDS].get(request.app[STORE], request.app[REDIS], bot_id)


# --- sign-in ------------------------------------------------------------------------------------
async def signin_page(request: web.Request) -> web.StreamResponse:
    if await sessions.current(request) is not None:
        return redirect(_safe_next(request, request.query.get("next")))
    return _signin_form(request, 200)


def _signin_form(
    request: web.Request, status: int, message: str = "", next_url: str | None = None
) -> web.Response:
    token = secrets.token_urlsafe(24)
    response = render(
        request,
        "signin.html",
        status,
        csrf=token,
        message=message,
        next=_safe_next(request, next_url if next_url is not None else request.query.get("next")),
    )
    sessions.set_cookie(request, response, sessions.SIGNIN_COOKIE, token, 3600)
    return response


async def signin(request: web.Request) -> web.StreamResponse:
    try:
        form = await read_form(request)
    except BadForm as exc:
        return _signin_form(request, 400, exc.message, "")
    next_url = str(form.get("next", ""))
    if not sessions.csrf_ok(request.cookies.get(sessions.SIGNIN_COOKIE), str(form.get("csrf", ""))):
        return _signin_form(request, 403, "This sign-in form expired; please try again.", next_url)
    # This attempt is counted before the key is looked up (one atomic INCR), so parallel
    # attempts cannot all pass a check made before any of them is counted.
    wait = await sessions.signin_attempt(request)
    if wait:
        minutes = max(1, round(wait / 60))
        response = _signin_form(
            request, 429, f"Too many wrong keys from your address; try again in {minutes} min.", next_url
        )
        response.headers["Retry-After"] = str(wait)
        return response
    key = str(form.get("key", "")).strip()
    registry = request.app[REGISTRY]
    found = await registry.credential(key) if key and len(key) <= 256 else None
    if found is None:
        if key and not registry.ready:
            await sessions.signin_not_a_guess(request)
            return _signin_form(
                request, 503, "The registry is being rebuilt; try again in a moment.", next_url
            )
        return _signin_form(request, 401, "That key is not a key of any account.", next_url)
    # A real key, whatever its scope, is not a guess: its own attempt is taken back, and only
    # that one (the wrong keys before it still count, so alternating with a valid key of one's
    # own account gains no tries).
    await sessions.signin_not_a_guess(request)
    if not sessions.may_sign_in(found):
        why = model.MissingScope(INGEST, READ, "viewing the dashboard").message
        return _signin_form(
            request,
            403,
            f"{why}: it may post stats (for its bots) but not read them. Sign in with the account "
            "key, or a named key with the read or manage scope.",
            next_url,
        )
    registry.used(found.usage_id)
    await sessions.close_session(request)  # this browser's previous session, if any, ends here
    token = await sessions.open_session(request, found, hash_key(key))
    response = redirect(_safe_next(request, next_url))
    sessions.set_cookie(request, response, sessions.COOKIE, token, request.app[SETTINGS].session_max_s)
    sessions.clear_cookie(request, response, sessions.SIGNIN_COOKIE)
    return response


async def _owner(request: web.Request) -> sessions.SignedIn:
    """The signed-in session, or a redirect to sign-in."""
    session = await sessions.current(request)
    if session is None:
        location = f"{base_path(request)}/dashboard/signin?next={quote(request.path_qs)}"
        raise web.HTTPSeeOther(location, headers=_PAGE_HEADERS)
    return session


def _may_manage(request: web.Request, session: sessions.SignedIn) -> None:
    """The account API's rule for the session's key: changing anything (or opening a page made
    to change it: bot settings with the audit log and webhook, which the API shows only to a
    manage key) needs the manage scope; 403 saying so otherwise."""
    try:
        accounts_api.require_scope(session.key, MANAGE)
    except model.MissingScope as exc:
        raise refused(
            request,
            session,
            f"{exc.message}. This session is read-only: sign in with the account key or a manage key "
            "to change settings.",
        ) from None


async def _form_of(request: web.Request, session: sessions.SignedIn) -> dict[str, str]:
    """The posted form, refused (403) without this session's CSRF token (400 when it is no form
    of text fields)."""
    try:
        form = await read_form(request)
    except BadForm as exc:
        raise refused(request, session, exc.message, web.HTTPBadRequest) from None
    if not sessions.csrf_ok(session.csrf, str(form.get("csrf", ""))):
        raise refused(
            request,
            session,
            "This form did not come from your dashboard session (missing or wrong CSRF token).",
        )
    return dict(form.items())


async def _manager(request: web.Request) -> tuple[sessions.SignedIn, dict[str, str] | None]:
    """For a page that changes things: the session (else sign-in), its form checked for the
    CSRF token when this is a POST, and the manage scope. A write is counted against the
    account's registry writes per minute (429 past it, shown on the page)."""
    session = await _owner(request)
    form = await _form_of(request, session) if request.method == "POST" else None
    _may_manage(request, session)
    return session, form


async def signout(request: web.Request) -> web.StreamResponse:
    session = await sessions.current(request)
    if session is not None:
        await _form_of(request, session)
        await sessions.close_session(request)
    response = redirect(f"{base_path(request)}/dashboard/signin")
    sessions.clear_cookie(request, response, sessions.COOKIE)
    return response


# --- my bots ------------------------------------------------------------------------------------
async def my_bots(request: web.Request) -> web.StreamResponse:
    session = await _owner(request)
    store = request.app[STORE]
    account = await catalog.get_account(store, session.account)
    bots = await catalog.list_bots(store, session.account)
    return render(request, "my_bots.html", signed_in=session, account=account, bots=bots)


# --- the bot page -------------------------------------------------------------------------------
async def bot_page(request: web.Request) -> web.StreamResponse:
    session = await sessions.current(request)
    bot = await _bot_records(request, request.match_info["botId"])
    owner = bot is not None and session is not None and session.account == bot.account_id
    if bot is None or (bot.private and not owner):
        return not_found(request, session)
    manager = owner and session is not None and not session.read_only
    return render(request, "bot.html", signed_in=session, bot=bot, owner=owner, manager=manager)


# --- settings -----------------------------------------------------------------------------------
async def _owned_bot(request: web.Request, session: sessions.SignedIn) -> Bot | None:
    """The path's bot if it is the session's account's (another account's is not found, public
    or not: 404, never its settings)."""
    bot_id = request.match_info["botId"]
    if not model.BOT_ID.match(bot_id):
        return None
    bot = await catalog.get_bot(request.app[STORE], bot_id)
    return bot if bot is not None and bot.account_id == session.account else None


async def _settings_page(
    request: web.Request,
    session: sessions.SignedIn,
    bot: Bot,
    status: int = 200,
    errors: dict[str, str] | None = None,
    values: dict[str, Any] | None = None,
    saved: bool = False,
) -> web.Response:
    store = request.app[STORE]
    try:
        page = max(1, min(1_000_000, int(request.query.get("page", "1"))))
    except ValueError:
        page = 1
    changes, total = await audit.bot_log(
        store, bot.id, bot.account_id, bot.created_at, limit=AUDIT_PAGE, offset=(page - 1) * AUDIT_PAGE
    )
    account = await catalog.get_account(store, session.account)
    shown = {
        "username": bot.username,
        "avatar": bot.avatar or "",
        "private": bot.private,
        "voteWebhookURL": bot.vote_webhook_url or "",
    } | (values or {})
    return render(
        request,
        "settings.html",
        status,
        signed_in=session,
        bot=bot,
        account=account,
        values=shown,
        errors=errors or {},
        saved=saved,
        changes=changes,
        page=page,
        pages=max(1, -(-total // AUDIT_PAGE)),
        custom_names=await catalog.custom_metric_names(store, bot.id),
        nonce=secrets.token_urlsafe(16),
    )


async def settings_page(request: web.Request) -> web.StreamResponse:
    session, _ = await _manager(request)
    bot = await _owned_bot(request, session)
    if bot is None:
        return not_found(request, session)
    return await _settings_page(request, session, bot, saved=request.query.get("saved") == "1")


async def save_settings(request: web.Request) -> web.StreamResponse:
    session, posted = await _manager(request)
    form = posted or {}
    bot = await _owned_bot(request, session)
    if bot is None:
        return not_found(request, session)
    if form.get("action") == "webhook":
        body: dict[str, Any] = {"voteWebhookURL": form.get("voteWebhookURL", "").strip() or None}
        shape: type[msgspec.Struct] = WebhookPatch
    else:
        body = {
            "username": form.get("username", ""),
            "avatar": form.get("avatar", "").strip() or None,
            "private": form.get("private") == "on",
        }
        shape = BotPatch
    store, redis = request.app[STORE], request.app[REDIS]
    try:
        # The form goes through the API's own body struct: one definition of what is valid.
        patch = model.decode(msgspec.json.encode(body), shape)
        model.require_changes(patch)
        fields = model.bot_fields(patch)
        await accounts_api.charge(request, session.account)
        await catalog.update_bot(store, redis, bot.id, fields, by=session.account, owner=session.account)
    except model.RegistryError as exc:
        values = {k: ("" if v is None else v) for k, v in body.items()}
        return await _settings_page(
            request, session, bot, exc.status, {exc.field or "form": exc.message}, values
        )
    finally:
        request.app[REGISTRY].invalidate()
    return redirect(f"{base_path(request)}/dashboard/bot/{quote(bot.id)}/settings?saved=1")


# How long a regeneration form's nonce is remembered: longer than a settings page is kept open
# and reloaded, within reason (a form older than this may be sent once more).
NONCE_S = 86_400


async def _take_nonce(
    request: web.Request, session: sessions.SignedIn, form: dict[str, str], page: str, done: str
) -> None:
    """Take the form's nonce (one per rendered page) once, with SET NX: a form whose answer shows
    a secret once (a new key, a webhook's signing secret) posted again — a reload of that answer —
    is refused (409, "already sent: `done`") instead of doing it again."""
    nonce = form.get("nonce", "")
    if not nonce or len(nonce) > 64:
        raise refused(request, session, f"The form's `nonce` is missing; reload the {page} page.",
                      web.HTTPBadRequest)  # fmt: skip
    entry = "bp:form:nonce:" + hashlib.sha256(f"{session.account}:{nonce}".encode()).hexdigest()
    if not await request.app[REDIS].set(entry, b"1", nx=True, ex=NONCE_S):
        raise refused(request, session, f"This form was already sent: {done}", web.HTTPConflict)


async def regenerate_key(request: web.Request) -> web.StreamResponse:
    """The new key is shown once, in the answer to the post. Reloading that answer posts the
    same form again: its nonce (one per rendered settings page) is taken once, with SET NX, so
    the repeat is refused (409) instead of regenerating again, which would end the key just
    shown."""
    session, posted = await _manager(request)
    store, redis = request.app[STORE], request.app[REDIS]
    await _take_nonce(
        request,
        session,
        posted or {},
        "settings",
        "the key was regenerated then and is not regenerated again. Open the settings page to "
        "regenerate it once more.",
    )
    try:
        await accounts_api.charge(request, session.account)
    except model.RegistryError as exc:
        page = render(request, "refused.html", exc.status, signed_in=session, message=exc.message)
        if exc.retry_after_s is not None:
            page.headers["Retry-After"] = str(exc.retry_after_s)
        return page
    account, key = await catalog.regenerate_key(store, redis, session.account, by=session.account)
    request.app[REGISTRY].invalidate()
    await sessions.rebind(request, hash_key(key))
    signed_in = await sessions.current(request)
    return render(request, "new_key.html", signed_in=signed_in, account=account, key=key)


# --- alerts -------------------------------------------------------------------------------------
# The page lists what GET /v1/alerts/destinations and /v1/alerts/rules list (the same views) and
# its forms make the account API's changes by calling the functions its handlers call
# (`alerts_api.add_destination`, `add_rule`, `change_rule`, `remove_rule`, `remove_destination`),
# each body decoded first through the API's own struct: one definition of what is valid.
ALERT_DELIVERIES = 5  # each rule's last deliveries shown (the API's deliveries route has them all)
RULE_FORM_KINDS = ("offline", "threshold")  # the other kinds are made through the API
_DESTINATION_FIELDS = ("name", "type", "url")
_RULE_FIELDS = ("name", "bot", "kind", "destinations", "minutes", "metric", "op", "value", "ofMetric")
_RULE_NUMBERS = ("minutes", "value")


def _number(text: str) -> float | str:
    """A number field as a JSON number when it is one; otherwise the text as typed, so the
    struct refuses it with its own message naming the field."""
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def _alerts_url(request: web.Request, saved: str = "") -> str:
    return f"{base_path(request)}/dashboard/alerts" + (f"?saved={saved}" if saved else "")


def _form_error(exc: model.RegistryError, form: str, fields: tuple[str, ...]) -> dict[str, str]:
    """The refusal's message, keyed by the form and the field it names (`destinations[0]` is the
    `destinations` field); a field this form does not have, or none, is the form's own."""
    root = (exc.field or "").split("[", 1)[0].split(".", 1)[0]
    return {f"{form}.{root if root in fields else 'form'}": exc.message}


async def _alerts_page(
    request: web.Request,
    session: sessions.SignedIn,
    status: int = 200,
    errors: dict[str, str] | None = None,
    values: dict[str, Any] | None = None,
    retry_after_s: int | None = None,
) -> web.Response:
    store, redis = request.app[STORE], request.app[REDIS]
    found = await rules_db.list_destinations(store, account=session.account)
    destinations = [rules_db.destination_view(d) for d, _ in found]
    rules = [
        {
            "rule": rule,
            "state": await alerts_api.rule_state(request, rule.id),
            "deliveries": await rules_db.delivery_log(redis, rule.id, ALERT_DELIVERIES),
        }
        for rule in await rules_db.list_rules(store, account=session.account)
    ]
    page = render(
        request,
        "alerts.html",
        status,
        signed_in=session,
        destinations=destinations,
        destination_names={d["id"]: d["name"] for d in destinations},
        rules=rules,
        bots=await catalog.list_bots(store, session.account),
        kinds=RULE_FORM_KINDS,
        errors=errors or {},
        values=values or {},
        failed=next(iter(errors)).split(".", 1)[0] if errors else "",  # the form shown again as sent
        saved=request.query.get("saved", ""),
        nonce=secrets.token_urlsafe(16),
    )
    if retry_after_s is not None:
        page.headers["Retry-After"] = str(retry_after_s)
    return page


async def _refused_change(
    request: web.Request, session: sessions.SignedIn, exc: model.RegistryError, form: str,
    fields: tuple[str, ...], values: dict[str, Any] | None = None,
) -> web.Response:  # fmt: skip
    """A change the API refuses: another account's (or an unknown) rule or destination is the
    404 page, as at the API; anything else the page again with the message by its field."""
    if isinstance(exc, model.NotFound):
        return not_found(request, session)
    errors = _form_error(exc, form, fields)
    return await _alerts_page(request, session, exc.status, errors, values, exc.retry_after_s)


async def alerts_page(request: web.Request) -> web.StreamResponse:
    session = await _owner(request)  # a read-only session sees the page (its forms answer 403)
    return await _alerts_page(request, session)


async def add_alert_destination(request: web.Request) -> web.StreamResponse:
    session, posted = await _manager(request)
    form = posted or {}
    body = {name: form.get(name, "") for name in _DESTINATION_FIELDS}
    body["url"] = body["url"].strip()  # as the settings' URLs: a pasted URL's stray spaces
    try:
        decoded = model.decode(msgspec.json.encode(body), DestinationCreate)
        await _take_nonce(request, session, form, "alerts", "the destination was added then (its secret "
                          "was shown once) and is not added again.")  # fmt: skip
        view = await alerts_api.add_destination(request, session.account, decoded)
    except model.RegistryError as exc:
        return await _refused_change(request, session, exc, "destination", _DESTINATION_FIELDS, body)
    if "secret" not in view:
        return redirect(_alerts_url(request, "destination"))
    # The signing secret, this once: render()'s `private, no-store`, like a regenerated key.
    return render(request, "alert_secret.html", signed_in=session, destination=view)


async def add_alert_rule(request: web.Request) -> web.StreamResponse:
    session, posted = await _manager(request)
    form = posted or {}
    chosen = (await read_form(request)).getall("destinations", [])  # read (and checked) by _manager
    body: dict[str, Any] = {"name": form.get("name", ""), "bot": form.get("bot", ""),
                            "kind": form.get("kind", ""), "destinations": chosen}  # fmt: skip
    # An empty field is a field not given (the API's default, or its message that it is needed).
    for name in ("metric", "op", "ofMetric", *_RULE_NUMBERS):
        text = form.get(name, "").strip()
        if text:
            body[name] = _number(text) if name in _RULE_NUMBERS else text
    try:
        decoded = model.decode(msgspec.json.encode(body), RuleCreate)
        await alerts_api.add_rule(request, session.account, decoded)
    except model.RegistryError as exc:
        values = {k: v for k, v in form.items() if k in _RULE_FIELDS} | {"destinations": chosen}
        return await _refused_change(request, session, exc, "rule", _RULE_FIELDS, values)
    return redirect(_alerts_url(request, "rule"))


async def mute_alert_rule(request: web.Request) -> web.StreamResponse:
    session, posted = await _manager(request)
    muted = (posted or {}).get("muted") == "true"
    try:
        current = await rules_db.get_rule(request.app[STORE], request.match_info["id"], session.account)
        body = model.decode(msgspec.json.encode({"muted": muted}), RuleChanges)
        await alerts_api.change_rule(request, session.account, current, body)
    except model.RegistryError as exc:
        return await _refused_change(request, session, exc, "action", ())
    return redirect(_alerts_url(request, "muted" if muted else "unmuted"))


async def delete_alert_rule(request: web.Request) -> web.StreamResponse:
    session, _ = await _manager(request)
    try:
        await alerts_api.remove_rule(request, session.account, request.match_info["id"])
    except model.RegistryError as exc:
        return await _refused_change(request, session, exc, "action", ())
    return redirect(_alerts_url(request, "rule-deleted"))


async def delete_alert_destination(request: web.Request) -> web.StreamResponse:
    session, _ = await _manager(request)
    try:
        await alerts_api.remove_destination(request, session.account, request.match_info["id"])
    except model.RegistryError as exc:  # 409 while a rule uses it: said on the page
        return await _refused_change(request, session, exc, "action", ())
    return redirect(_alerts_url(request, "destination-deleted"))


# --- status page --------------------------------------------------------------------------------
async def _status_settings(
    request: web.Request, session: sessions.SignedIn, status: int = 200, errors: dict[str, str] | None = None,
    page: status_pages.StatusPage | None = None, saved: bool = False,
) -> web.Response:  # fmt: skip
    store = request.app[STORE]
    account = await catalog.get_account(store, session.account)
    if page is None:
        page = await status_pages.for_account(store, session.account) or status_pages.StatusPage(
            session.account, "", f"{account.name if account else 'Our'} bots", [], False
        )
    bots = await catalog.list_bots(store, session.account)
    return render(
        request, "status_settings.html", status, signed_in=session, page=page, bots=bots,
        errors=errors or {}, saved=saved,
    )  # fmt: skip


async def status_settings(request: web.Request) -> web.StreamResponse:
    session, _ = await _manager(request)
    return await _status_settings(request, session, saved=request.query.get("saved") == "1")


async def save_status_settings(request: web.Request) -> web.StreamResponse:
    session, posted = await _manager(request)
    form = posted or {}
    chosen = (await read_form(request)).getall("bots", [])  # read (and checked) by _manager
    store = request.app[STORE]
    owned = {b.id for b in await catalog.list_bots(store, session.account)}
    try:
        page = status_pages.parse(form, chosen, owned)
        await accounts_api.charge(request, session.account)
        await status_pages.save(store, request.app[REDIS], session.account, page)
    except model.RegistryError as exc:
        draft = status_pages.StatusPage(
            session.account, form.get("slug", ""), form.get("title", ""), chosen, form.get("enabled") == "on"
        )
        return await _status_settings(request, session, exc.status, {exc.field or "form": exc.message}, draft)
    request.app[SLUGS].clear()
    return redirect(f"{base_path(request)}/dashboard/status-page?saved=1")


async def public_status(request: web.Request) -> web.StreamResponse:
    page = await request.app[SLUGS].get(request.app[STORE], request.match_info["slug"])
    if page is None:
        return not_found(request, None)
    shown = []
    for bot_id in page.bot_ids:
        bot = await _bot_records(request, bot_id)
        if bot is not None and not bot.private and bot.account_id == page.account_id:
            shown.append(bot)
    cache = f"public, max-age={request.app[SETTINGS].public_cache_s}"
    return render(request, "status.html", page=page, bots=shown, cache=cache)


# --- badges -------------------------------------------------------------------------------------
class BadgeValues:
    """(bot, metric) -> (text, colour) for BOTPULSE_PUBLIC_CACHE_S, computed once however many
    requests arrive meanwhile (they wait for the one read in flight)."""

    MAX_ENTRIES = 50_000

    def __init__(self, ttl_s: int) -> None:
        self.ttl_s = ttl_s
        self._values: dict[tuple[str, str], tuple[float, tuple[str, str]]] = {}
        self._flights: dict[tuple[str, str], asyncio.Future[tuple[str, str]]] = {}

    async def get(self, request: web.Request, bot_id: str, metric: str) -> tuple[str, str]:
        key = (bot_id, metric)
        hit = self._values.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        flight = self._flights.get(key)
        if flight is not None:
            return await asyncio.shield(flight)
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        try:
            value = await _badge_value(request, bot_id, metric)
        except BaseException as exc:
            flight.set_exception(exc)
            flight.exception()  # retrieved: waiters re-raise it, no "never retrieved" warning
            raise
        finally:
            self._flights.pop(key, None)
        if len(self._values) >= self.MAX_ENTRIES:
            self._values.clear()
        self._values[key] = (time.monotonic() + self.ttl_s, value)
        flight.set_result(value)
        return value


BADGE_VALUES = web.AppKey("dashboard_badge_values", BadgeValues)

_LATEST_SQL = (
    "SELECT argMaxIf(guilds, ts, guilds IS NOT NULL), argMaxIf(users, ts, users IS NOT NULL)"
    " FROM bot_stats WHERE bot_id = {id:String}"
)


async def _badge_value(request: web.Request, bot_id: str, metric: str) -> tuple[str, str]:
    store = request.app[STORE]
    window_ms = request.app[SETTINGS].heartbeat_window_s * 1000
    if metric == "status":
        seen = (await last_seen(store, [bot_id])).get(bot_id)
        up = connection_status(seen, window_ms) == "connected"
        return ("online", "brightgreen") if up else ("offline", "red")
    if metric in _UPTIME_SPANS:
        end = now_ms()
        start = end - _UPTIME_SPANS[metric]
        up_ms = (await uptimes(store, [bot_id], start, end, window_ms))[bot_id]
        percent = up_ms * 100 / (end - start)
        text = f"{percent:.2f}".rstrip("0").rstrip(".") + "%"
        return text, badges.uptime_color(percent)
    guilds, users = (await store.query(_LATEST_SQL, {"id": bot_id}))[0]
    value = guilds if metric == "guilds" else users
    return (badges.compact(int(value)), "blue") if value is not None else ("no data", "grey")


async def badge(request: web.Request) -> web.StreamResponse:
    name = request.match_info["metric"]
    metric = name.removesuffix(".svg")
    if not name.endswith(".svg") or metric not in BADGE_METRICS:
        return error(404, f"No such badge; one of: {', '.join(m + '.svg' for m in BADGE_METRICS)}", "metric")
    style = request.query.get("style", "flat")
    if style not in badges.STYLES:
        return error(400, "style must be flat or flat-square", "style")
    label = request.query.get("label", BADGE_METRICS[metric])
    bot = await _bot_records(request, request.match_info["botId"])
    # Never a private bot's numbers, whoever asks (a badge is embedded on other sites, where no
    # session cookie goes): a private or unknown bot is 404 alike, with an "unknown" badge as the
    # body so an embed still shows something.
    hidden = bot is None or bot.private
    if hidden:
        value, color = "unknown", "grey"
    else:
        value, color = await request.app[BADGE_VALUES].get(request, bot.id, metric)  # type: ignore[union-attr]
    svg = badges.render(label, value, color, style).encode()
    etag = '"' + hashlib.sha256(svg).hexdigest()[:24] + '"'
    headers = {
        "Cache-Control": f"public, max-age={request.app[SETTINGS].public_cache_s}",
        "ETag": etag,
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
        "X-Content-Type-Options": "nosniff",
    }
    if hidden:
        return web.Response(status=404, body=svg, content_type="image/svg+xml", headers=headers)
    if etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
        return web.Response(status=304, headers=headers)
    return web.Response(body=svg, content_type="image/svg+xml", headers=headers)


async def asset(request: web.Request) -> web.StreamResponse:
    return request.app[ASSETS].response(request)


async def home(request: web.Request) -> web.StreamResponse:
    return redirect(f"{base_path(request)}/dashboard")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The browser's routes: HTML pages, their static files and the SVG badges. They are not part of
# the JSON API, so the OpenAPI document leaves them out (tests/test_openapi.py ignores exactly
# these paths); tests/test_dashboard_bola.py's BOLA matrix covers every one of them.
BROWSER_ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/dashboard", my_bots),
    ("GET", "/dashboard/", home),
    ("GET", "/dashboard/signin", signin_page),
    ("POST", "/dashboard/signin", signin),
    ("POST", "/dashboard/signout", signout),
    ("GET", "/dashboard/bot/{botId}", bot_page),
    ("GET", "/dashboard/bot/{botId}/settings", settings_page),
    ("POST", "/dashboard/bot/{botId}/settings", save_settings),
    ("POST", "/dashboard/account/key", regenerate_key),
    ("GET", "/dashboard/status-page", status_settings),
    ("POST", "/dashboard/status-page", save_status_settings),
    ("GET", "/dashboard/alerts", alerts_page),
    ("POST", "/dashboard/alerts/destinations", add_alert_destination),
    ("POST", "/dashboard/alerts/destinations/{id}/delete", delete_alert_destination),
    ("POST", "/dashboard/alerts/rules", add_alert_rule),
    ("POST", "/dashboard/alerts/rules/{id}/mute", mute_alert_rule),
    ("POST", "/dashboard/alerts/rules/{id}/delete", delete_alert_rule),
    ("GET", "/dashboard/assets/{name}", asset),
    ("GET", "/status/{slug}", public_status),
    ("GET", "/badge/{botId}/{metric}", badge),
)
# The dashboard's JSON-API-style routes: described in query/spec.py like every API route.
API_ROUTES: tuple[tuple[str, str, Handler], ...] = (("GET", "/v1/bot/{botId}/export", export.export),)


def add_routes(app: web.Application) -> None:
    settings = app[SETTINGS]
    app[ASSETS] = Assets()
    app[TEMPLATES] = templates()
    app[SLUGS] = status_pages.SlugCache(settings.public_cache_s)
    app[BADGE_VALUES] = BadgeValues(settings.public_cache_s)
    for method, path, handler in (*BROWSER_ROUTES, *API_ROUTES):
        if method == "GET":
            app.router.add_get(path, handler)  # with HEAD, as every GET route of the service
        else:
            app.router.add_route(method, path, handler)
