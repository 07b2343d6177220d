"""structlog set-up shared by every process: JSON lines in production, console output in dev."""

from __future__ import annotations

import logging
import sys

import structlog

from botpulse.runtime.redact import redact
from botpulse.runtime.settings import Settings


def redact_credentials(
    logger: object, method: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    """No log line carries a URL's password: every string value goes through `redact`."""
    for name, value in event.items():
        if isinstance(value, str):
            event[name] = redact(value)
        elif isinstance(value, BaseException):
            event[name] = redact(str(value))
    return event


class _RedactingFilter(logging.Filter):
    """The same for the libraries that log through the stdlib."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


def configure_logging(settings: Settings) -> None:
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "console" if settings.env == "dev" and sys.stderr.isatty() else "json"
    level = getattr(logging, settings.log_level.upper())
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if fmt == "json" else structlog.dev.set_exc_info,
            redact_credentials,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries that log through the stdlib (aiohttp access log, clickhouse-connect) go to stderr too.
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr, format="%(name)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_RedactingFilter())
    # urllib3 narrates each connection retry; botpulse logs the failure that matters itself.
    logging.getLogger("urllib3").setLevel(logging.ERROR)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
