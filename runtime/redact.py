"""Credentials out of every message: the password (and user) part of a URL is replaced by `***`
before a URL is printed or logged. `redact` takes any text, so an exception message that quotes a
URL is cleaned too."""

from __future__ import annotations

import re

# scheme://user:password@host or scheme://:password@host or scheme://user@host
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]*)@")
# redis-py and clickhouse-connect also take a password as a query parameter
_QUERY_SECRET = re.compile(r"(?P<name>[?&](?:password|passwd|pwd|token|secret)=)[^&\s'\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it replaced by `***`."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}***@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['name']}***", text)
