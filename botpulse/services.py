"""`botpulse gateway|worker|query|alerts|migrate`: one long-running service (or the migrations) each."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from botpulse.runtime.logs import configure_logging, get_logger
from botpulse.runtime.settings import Role, Settings, load_settings

if TYPE_CHECKING:
    from aiohttp import web


def _settings(args: argparse.Namespace, *roles: Role) -> Settings:
    """Every setting, checked for what `roles` require, before anything opens or listens."""
    overrides = {k: getattr(args, k, None) for k in ("gateway_port", "query_port", "gateway_workers")}
    settings = load_settings(roles=roles, **overrides)
    configure_logging(settings)
    return settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gateway", help="run the ingest gateway (posts -> Redis stream)")
    p.add_argument("--port", dest="gateway_port", type=int, help="override BOTPULSE_GATEWAY_PORT")
    p.add_argument(
        "--workers", dest="gateway_workers", type=int, help="processes sharing the port (SO_REUSEPORT)"
    )
    # Internal: set by a `--workers N` parent on its children so they share its port.
    p.add_argument("--reuseport", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run_gateway)

    p = sub.add_parser("worker", help="run a stream worker (Redis stream -> ClickHouse)")
    p.set_defaults(func=run_worker)

    p = sub.add_parser("query", help="run the query service (reads from ClickHouse)")
    p.add_argument("--port", dest="query_port", type=int, help="override BOTPULSE_QUERY_PORT")
    p.add_argument(
        "--with-worker",
        action="store_true",
        help="also run a stream worker in this process (embedded chDB allows one engine per process)",
    )
    p.add_argument(
        "--with-alerts",
        action="store_true",
        help="also run the alert evaluator in this process (like --with-worker, for embedded chDB)",
    )
    p.set_defaults(func=run_query)

    p = sub.add_parser("alerts", help="run the alert evaluator (rules -> Discord and webhook notifications)")
    p.set_defaults(func=run_alerts)

    p = sub.add_parser("migrate", help="apply the ClickHouse schema migrations (idempotent)")
    p.add_argument(
        "--print-schema",
        action="store_true",
        help="then print the schema they leave (the format of schemas/schema.txt)",
    )
    p.set_defaults(func=run_migrate)


def run_gateway(args: argparse.Namespace) -> int:
    settings = _settings(args, "gateway")
    if settings.gateway_workers > 1 or args.reuseport:
        # Before prometheus-client is imported (by the gateway's modules): every process of the
        # run writes its values to the run's directory, and a scrape of any sums them all.
        from botpulse.runtime.metrics import release_multiprocess_dir, use_multiprocess_dir

        use_multiprocess_dir()
        try:
            from botpulse.ingest.server import serve

            return serve(settings, reuseport=args.reuseport)
        finally:
            release_multiprocess_dir()  # only the parent made it, so only the parent removes it
    from botpulse.ingest.server import serve

    return serve(settings, reuseport=args.reuseport)


def run_worker(args: argparse.Namespace) -> int:
    from botpulse.workers.lifecycle import serve

    return serve(_settings(args, "worker"))


def run_query(args: argparse.Namespace) -> int:
    from botpulse.query.server import serve

    roles: list[Role] = ["query"]
    roles += ["worker"] if args.with_worker else []
    roles += ["alerts"] if args.with_alerts else []
    if len(roles) == 1:
        return serve(_settings(args, *roles))
    import sys

    from botpulse.embedded_alerts import with_embedded_alerts
    from botpulse.embedded_worker import with_embedded_worker
    from botpulse.supervisor import SUPERVISOR

    composed: list[web.Application] = []

    def compose(app: web.Application) -> web.Application:
        if args.with_worker:
            app = with_embedded_worker(app)
        if args.with_alerts:
            app = with_embedded_alerts(app)
        composed.append(app)
        return app

    code = serve(_settings(args, *roles), compose=compose)
    failure = composed[0][SUPERVISOR].failure if composed and SUPERVISOR in composed[0] else None
    if failure is not None:
        print(f"botpulse: the query service stopped: {failure}", file=sys.stderr)
        return 1
    return code


def run_alerts(args: argparse.Namespace) -> int:
    from botpulse.alerts.server import serve

    return serve(_settings(args, "alerts"))


def run_migrate(args: argparse.Namespace) -> int:
    from botpulse.runtime.clickhouse import Store
    from botpulse.runtime.migrations import describe, migrate

    settings = _settings(args)
    store = Store(settings)
    try:
        applied = migrate(store)
        if args.print_schema:
            print(describe(store), end="")
    finally:
        store.close()
    get_logger("migrate").info("migrations done", applied=applied or "none (up to date)")
    return 0
