"""Dashboard sign-in sessions, kept in Redis; the browser holds only a random token.

`bp:sess:<sha256(token)>` holds the account, the hash of the API key the session was opened
with and its start time — only hashes of secrets: the token itself is never stored, and the
session's CSRF token is derived from it (an HMAC keyed with the token), so Redis holds neither.
A session acts with that key's scope, read from the registry index on every use
(`registry.index.RegistryCache.credential_for_hash`), and the account API's rule decides what
it may do (`query.accounts_api.require_scope`): the account key or a manage key may change
things, a read key only view; an ingest key (a bot's token, or a key limited to some bots) may
not read through the API, so it cannot open a session at all.

A session ends when it is idle for BOTPULSE_SESSION_IDLE_S (the entry's TTL, renewed on use),
BOTPULSE_SESSION_MAX_S after it started whatever its use, on sign-out, and as soon as the key it
was opened with stops working (regenerated or revoked through the dashboard, the API or the
operator CLI): every use looks that hash up in the registry index, so no list of sessions per
account is needed.

The query service takes the session cookie as a credential on its GET routes (`caller_account`),
so the dashboard's pages read an owner's private bots through the same public API as everyone
else. The cookie is `SameSite=Strict` (other sites' requests never carry it) and writes never
accept it: they need the key itself, or a dashboard form with the session's CSRF token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
from typing import Any

import msgspec
import redis.asyncio as aioredis
from aiohttp import web

from botpulse.query.resources import REDIS, REGISTRY, SETTINGS
from botpulse.runtime.settings import Settings
from botpulse.schemas.registry import ACCOUNT_KEY_ID, INGEST, MANAGE, IndexedKey

COOKIE = "bp_session"
# The sign-in form's own CSRF token (double submit: the cookie and the form field must agree).
SIGNIN_COOKIE = "bp_signin"
_TOKEN_MAX = 128


class Session(msgspec.Struct):
    """What Redis keeps of a session (hashes only, see the module's docstring)."""

    account: str
    key_hash: str
    started: float


class SignedIn(msgspec.Struct, frozen=True):
    """A live session during one request: its stored record, the key it acts with (as the
    index has it now) and its CSRF token (derived from the cookie, never stored)."""

    session: Session
    key: IndexedKey
    csrf: str

    @property
    def account(self) -> str:
        return self.session.account

    @property
    def scope(self) -> str:
        return self.key.scope

    @property
    def read_only(self) -> bool:
        return self.key.scope != MANAGE

    @property
    def account_key(self) -> bool:
        """Opened with the account key itself (not a named key)."""
        return self.key.key_id == ACCOUNT_KEY_ID


_decoder = msgspec.msgpack.Decoder(Session)
# The request's session, looked up once (aiohttp >= 3.12 types request storage by key).
_LOADED: Any = (
    web.RequestKey("dashboard_session", SignedIn) if hasattr(web, "RequestKey") else "dashboard_session"
)
_CSRF_LABEL = b"botpulse dashboard csrf"


def csrf_for(token: str) -> str:
    """The session's CSRF token: an HMAC of a fixed label keyed with the session token. Only a
    page rendered for that cookie can hold it (the cookie is HttpOnly), and nothing stores it."""
    mac = hmac.new(token.encode("utf-8", "surrogateescape"), _CSRF_LABEL, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _entry(token: str) -> str:
    return "bp:sess:" + hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _fail_entry(address: str) -> str:
    return "bp:signin:fail:" + hashlib.sha256(address.encode("utf-8", "surrogateescape")).hexdigest()


def is_https(request: web.Request) -> bool:
    """The request reached us over https; `X-Forwarded-Proto` counts only with
    BOTPULSE_TRUST_PROXY (anyone can send the header to a service reached directly)."""
    if request.scheme == "https":
        return True
    if request.app[SETTINGS].trust_proxy:
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        return proto == "https"
    return False


def client_address(request: web.Request) -> str:
    """Who is signing in, for the wrong-key limit: the peer, or behind a trusted proxy the
    address that proxy appended to `X-Forwarded-For` (the last one; earlier ones are the
    client's own claims). An IPv6 client counts as its /64: one host is usually given a whole
    /64, so counting single addresses would give it 2^64 windows."""
    address = request.remote or "unknown"
    if request.app[SETTINGS].trust_proxy:
        forwarded = [a.strip() for a in request.headers.get("X-Forwarded-For", "").split(",") if a.strip()]
        if forwarded:
            address = forwarded[-1]
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def cookie_path(settings: Settings) -> str:
    return (settings.query_prefix or "") + "/"


def set_cookie(
    request: web.Request, response: web.StreamResponse, name: str, value: str, max_age: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=cookie_path(request.app[SETTINGS]),
        httponly=True,
        samesite="Strict",
        secure=is_https(request),
    )


def clear_cookie(request: web.Request, response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path=cookie_path(request.app[SETTINGS]))


def may_sign_in(key: IndexedKey) -> bool:
    """A key that may read may hold a session; an ingest key may not read (the API answers it
    403), so it may not view the dashboard either."""
    return key.scope != INGEST


async def open_session(request: web.Request, key: IndexedKey, key_hash: str) -> str:
    """A new session acting with this key; returns the cookie token (never stored)."""
    settings = request.app[SETTINGS]
    token = secrets.token_urlsafe(32)
    session = Session(key.account_id, key_hash, time.time())
    await request.app[REDIS].set(
        _entry(token),
        msgspec.msgpack.encode(session),
        ex=min(settings.session_idle_s, settings.session_max_s),
    )
    request[_LOADED] = SignedIn(session, key, csrf_for(token))
    return token


async def rebind(request: web.Request, key_hash: str) -> None:
    """Keep the current session after its own owner regenerated the account key with it (every
    other session opened with that key ends, since it holds the old key's hash). A session
    opened with a named manage key keeps that key, which still works."""
    token = request.cookies.get(COOKIE, "")
    signed = await current(request)
    if signed is None or not signed.account_key:
        return
    session = msgspec.structs.replace(signed.session, key_hash=key_hash)
    redis: aioredis.Redis = request.app[REDIS]
    await redis.set(_entry(token), msgspec.msgpack.encode(session), keepttl=True)
    request[_LOADED] = msgspec.structs.replace(signed, session=session)


async def current(request: web.Request) -> SignedIn | None:
    """The request's live session (looked up once per request), or None."""
    if _LOADED in request:
        return request[_LOADED]  # type: ignore[no-any-return]
    request[_LOADED] = signed = await _load(request)
    return signed


async def _load(request: web.Request) -> SignedIn | None:
    token = request.cookies.get(COOKIE)
    if not token or len(token) > _TOKEN_MAX:
        return None
    app = request.app
    settings, redis, registry = app[SETTINGS], app[REDIS], app[REGISTRY]
    entry = _entry(token)
    raw = await redis.get(entry)
    if raw is None:
        return None
    try:
        session = _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        await redis.delete(entry)
        return None
    left = settings.session_max_s - (time.time() - session.started)
    if left <= 0:
        await redis.delete(entry)
        return None
    key = await registry.credential_for_hash(session.key_hash)
    if key is None or key.account_id != session.account or not may_sign_in(key):
        if registry.ready:  # the key changed; with the index missing, nothing is known yet
            await redis.delete(entry)
        return None
    registry.used(key.usage_id)
    await redis.expire(entry, max(1, int(min(settings.session_idle_s, left))))
    return SignedIn(session, key, csrf_for(token))


async def close_session(request: web.Request) -> None:
    token = request.cookies.get(COOKIE)
    if token and len(token) <= _TOKEN_MAX:
        await request.app[REDIS].delete(_entry(token))
    request[_LOADED] = None


async def session_account(request: web.Request) -> str | None:
    """The signed-in account, for the query service's GET routes (`query.app.caller_account`)."""
    if COOKIE not in request.cookies:
        return None
    signed = await current(request)
    return signed.account if signed else None


def csrf_ok(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))


# --- wrong keys ----------------------------------------------------------------------------------
async def signin_attempt(request: web.Request) -> int:
    """Count this sign-in attempt against the client's window (one atomic INCR, the window's
    EXPIRE set by the first); the seconds until it may try again if it is past the limit, else
    0. An attempt whose key turns out to be real is taken back (`signin_not_a_guess`)."""
    settings, redis = request.app[SETTINGS], request.app[REDIS]
    entry = _fail_entry(client_address(request))
    attempts, _, ttl = await (
        redis.pipeline(transaction=True)
        .incr(entry)
        .expire(entry, settings.signin_window_s, nx=True)
        .ttl(entry)
        .execute()
    )
    if int(attempts) > settings.signin_max_failures:
        return max(1, int(ttl))
    return 0


async def signin_not_a_guess(request: web.Request) -> None:
    """Take back this request's own attempt (never the others': no reset on success)."""
    settings, redis = request.app[SETTINGS], request.app[REDIS]
    entry = _fail_entry(client_address(request))
    # (the EXPIRE: should the window have just ended, the count left is never kept for good)
    pipe = redis.pipeline(transaction=True)
    await pipe.decr(entry).expire(entry, settings.signin_window_s, nx=True).execute()
