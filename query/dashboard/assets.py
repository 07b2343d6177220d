"""The dashboard's static files (its own CSS and JS, and the vendored uPlot), served from memory
under content-hashed names with a year-long immutable cache: a new release changes the names,
so no browser keeps an old file. Each is stored gzipped too."""

from __future__ import annotations

import gzip
import hashlib
from importlib import resources

import msgspec
from aiohttp import web

_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
LONG_CACHE = "public, max-age=31536000, immutable"


class Asset(msgspec.Struct, frozen=True):
    name: str  # hashed, e.g. app.3f2a9c1b0d4e.js
    body: bytes
    gzipped: bytes
    content_type: str


class Assets:
    """Logical name (`app.js`, `vendor/uPlot.iife.min.js`) -> hashed asset."""

    def __init__(self) -> None:
        self.by_logical: dict[str, Asset] = {}
        self.by_hashed: dict[str, Asset] = {}
        root = resources.files("botpulse.query.dashboard") / "static"
        for folder, prefix in ((root, ""), (root / "vendor", "vendor/")):
            for item in sorted(folder.iterdir(), key=lambda f: f.name):
                suffix = "." + item.name.rsplit(".", 1)[-1]
                if not item.is_file() or suffix not in _TYPES:
                    continue
                body = item.read_bytes()
                digest = hashlib.sha256(body).hexdigest()[:12]
                stem = item.name[: -len(suffix)]
                hashed = f"{prefix.replace('/', '-')}{stem}.{digest}{suffix}"
                asset = Asset(hashed, body, gzip.compress(body, 9, mtime=0), _TYPES[suffix])
                self.by_logical[prefix + item.name] = asset
                self.by_hashed[hashed] = asset

    def url(self, base: str, logical: str) -> str:
        return f"{base}/dashboard/assets/{self.by_logical[logical].name}"

    def response(self, request: web.Request) -> web.Response:
        asset = self.by_hashed.get(request.match_info["name"])
        if asset is None:
            raise web.HTTPNotFound(text="Not found")
        headers = {
            "Cache-Control": LONG_CACHE,
            "Vary": "Accept-Encoding",
            "X-Content-Type-Options": "nosniff",
        }
        body = asset.body
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            body = asset.gzipped
            headers["Content-Encoding"] = "gzip"
        response = web.Response(body=body, headers=headers)
        response.content_type = asset.content_type.split(";")[0]
        if "charset" in asset.content_type:
            response.charset = "utf-8"
        return response
