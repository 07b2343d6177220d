"""API keys: `DS-` + 43 URL-safe random characters. Only the SHA-256 is ever stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX = "DS-"


def generate_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_hint(key: str) -> str:
    """The first characters of a key, safe to show back (the key itself never is)."""
    return key[:7] + "…"


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def parse_authorization(header: str | None) -> str | None:
    """`Authorization: <key>` or `Authorization: Bearer <key>`."""
    if not header:
        return None
    value = header.strip()
    scheme, _, rest = value.partition(" ")
    if rest and scheme.lower() in ("bearer", "token", "bot"):
        value = rest.strip()
    return value or None
