"""`botpulse` — one console script; each command group lives in the module named below and
registers its subcommands through `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys

from clickhouse_connect.driver.exceptions import OperationalError as ClickHouseOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

from botpulse.runtime.redact import redact
from botpulse.runtime.settings import SettingsError

# Modules that add subcommands. Each defines `register(subparsers) -> None`; the handler a
# subcommand sets with `set_defaults(func=...)` receives the parsed args and returns an exit code.
COMMAND_MODULES = [
    "botpulse.services",  # gateway, worker, query, migrate
    "botpulse.dev",  # dev
    "botpulse.worker_cli",  # status, dead-letters
    "botpulse.accounts_cli",  # accounts, bots, keys, registry
    "botpulse.openapi_cli",  # openapi
    "botpulse.bench.cli",  # bench
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="botpulse", description="Statistics and uptime for bot fleets.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:
        print(f"botpulse: {redact(str(exc))}", file=sys.stderr)
        return 2
    except (ClickHouseOperationalError, RedisConnectionError) as exc:
        # A part that cannot be reached at start-up: one line naming it, not a traceback.
        part = (
            "ClickHouse (CLICKHOUSE_URL)"
            if isinstance(exc, ClickHouseOperationalError)
            else "Redis (REDIS_URL)"
        )
        print(f"botpulse: cannot reach {part}: {redact(str(exc).splitlines()[0])[:300]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
