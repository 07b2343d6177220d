"""Versioned DDL from `schemas/ddl/`, applied in file-name order and recorded in
`schema_migrations`; a file already recorded is skipped, so a second run is a no-op.

The same files serve a single server and a cluster: placeholders (documented at the top of
`0001_core.sql`) turn MergeTree into ReplicatedMergeTree, add `ON CLUSTER`, and put a
Distributed table in front of each data table when `BOTPULSE_CLICKHOUSE_CLUSTER` is set.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from botpulse.runtime.clickhouse import Store
from botpulse.runtime.logs import get_logger

log = get_logger(__name__)

_LOCAL = re.compile(r"\$\{LOCAL:(\w+)\}")
_DISTRIBUTE = re.compile(r"^--\s*distribute:\s*(\w+)\s+(.+)$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    version: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]


def available() -> list[Migration]:
    ddl = resources.files("botpulse.schemas") / "ddl"
    files = sorted((f for f in ddl.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [Migration(f.name.removesuffix(".sql"), f.read_text()) for f in files]


def render(sql: str, *, cluster: str | None, database: str, ttl_days: int) -> list[str]:
    """The statements of one DDL file, with placeholders filled for this deployment."""
    on_cluster = f" ON CLUSTER `{cluster}`" if cluster else ""
    text = (
        sql.replace("${ON_CLUSTER}", on_cluster)
        .replace("${REPLICATED}", "Replicated" if cluster else "")
        .replace("${TTL_DAYS}", str(ttl_days))
    )
    text = _LOCAL.sub(lambda m: f"{m.group(1)}_local" if cluster else m.group(1), text)
    statements: list[str] = []
    for chunk in text.split(";\n"):
        body = "\n".join(line for line in chunk.splitlines() if not line.lstrip().startswith("--")).strip()
        if body:
            statements.append(body.rstrip(";"))
    if cluster:
        # After every local table of the file exists, the Distributed tables that front them.
        for table, key in _DISTRIBUTE.findall(text):
            statements.append(
                f"CREATE TABLE IF NOT EXISTS {table}{on_cluster} AS {table}_local "
                f"ENGINE = Distributed(`{cluster}`, `{database}`, {table}_local, {key.strip()})"
            )
    return statements


def migrate(store: Store) -> list[str]:
    """Apply every migration not yet recorded; returns the versions applied by this call."""
    s = store.settings
    store.command_sync(
        f"CREATE TABLE IF NOT EXISTS schema_migrations{store.on_cluster} "
        "(version String, checksum String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
        f"ENGINE = {'Replicated' if store.cluster else ''}ReplacingMergeTree ORDER BY version"
    )
    done = {row[0] for row in store.query_rows("SELECT version FROM schema_migrations FINAL")}
    applied: list[str] = []
    for migration in available():
        if migration.version in done:
            continue
        for statement in render(
            migration.sql, cluster=store.cluster, database=store.database, ttl_days=s.retention_days
        ):
            store.command_sync(statement)
        store.insert_sync(
            "schema_migrations", [[migration.version, migration.checksum]], ["version", "checksum"]
        )
        log.info("migration applied", version=migration.version)
        applied.append(migration.version)
    return applied


def describe(store: Store) -> str:
    """The schema as the migrations leave it: every table's engine, sorting key and columns,
    one line each, sorted. `botpulse migrate --print-schema` prints it; `schemas/schema.txt` is
    the committed copy a test compares a database migrated from empty against."""
    lines: list[str] = []
    tables = store.query_rows(
        "SELECT name, engine, sorting_key FROM system.tables WHERE database = {db:String} ORDER BY name",
        {"db": store.database},
    )
    columns: dict[str, list[str]] = {}
    for table, name, type_ in store.query_rows(
        "SELECT table, name, type FROM system.columns WHERE database = {db:String} ORDER BY table, position",
        {"db": store.database},
    ):
        columns.setdefault(table, []).append(f"{name} {type_}")
    for name, engine, sorting_key in tables:
        if name == "schema_migrations":
            continue
        key = f" ORDER BY ({sorting_key})" if sorting_key else ""
        lines.append(f"{name}: {engine}{key}")
        lines.extend(f"    {column}" for column in columns.get(name, []))
    return "\n".join(lines) + "\n"
