"""The one middleware that measures an aiohttp service's requests (gateway and query service):
each answer counted by its route's template and status class, timed from its headers."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

UNMATCHED = "unmatched"  # any path that is no route of the service

Observe = Callable[[str, str, int, float], None]  # route, method, status, seconds
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def route_label(request: web.Request, prefix: str, catch_all: str | None = None) -> str:
    """The metrics label of a routed request: its route's template without the mount `prefix`
    (the same route whatever it is mounted under); `catch_all`: the template of a route that
    answers every other path, labelled as no route."""
    resource = request.match_info.route.resource
    route = UNMATCHED if resource is None else resource.canonical
    if route == catch_all:
        return UNMATCHED
    if prefix and route.startswith(prefix + "/"):
        route = route[len(prefix) :]
    return route


def measured(
    label: Callable[[web.Request], str], observe: Observe
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware (outermost, so it sees the final status): `label` names the request's
    route, `observe` records the answer; an exception that is no HTTP answer counts as a 500."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        route = label(request)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            observe(route, request.method, status, time.perf_counter() - started)

    return middleware
