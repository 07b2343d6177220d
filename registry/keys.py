"""API keys: `DS-` + 43 URL-safe random characters. Only the SHA-256 is ever stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping

PREFIX = "DS-"


def generate_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def _bytes(text: str) -> bytes:
    # aiohttp hands over header bytes that are not UTF-8 as lone surrogates; such a key matches
    # nothing (our keys are ASCII) but must be refused as unknown, not raise.
    return text.encode("utf-8", "surrogateescape")


def hash_key(key: str) -> str:
    return hashlib.sha256(_bytes(key)).hexdigest()


def key_hint(key: str) -> str:
    """The first characters of a key, safe to show back (the key itself never is)."""
    return key[:7] + "…"


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of a presented secret (e.g. the operator token)."""
    return hmac.compare_digest(_bytes(given), _bytes(expected))


def parse_authorization(header: str | None) -> str | None:
    """`Authorization: <key>` or `Authorization: Bearer <key>`."""
    if not header:
        return None
    value = header.strip()
    scheme, _, rest = value.partition(" ")
    if rest and scheme.lower() in ("bearer", "token", "bot"):
        value = rest.strip()
    return value or None


def request_key(headers: Mapping[str, str], query: Mapping[str, str], param: str = "apikey") -> str | None:
    """A request's API key: `Authorization` (raw or Bearer), else the `param` query parameter
    (`apikey` for DisStat clients, `secret` for Datagram's)."""
    return parse_authorization(headers.get("Authorization")) or query.get(param)
