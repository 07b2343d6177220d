"""Prometheus exposition for every service, through prometheus-client (never a hand-written format).

Each service declares its metric objects in its own `metrics` module (`ingest.metrics`,
`query.metrics`, `workers.metrics`); this module serves them: `/metrics` (BOTPULSE_METRICS_PATH)
on the service's own port, or only on a port of its own (`BOTPULSE_*_METRICS_PORT`), and it
switches prometheus-client to its multiprocess mode for a gateway of several processes.

Multiprocess mode: prometheus-client picks how values are stored when it is first imported, from
`PROMETHEUS_MULTIPROC_DIR`. A gateway of N processes (`BOTPULSE_GATEWAY_WORKERS`) therefore calls
`use_multiprocess_dir` before anything imports prometheus-client: the parent makes a fresh
directory for this run (no file of an earlier run can be counted), its children inherit the
variable, and every scrape of any of them sums the files of all of them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Who made the directory (and removes it at exit): the parent of a `--workers N` gateway.
_OWNED: list[str] = []

# Latency buckets in seconds, shared by the HTTP services: from a cached post (well under a
# millisecond) to a slow report query.
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def use_multiprocess_dir() -> str:
    """Make sure this process stores its values in the run's multiprocess directory: inherit the
    parent's, or make one (then this process owns it and removes it at `release_multiprocess_dir`)."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        if "prometheus_client" in sys.modules:
            # Values already created would stay process-local and be missing from the sums.
            raise RuntimeError("use_multiprocess_dir() must run before prometheus_client is imported")
        path = tempfile.mkdtemp(prefix="botpulse-metrics-")
        os.environ[MULTIPROC_ENV] = path
        _OWNED.append(path)
    return path


def release_multiprocess_dir() -> None:
    for path in _OWNED:
        shutil.rmtree(path, ignore_errors=True)
    _OWNED.clear()


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def process_exited(pid: int) -> None:
    """Drop a stopped child's live gauges (its counters stay counted, as they should)."""
    if multiprocess():
        from prometheus_client import multiprocess as mp

        with contextlib.suppress(OSError):
            mp.mark_process_dead(pid)


Refresher = Callable[[], Awaitable[None]]


class Exposition:
    """What a scrape answers: the process's registry (or, in multiprocess mode, the sum over the
    run's processes), after the `refreshers` updated the gauges read from elsewhere (Redis)."""

    def __init__(self) -> None:
        self.refreshers: list[Refresher] = []

    async def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

        for refresh in self.refreshers:
            await refresh()
        if multiprocess():
            from prometheus_client import multiprocess as mp

            registry = CollectorRegistry()
            mp.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST

    async def handle(self, request: object) -> object:
        """The aiohttp handler of the metrics path."""
        from aiohttp import web

        body, content_type = await self.render()
        return web.Response(body=body, headers={"Content-Type": content_type})


async def start_listener(
    exposition: Exposition, listen: str, port: int, path: str
) -> Callable[[], Awaitable[None]]:
    """Serve only the metrics path on `listen:port`, in the running loop; returns the stop."""
    from aiohttp import web

    app = web.Application()
    app.router.add_get(path, exposition.handle)  # type: ignore[arg-type]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, listen, port, reuse_address=True).start()
    return runner.cleanup


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """A client may send any method token: the label keeps the standard ones only."""
    return method if method in _METHODS else "OTHER"


def status_class(status: int) -> str:
    """`2xx`, `4xx`, …: the bounded label for an answer's status."""
    return f"{status // 100}xx" if 100 <= status < 600 else "other"
