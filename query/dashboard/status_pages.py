"""Status pages: one per account, off until its owner turns it on, served at `/status/<slug>`.

Stored in ClickHouse (`status_pages`, one row per version). A slug belongs to one enabled page
at a time: saving checks that under the registry lock. The public page reads its record from a
per-process cache (BOTPULSE_PUBLIC_CACHE_S, misses too), so a burst of views costs one query;
this process's own saves clear it at once, other processes see them within that time.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import unicodedata

import msgspec
import redis.asyncio as aioredis

from botpulse.registry.catalog import registry_lock
from botpulse.registry.model import Conflict, Invalid
from botpulse.runtime.clickhouse import Store

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{1,62}[a-z0-9])$")
MAX_BOTS = 100
MAX_TITLE = 100
# Characters a title may not hold: controls (C0, DEL, C1), format characters (bidi overrides
# such as U+202E, zero-width spaces), surrogates and the line/paragraph separators — each makes
# the title show as something other than what it holds.
_UNSHOWN = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
COLUMNS = ["account_id", "slug", "title", "bot_ids", "enabled", "updated_at"]


class StatusPage(msgspec.Struct, frozen=True):
    account_id: str
    slug: str
    title: str
    bot_ids: list[str]
    enabled: bool


_SELECT = "SELECT account_id, slug, title, bot_ids, enabled FROM status_pages FINAL"


def _page(row: tuple) -> StatusPage:  # type: ignore[type-arg]
    return StatusPage(row[0], row[1], row[2], list(row[3]), bool(row[4]))


async def for_account(store: Store, account_id: str) -> StatusPage | None:
    rows = await store.query(f"{_SELECT} WHERE account_id = {{a:String}}", {"a": account_id})
    return _page(rows[0]) if rows else None


async def _by_slug(store: Store, slug: str) -> StatusPage | None:
    rows = await store.query(f"{_SELECT} WHERE slug = {{s:String}} AND enabled = 1 LIMIT 1", {"s": slug})
    return _page(rows[0]) if rows else None


def parse(form: dict[str, str], bot_ids: list[str], owned: set[str]) -> StatusPage:
    """The page the owner's form describes; `Invalid` naming the field otherwise."""
    slug = form.get("slug", "").strip().lower()
    if not SLUG.match(slug):
        raise Invalid("slug must be 3-64 characters of a-z 0-9 and -, not starting or ending with -", "slug")
    title = form.get("title", "").strip()
    if not title or len(title) > MAX_TITLE or any(unicodedata.category(c) in _UNSHOWN for c in title):
        raise Invalid(
            f"title must be 1-{MAX_TITLE} characters without control, format or line/paragraph "
            "separator characters",
            "title",
        )
    if len(bot_ids) > MAX_BOTS:
        raise Invalid(f"a status page shows at most {MAX_BOTS} bots", "bots")
    unknown = [b for b in bot_ids if b not in owned]
    if unknown:
        raise Invalid(f"not a bot of this account: {unknown[0]}", "bots")
    return StatusPage("", slug, title, list(dict.fromkeys(bot_ids)), form.get("enabled") == "on")


async def save(store: Store, redis: aioredis.Redis, account_id: str, page: StatusPage) -> StatusPage:
    page = msgspec.structs.replace(page, account_id=account_id)
    async with registry_lock(redis):
        if page.enabled:
            taken = await _by_slug(store, page.slug)
            if taken is not None and taken.account_id != account_id:
                raise Conflict("this slug is taken by another status page", "slug")
        await store.insert(
            "status_pages",
            [[account_id, page.slug, page.title, page.bot_ids, int(page.enabled), dt.datetime.now(dt.UTC)]],
            COLUMNS,
        )
    return page


class SlugCache:
    """slug -> enabled page (or None), for BOTPULSE_PUBLIC_CACHE_S."""

    MAX_ENTRIES = 10_000

    def __init__(self, ttl_s: int) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, StatusPage | None]] = {}

    async def get(self, store: Store, slug: str) -> StatusPage | None:
        hit = self._entries.get(slug)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        page = await _by_slug(store, slug) if SLUG.match(slug) else None
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()
        self._entries[slug] = (now + self.ttl_s, page)
        return page

    def clear(self) -> None:
        self._entries.clear()
