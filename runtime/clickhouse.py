"""The one ClickHouse access layer.

Everything that reads or writes ClickHouse goes through `Store`. It wraps clickhouse-connect's
sync client, which is the only client chDB supports, and runs it on a small thread pool so the
event loop never blocks. `chdb:///path` selects the embedded engine (one engine per process:
only one process may open a path), `http(s)://…` a server. Values are always bound as query
parameters (`{name:Type}`), never pasted into SQL.

Reads (`query`, `query_rows`) and writes (`insert*`, `command*`) have their own timeouts:
`BOTPULSE_QUERY_TIMEOUT_S` bounds a read (the HTTP client's receive timeout, and ClickHouse's
`max_execution_time`, so the server, or the embedded engine, stops the work too), while
`BOTPULSE_INSERT_TIMEOUT_S` bounds an insert or DDL request. Each thread holds one client per
kind, created on first use.

Cost control of the async reads (`query`): besides the timeout each carries `max_memory_usage`
(BOTPULSE_QUERY_MAX_MEMORY_BYTES); at most BOTPULSE_QUERY_MAX_CONCURRENT run at once with
BOTPULSE_QUERY_MAX_QUEUED waiting, and a read past that is refused at once (`Saturated`) instead
of queueing without bound; a read whose caller is cancelled (its HTTP client went away) is killed
in ClickHouse (`KILL QUERY` on a marker comment, which works on a server and in chDB alike).
Inserts and DDL run on their own threads, so reads can never take the worker's capacity.

Writes are observable (`watch`): after every insert (held or failed) and every command, each
watcher hears of it on the writing thread. Where this process holds the only writer
(`sole_writer`: embedded chDB opens its path in one process) a watcher therefore sees every
change to the data, which is what lets the query service keep an exact copy of what bots'
answers read (query/memory.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, DataError, OperationalError

from botpulse.runtime.logs import get_logger
from botpulse.runtime.redact import redact
from botpulse.runtime.settings import Settings, SettingsError

log = get_logger(__name__)

# ClickHouse error codes that mean "this data can never be written" rather than "try again".
_DATA_ERROR_CODES = {
    6,  # CANNOT_PARSE_TEXT
    27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    41,  # CANNOT_PARSE_DATETIME
    53,  # TYPE_MISMATCH
    69,  # ARGUMENT_OUT_OF_BOUND
    70,  # CANNOT_CONVERT_TYPE
    72,  # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
}


class ReadRefused(Exception):
    """A read the store will not run or finish; the message names the limit (a 503 to clients)."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.message = message
        self.limit = limit


class Saturated(ReadRefused):
    """Every read slot is busy and the queue of waiting reads is full."""


class QueryLimit(ReadRefused):
    """ClickHouse stopped the read at its time or memory limit."""


_MEMORY_LIMIT_EXCEEDED = 241


class _Gate:
    """At most `concurrent` reads at once and `queued` waiting; beyond that `Saturated`."""

    def __init__(self, concurrent: int, queued: int) -> None:
        self.concurrent = concurrent
        self.queued = queued
        self._free = concurrent
        self._waiters: list[asyncio.Future[None]] = []

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._free > 0:
            self._free -= 1
        elif len(self._waiters) >= self.queued:
            raise Saturated(
                f"The query service is at its limit of {self.concurrent} concurrent ClickHouse reads "
                f"(BOTPULSE_QUERY_MAX_CONCURRENT) with {self.queued} waiting; retry shortly",
                "queryMaxConcurrent",
            )
        else:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter  # the releasing read hands its slot over
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif not waiter.cancelled():
                    self._release()  # handed over just as it was cancelled: pass it on
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


def is_data_error(exc: BaseException) -> bool:
    """True when ClickHouse refused the rows themselves (retrying cannot help); False when the
    failure is about reaching or waiting for the server."""
    if isinstance(exc, OperationalError):
        return False
    if isinstance(exc, (TypeError, ValueError, OverflowError, DataError)):
        return True  # the client could not serialize a value
    if isinstance(exc, DatabaseError):
        text = str(exc)
        return any(f"Code: {code}." in text or f"code: {code}," in text for code in _DATA_ERROR_CODES)
    return False


_timers: dict[str, Any] = {}
_timers_lock = threading.Lock()


def _timer(operation: str) -> Any:
    """The duration histogram's child for `operation`. Made on first use, not at import: the CLI
    imports this module before a several-process gateway has set prometheus-client's
    multiprocess directory (runtime.metrics.use_multiprocess_dir)."""
    if not _timers:
        with _timers_lock:
            if not _timers:
                _make_timers()
    return _timers[operation]


def _make_timers() -> None:
    from prometheus_client import Histogram

    histogram = Histogram(
        "botpulse_clickhouse_request_duration_seconds",
        "ClickHouse requests of this process (query, insert, command), from the call to the result.",
        ["operation"],
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    )
    children = {op: histogram.labels(op) for op in ("query", "insert", "command")}
    _timers.update(children)  # one step: no thread sees a partial set


def is_view_error(exc: BaseException) -> bool:
    """True when ClickHouse stored the block in its table and then a materialized view fed by
    that table failed on it (the server says where: "while pushing to view …"). Whatever the
    code, the source rows are in: a retry must send the same block with the same token."""
    return isinstance(exc, DatabaseError) and "while pushing to view" in str(exc)


_TIMEOUT_EXCEEDED = 159


def is_timeout(exc: BaseException) -> bool:
    """True when a read ran past `max_execution_time` (BOTPULSE_QUERY_TIMEOUT_S) on the server or
    the embedded engine. A client-side timeout is an `OperationalError` (unreachable)."""
    if isinstance(exc, DatabaseError) and not isinstance(exc, OperationalError):
        text = str(exc)
        return f"Code: {_TIMEOUT_EXCEEDED}." in text or f"code: {_TIMEOUT_EXCEEDED}," in text
    return False


def _limit_error(exc: DatabaseError, settings: Settings) -> Exception:
    """ClickHouse's refusal at the memory limit as a `QueryLimit` naming it; any other error as is
    (a timeout stays a `DatabaseError`: see `is_timeout`)."""
    text = str(exc)
    if f"Code: {_MEMORY_LIMIT_EXCEEDED}." in text or f"code: {_MEMORY_LIMIT_EXCEEDED}," in text:
        return QueryLimit(
            f"The query needed more memory than BOTPULSE_QUERY_MAX_MEMORY_BYTES "
            f"({settings.query_max_memory_bytes}); narrow the range or retry later",
            "queryMaxMemoryBytes",
        )
    return exc


class WriteWatcher(Protocol):
    """Told of every write through a `Store`, on the thread that made it, after the engine
    answered (or failed, `stored` False: a failed write may still have been stored)."""

    def inserted(
        self,
        table: str,
        rows: Sequence[Sequence[Any]],
        columns: Sequence[str],
        column_oriented: bool,
        stored: bool,
    ) -> None: ...

    def commanded(self) -> None: ...


class Store:
    """ClickHouse, reached the same way whether embedded or a server."""

    def __init__(self, settings: Settings, *, threads: int | None = None) -> None:
        self.settings = settings
        self.database = settings.clickhouse_database
        self.cluster = settings.clickhouse_cluster
        self.embedded = settings.embedded_clickhouse
        # Embedded chDB: one process opens the path, so every write to it goes through this
        # process (and, `Store` being its one access layer, through its watchers).
        self.sole_writer = self.embedded
        self._watchers: list[WriteWatcher] = []
        self._local = threading.local()
        self._clients: list[Client] = []
        self._lock = threading.Lock()
        reads = threads or settings.query_max_concurrent
        # Whether a request may issue two reads at once where it could wait for one (a bot's
        # head and buckets). A server runs them at once. Embedded chDB did so on small data but
        # not on the bench's query phase data, where side by side was the slower (docs/api/query.md,
        # 2026-12-03). One read slot would refuse the second read of every such request.
        self.reads_overlap = not self.embedded and reads > 1
        self._pool = ThreadPoolExecutor(max_workers=reads, thread_name_prefix="clickhouse")
        # The worker's inserts (and DDL) never wait behind reads; kills never wait behind either.
        self._writes = ThreadPoolExecutor(max_workers=2, thread_name_prefix="clickhouse-write")
        self._control = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse-kill")
        self._gate = _Gate(reads, settings.query_max_queued)
        self._read_settings = {
            "max_execution_time": settings.query_timeout_s,
            "max_memory_usage": settings.query_max_memory_bytes,
        }
        self._ensure_database()

    # --- clients ------------------------------------------------------------------------------
    def _new_client(self, database: str | None, timeout_s: float) -> Client:
        url = self.settings.clickhouse_url
        if self.embedded:
            try:
                return clickhouse_connect.get_client(dsn=url, database=database)
            except ImportError:
                raise SettingsError(
                    f"CLICKHOUSE_URL={redact(repr(url))} needs the embedded engine: install botpulse[chdb], "
                    "or set CLICKHOUSE_URL=http(s)://host:8123 for a ClickHouse server"
                ) from None
        parsed = urlparse(url)
        # The client takes whole seconds (it truncates, and 0 would fail every request): rounded
        # up here; a read's exact bound is `max_execution_time`.
        whole_s = math.ceil(timeout_s)
        return clickhouse_connect.get_client(
            dsn=url,
            database=database or "default",
            connect_timeout=min(10, whole_s),
            send_receive_timeout=whole_s,
            autogenerate_session_id=False,
            secure=parsed.scheme == "https",
        )

    def _ensure_database(self) -> None:
        boot = self._new_client(None, self.settings.insert_timeout_s)
        try:
            boot.command(f"CREATE DATABASE IF NOT EXISTS `{self.database}`{self.on_cluster}")
        finally:
            boot.close()

    def client(self) -> Client:
        """This thread's client for inserts and DDL (each thread owns its clients: they hold
        per-session state)."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._add_client(self.settings.insert_timeout_s)
        return client

    def reader(self) -> Client:
        """This thread's client for reads, with the query timeout."""
        client = getattr(self._local, "reader", None)
        if client is None:
            client = self._local.reader = self._add_client(self.settings.query_timeout_s)
        return client

    def _add_client(self, timeout_s: float) -> Client:
        client = self._new_client(self.database, timeout_s)
        with self._lock:
            self._clients.append(client)
        return client

    @property
    def on_cluster(self) -> str:
        return f" ON CLUSTER `{self.cluster}`" if self.cluster else ""

    # --- sync API (CLI, migrations, worker threads) -------------------------------------------
    def query_rows(
        self, sql: str, params: dict[str, Any] | None = None, settings: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        limits = {**self._read_settings, **settings} if settings else self._read_settings
        with _timer("query").time():
            return self.reader().query(sql, parameters=params or {}, settings=limits).result_rows

    def command_sync(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        try:
            with _timer("command").time():
                return self.client().command(sql, parameters=params or {})
        finally:
            self._tell(lambda w: w.commanded())

    def _tell(self, event: Callable[[WriteWatcher], None]) -> None:
        """Every watcher hears of the write. One that fails is told everything changed (and if
        that fails too, is dropped), so a write that was stored never looks failed for it."""
        for watcher in list(self._watchers):
            try:
                event(watcher)
            except Exception:
                log.exception("write watcher failed", watcher=type(watcher).__name__)
                try:
                    watcher.commanded()
                except Exception:
                    self.unwatch(watcher)

    def watch(self, watcher: WriteWatcher) -> None:
        self._watchers.append(watcher)

    def unwatch(self, watcher: WriteWatcher) -> None:
        with contextlib.suppress(ValueError):
            self._watchers.remove(watcher)

    def insert_sync(
        self,
        table: str,
        rows: Sequence[Sequence[Any]],
        columns: Sequence[str],
        settings: dict[str, Any] | None = None,
        column_oriented: bool = False,
    ) -> None:
        """`column_oriented`: `rows` holds one sequence per column (what the worker builds)."""
        if rows and (not column_oriented or len(rows[0])):
            stored = False
            try:
                with _timer("insert").time():
                    self.client().insert(
                        table,
                        rows,
                        column_names=list(columns),
                        settings=settings,
                        column_oriented=column_oriented,
                    )
                stored = True
            finally:
                # `stored` False: the insert failed, and may or may not have been stored.
                self._tell(lambda w: w.inserted(table, rows, columns, column_oriented, stored))

    # --- async API (services) -----------------------------------------------------------------
    async def query(
        self, sql: str, params: dict[str, Any] | None = None, settings: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """A read within the time and memory limits, through the bounded read slots (see the
        module docstring); cancelling the caller kills the read in ClickHouse."""
        loop = asyncio.get_running_loop()
        async with self._gate.slot():
            marker = secrets.token_hex(8)
            tagged = f"{sql} /* bp:{marker} */"
            try:
                return await loop.run_in_executor(self._pool, self.query_rows, tagged, params, settings)
            except asyncio.CancelledError:
                self._control.submit(self._kill, marker)
                raise
            except DatabaseError as exc:
                raise _limit_error(exc, self.settings) from None

    def _kill(self, marker: str) -> None:
        # Concatenated in SQL, so the KILL statement's own text never matches the marker.
        with contextlib.suppress(Exception):  # the read may have finished meanwhile
            self.client().command(
                f"KILL QUERY{self.on_cluster} "
                "WHERE position(query, concat('bp:', {m:String}, ' *', '/')) > 0 ASYNC",
                parameters={"m": marker},
            )

    async def command(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writes, self.command_sync, sql, params)

    async def insert(
        self,
        table: str,
        rows: Sequence[Sequence[Any]],
        columns: Sequence[str],
        settings: dict[str, Any] | None = None,
        column_oriented: bool = False,
    ) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self._writes, self.insert_sync, table, rows, columns, settings, column_oriented
        )

    async def ping(self) -> bool:
        try:
            await self.query("SELECT 1")
        except Exception:
            return False
        return True

    def close(self) -> None:
        for pool in (self._pool, self._writes, self._control):
            pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for client in self._clients:
                with contextlib.suppress(Exception):  # closing is best effort on shutdown
                    client.close()
            self._clients.clear()
