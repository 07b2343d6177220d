"""OpenAPI 3.1 documents built from route specs and the msgspec structs the handlers use.

Each service keeps a `RouteSpecs` next to its handlers: a route is described where it is added
(`specs.route(...)` returns the spec; `build_app` mounts the handler with it), its request body
is the struct that decodes it, its answers the structs that shape them. `document()` turns them
into one OpenAPI document, the schemas coming from `msgspec.json.schema_components`, so a field
renamed in a struct is renamed in the document. `undocumented()` lists the routes of an aiohttp
app that have no spec (the tests fail on any).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{name}"

# Where an API key may travel. Every account route accepts all three key forms (`request_key`).
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "apiKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "The account's API key as the whole header value (`Authorization: DS-…`).",
    },
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "The account's API key as a bearer token (`Authorization: Bearer DS-…`).",
    },
    "apiKeyQuery": {
        "type": "apiKey",
        "in": "query",
        "name": "apikey",
        "description": "The account's API key in the query string (`?apikey=DS-…`), for DisStat clients.",
    },
    "datagramSecret": {
        "type": "apiKey",
        "in": "query",
        "name": "secret",
        "description": "Datagram clients: the account's API key as `?secret=…` (or in Authorization).",
    },
    "adminToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The operator token, BOTPULSE_ADMIN_TOKEN (`Authorization: Bearer …`).",
    },
}
ACCOUNT_KEY = ("apiKeyHeader", "bearer", "apiKeyQuery")
DATAGRAM_KEY = ("apiKeyHeader", "bearer", "datagramSecret")
ADMIN = ("adminToken",)


def api_version() -> str:
    """The document's version: the installed botpulse's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("botpulse")
    except PackageNotFoundError:
        return "0.0.0"


class Param(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    where: str = "query"  # "path", "query" or "header"
    type: Any = str  # a Python/msgspec type (Annotated with Meta for bounds)
    required: bool = False
    description: str = ""
    example: Any = msgspec.UNSET


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    description: str
    body: Any = None  # a struct or type; None: no body
    headers: dict[str, str] = {}  # header name -> description
    example: Any = msgspec.UNSET
    # One media type, or several sharing the body's schema (an answer whose format a parameter picks).
    content_type: str | tuple[str, ...] = "application/json"


class Route(msgspec.Struct, frozen=True, kw_only=True):
    method: str
    path: str
    operation_id: str
    summary: str
    tags: tuple[str, ...]
    description: str = ""
    params: tuple[Param, ...] = ()
    body: Any = None
    body_example: Any = msgspec.UNSET
    body_required: bool = True
    replies: dict[int, Reply] = {}
    security: tuple[str, ...] = ()  # alternatives: any one of these schemes
    admin: bool = False


class RouteSpecs:
    """The route specs of one service, in the order they were added."""

    def __init__(self, title: str, description: str) -> None:
        self.title = title
        self.description = description
        self.routes: list[Route] = []

    def route(self, **fields: Any) -> Route:
        spec = Route(**fields)
        if any((r.method, r.path) == (spec.method, spec.path) for r in self.routes):
            raise ValueError(f"{spec.method} {spec.path} is described twice")
        self.routes.append(spec)
        return spec

    def alias(self, spec: Route, prefix: str, *, operation_id: str, summary: str = "") -> Route:
        """`spec` also mounted under `prefix` (a path clients of another service know): the same
        handler and shapes, its own operation in the document."""
        (moved,) = prefixed([spec], prefix)
        extra = {"summary": summary} if summary else {}
        alias = msgspec.structs.replace(moved, operation_id=operation_id, **extra)
        return self.route(**{f: getattr(alias, f) for f in alias.__struct_fields__})

    def document(self, *, version: str, servers: Sequence[str] = ()) -> dict[str, Any]:
        return document(self.title, self.description, version, self.routes, servers)


def _types(routes: Iterable[Route]) -> list[Any]:
    found: list[Any] = []
    for r in routes:
        found.extend(p.type for p in r.params)
        if r.body is not None:
            found.append(r.body)
        found.extend(reply.body for reply in r.replies.values() if reply.body is not None)
    return found


def document(
    title: str, description: str, version: str, routes: Sequence[Route], servers: Sequence[str] = ()
) -> dict[str, Any]:
    types = _types(routes)
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    schema_of = iter(schemas)
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {"operationId": r.operation_id, "summary": r.summary, "tags": list(r.tags)}
        if r.description:
            op["description"] = r.description
        if r.admin:
            op["x-admin"] = True
        params = []
        for p in r.params:
            param: dict[str, Any] = {"name": p.name, "in": p.where, "schema": next(schema_of)}
            if p.required or p.where == "path":
                param["required"] = True
            if p.description:
                param["description"] = p.description
            if p.example is not msgspec.UNSET:
                param["example"] = p.example
            params.append(param)
        if params:
            op["parameters"] = params
        if r.body is not None:
            media: dict[str, Any] = {"schema": next(schema_of)}
            if r.body_example is not msgspec.UNSET:
                media["example"] = r.body_example
            op["requestBody"] = {"required": r.body_required, "content": {"application/json": media}}
        responses: dict[str, Any] = {}
        for status, reply in sorted(r.replies.items()):
            answer: dict[str, Any] = {"description": reply.description}
            if reply.body is not None:
                media = {"schema": next(schema_of)}
                if reply.example is not msgspec.UNSET:
                    media["example"] = reply.example
                kinds = (reply.content_type,) if isinstance(reply.content_type, str) else reply.content_type
                answer["content"] = {kind: media for kind in kinds}
            if reply.headers:
                answer["headers"] = {
                    name: {"description": text, "schema": {"type": "string"}}
                    for name, text in reply.headers.items()
                }
            responses[str(status)] = answer
        op["responses"] = responses
        op["security"] = [{name: []} for name in r.security] if r.security else []
        paths.setdefault(r.path, {})[r.method.lower()] = op
    doc: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version, "description": description, "license": {
            "name": "MIT", "identifier": "MIT"}},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                k: v for k, v in SECURITY_SCHEMES.items() if any(k in r.security for r in routes)
            },
        },
    }  # fmt: skip
    if servers:
        doc["servers"] = [{"url": url} for url in servers]
    return doc


def prefixed(routes: Sequence[Route], prefix: str) -> list[Route]:
    """The routes as mounted under a path prefix (BOTPULSE_QUERY_PREFIX, BOTPULSE_GATEWAY_PREFIX,
    or an alias path: `RouteSpecs.alias`)."""
    if not prefix:
        return list(routes)
    return [msgspec.structs.replace(r, path=prefix + r.path) for r in routes]


def undocumented(app: Any, routes: Sequence[Route], ignore: Iterable[str] = ()) -> list[str]:
    """`METHOD path` of every route of an aiohttp app (sub-apps included) without a spec."""
    known = {(r.method, r.path) for r in routes}
    skip = set(ignore)
    missing = []
    for route in _all_routes(app):
        method, path = route
        if method in ("HEAD", "*", "OPTIONS") or path in skip or (method, path) in known:
            continue
        missing.append(f"{method} {path}")
    return missing


def _all_routes(app: Any) -> list[tuple[str, str]]:
    found = []
    for resource in app.router.resources():
        info = resource.get_info()
        if "app" in info:  # a sub-application: its resources already carry its prefix
            found += _all_routes(info["app"])
            continue
        path = info.get("path") or info.get("formatter") or ""
        for route in resource:
            found.append((route.method, path))
    return found


# --- pieces every service's specs share ----------------------------------------------------------
def error_reply(description: str, *, retry: bool = False, body: Any = None) -> Reply:
    """A refusal: `{message, field}` (`ErrorBody`), with `Retry-After` on 429/503."""
    from botpulse.schemas.http import ErrorBody

    headers = {"Retry-After": "Seconds to wait before trying again."} if retry else {}
    return Reply(description=description, body=body or ErrorBody, headers=headers)


def health_routes(specs: RouteSpecs, tag: str, ready: str) -> tuple[Route, Route]:
    from botpulse.schemas.http import Health

    healthz = specs.route(
        method="GET",
        path="/healthz",
        operation_id=f"{tag}Healthz",
        summary="Liveness",
        tags=("health",),
        replies={200: Reply(description="The process runs.", body=Health, example={"status": "ok"})},
    )
    readyz = specs.route(
        method="GET",
        path="/readyz",
        operation_id=f"{tag}Readyz",
        summary="Readiness",
        description=ready,
        tags=("health",),
        replies={
            200: Reply(description="Ready to serve.", body=Health, example={"status": "ready"}),
            503: Reply(
                description="A backend is unreachable.",
                body=Health,
                headers={"Retry-After": "Seconds to wait before trying again."},
            ),
        },
    )
    return healthz, readyz
