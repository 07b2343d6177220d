"""The one settings loader: environment variables into a typed, validated msgspec struct.

Every service reads the same `Settings`; a bad value stops start-up with one line naming the
variable and what it expects (`SettingsError`), before any socket is opened.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from botpulse.runtime.redact import redact
from botpulse.schemas.stream import MAX_SHARD_LIMIT

Port = Annotated[int, Meta(ge=0, le=65535)]
Positive = Annotated[int, Meta(ge=1)]
NonNegative = Annotated[int, Meta(ge=0)]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    # --- shared -------------------------------------------------------------------------------
    # `chdb:///path` selects the embedded engine; `http(s)://user:pass@host:port` a server.
    # Unset means embedded, under `data_dir/clickhouse`.
    clickhouse_url: str = ""
    clickhouse_database: Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*\Z")] = "botpulse"
    # Name of a ClickHouse cluster: DDL then runs `ON CLUSTER` with Replicated* + Distributed tables.
    clickhouse_cluster: str | None = None
    # Empty means "embedded": `botpulse dev` starts a bundled valkey-server and sets it.
    redis_url: str | None = None
    data_dir: str = "./.botpulse"
    env: Literal["dev", "production"] = "production"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Days of raw and rolled-up time series kept (ClickHouse TTL).
    retention_days: Positive = 400
    # Path of the Prometheus endpoint. On a service's own port unless its `*_metrics_port` is set:
    # then only there, and not on the public port.
    metrics_path: Annotated[str, Meta(pattern=r"^(/[A-Za-z0-9._~-]+)+$")] = "/metrics"
    metrics_listen: str = "127.0.0.1"
    # --- stream contract ----------------------------------------------------------------------
    stream_partitions: Annotated[int, Meta(ge=1, le=1024)] = 1
    # Pending backlog (entries not yet written) above which the gateway answers 503.
    stream_high_water: Positive = 2_000_000
    # Redis memory (used_memory, % of maxmemory) at which the gateway answers 503, so the
    # workers keep room to record, acknowledge and trim. No effect while maxmemory is 0.
    redis_memory_high_water_pct: Annotated[int, Meta(ge=1, le=100)] = 90
    # --- gateway ------------------------------------------------------------------------------
    gateway_listen: str = "127.0.0.1"
    gateway_port: Port = 8080
    gateway_workers: Annotated[int, Meta(ge=1, le=64)] = 1
    # Every gateway route moves under this path (like BOTPULSE_QUERY_PREFIX), e.g. `/stats`.
    gateway_prefix: Annotated[str, Meta(pattern=r"^(/[A-Za-z0-9._~-]+)*$")] = ""
    max_body_bytes: Positive = 65536
    stats_rate_interval_s: Annotated[float, Meta(gt=0)] = 30.0
    stats_rate_burst: Positive = 3
    custom_rate_per_min: Positive = 600
    registry_refresh_ms: Annotated[int, Meta(ge=50, le=1000)] = 250
    redis_timeout_ms: Annotated[int, Meta(ge=10, le=10_000)] = 800
    # Extra (non-numeric) properties a bot keeps; further names are dropped and reported.
    property_slots: Annotated[int, Meta(ge=0, le=50)] = 5
    # Shard ids a bot may post for: 0 to shard_limit - 1 (also the most entries of a `shards` array).
    shard_limit: Annotated[int, Meta(ge=1, le=MAX_SHARD_LIMIT)] = 2048
    # How often the totals of a bot whose shards post separately are written (see ingest/shards.py).
    shard_total_interval_s: Annotated[int, Meta(ge=1, le=3600)] = 60
    gateway_metrics_port: Port = 0
    # --- workers ------------------------------------------------------------------------------
    # Only a backlog fills a batch this far (below it, `batch_ms` flushes first): catching up in
    # 50,000-row inserts takes about two thirds of the CPU a row that 10,000-row ones do
    # (issue 18, docs/workers.md).
    batch_rows: Annotated[int, Meta(ge=1, le=1_000_000)] = 50_000
    batch_ms: Annotated[int, Meta(ge=1, le=60_000)] = 500
    insert_timeout_s: Annotated[float, Meta(gt=0, le=600)] = 10.0
    claim_idle_ms: Positive = 30_000
    max_deliveries: Positive = 5
    # A standalone worker has no HTTP port: 0 means no metrics listener.
    worker_metrics_port: Port = 0
    # Socket timeout of the worker's own Redis client: its commands carry whole batches
    # (XREADGROUP of 10,000 entries, XACK of as many ids), where the gateway fails fast.
    worker_redis_timeout_ms: Annotated[int, Meta(ge=100, le=60_000)] = 5000
    # Replicas that must hold a batch record (WAITAOF / WAIT) before its insert; 0: the local
    # AOF only (see docs/workers.md, "Redis set-ups").
    worker_wait_replicas: Annotated[int, Meta(ge=0, le=16)] = 0
    # --- query --------------------------------------------------------------------------------
    query_listen: str = "127.0.0.1"
    query_port: Port = 8081
    query_prefix: Annotated[str, Meta(pattern=r"^(/[A-Za-z0-9._~-]+)*\Z")] = ""
    heartbeat_window_s: Positive = 180
    # Bound of one read of the query service (client timeout and ClickHouse `max_execution_time`);
    # inserts and DDL have `insert_timeout_s`.
    query_timeout_s: Annotated[float, Meta(gt=0, le=600)] = 10.0
    query_metrics_port: Port = 0
    # --- dashboard ----------------------------------------------------------------------------
    # Believe X-Forwarded-Proto / X-Forwarded-For: only behind a proxy that sets them itself.
    trust_proxy: bool = False
    session_idle_s: Annotated[int, Meta(ge=60, le=30 * 86400)] = 43_200
    session_max_s: Annotated[int, Meta(ge=60, le=365 * 86400)] = 604_800
    # Wrong account keys one client address may try per window before sign-in answers 429.
    signin_max_failures: Annotated[int, Meta(ge=1, le=10_000)] = 10
    signin_window_s: Annotated[int, Meta(ge=1, le=86400)] = 900
    # Longest range one export may cover.
    export_max_days: Annotated[int, Meta(ge=1, le=3660)] = 90
    # Seconds a badge's numbers are reused (and its Cache-Control max-age).
    public_cache_s: Annotated[int, Meta(ge=0, le=3600)] = 60
    # --- accounts -----------------------------------------------------------------------------
    admin_token: str | None = None
    default_custom_slots: Annotated[int, Meta(ge=0, le=1000)] = 10
    # Operator CLI: reach the registry through this query service's admin API (with admin_token)
    # instead of opening ClickHouse itself. Unset: a running `botpulse dev` stack, else direct.
    admin_url: Annotated[str, Meta(pattern=r"^https?://")] | None = None
    # How often the query service compares the Redis index's generation with ClickHouse's.
    registry_check_s: Annotated[int, Meta(ge=1, le=3600)] = 30
    # --- limits (per account; the operator overrides them per account, docs/api/accounts.md) ---
    max_bots_per_account: Annotated[int, Meta(ge=1, le=1_000_000)] = 100
    max_keys_per_account: Annotated[int, Meta(ge=1, le=10_000)] = 25
    # Distinct custom-event `type`s a bot may post (each takes a slot, like custom metrics).
    custom_event_types: Annotated[int, Meta(ge=1, le=1000)] = 20
    registry_writes_per_min: Annotated[int, Meta(ge=1, le=100_000)] = 60
    # Stats and custom posts per minute over all of an account's bots, on top of the per-bot rate.
    account_posts_per_min: Annotated[int, Meta(ge=1, le=10_000_000)] = 3000
    # How often each process writes the keys' last-used times to Redis (and the query service
    # from Redis to ClickHouse).
    key_usage_flush_s: Annotated[int, Meta(ge=1, le=3600)] = 30
    # --- query cost (with query_timeout_s above) ------------------------------------------------
    query_max_memory_bytes: Annotated[int, Meta(ge=10_000_000)] = 2_000_000_000
    query_max_concurrent: Annotated[int, Meta(ge=1, le=256)] = 4
    query_max_queued: Annotated[int, Meta(ge=0, le=10_000)] = 32
    query_cache_s: Annotated[float, Meta(ge=0, le=300)] = 5.0
    # Units (at most ~1 KB: an hour of a bot one) the query service holds in memory of bots'
    # answers (query/memory.py; embedded chDB only; 0: off).
    query_memory_hours: Annotated[int, Meta(ge=0, le=10_000_000)] = 100_000
    # --- alerts -------------------------------------------------------------------------------
    alerts_interval_s: Annotated[float, Meta(ge=0.1, le=300)] = 5.0
    alerts_lease_s: Annotated[float, Meta(ge=1, le=3600)] = 15.0
    alerts_retry_for_s: Annotated[int, Meta(ge=0, le=7 * 86400)] = 3600
    alerts_timeout_s: Annotated[float, Meta(gt=0, le=120)] = 10.0
    alerts_max_response_bytes: Annotated[int, Meta(ge=0, le=10_000_000)] = 65536
    alerts_allow_http: bool = False
    # Comma-separated networks (CIDR) destinations may resolve to although not public.
    alerts_allow_networks: str = ""
    # Comma-separated hosts a `discord` destination may name besides Discord's own
    # (discord.com, discordapp.com and their canary/ptb subdomains): a relay, tests.
    alerts_discord_hosts: str = ""
    # The bot page an alert links to; `{bot}` becomes the bot id. Unset: the query service's
    # `/v1/bot/{bot}` on BOTPULSE_QUERY_LISTEN:BOTPULSE_QUERY_PORT.
    alerts_bot_url: str = ""

    @property
    def embedded_clickhouse(self) -> bool:
        return self.clickhouse_url.startswith("chdb:")

    @property
    def heartbeat_window_ms(self) -> int:
        """How long a post keeps its bot up and "connected" (uptime and connection status)."""
        return self.heartbeat_window_s * 1000


class SettingsError(Exception):
    """A setting has a bad value; the message is one line naming the variable."""


# Variables that keep their conventional names instead of the BOTPULSE_ prefix.
_UNPREFIXED = {"clickhouse_url": "CLICKHOUSE_URL", "redis_url": "REDIS_URL"}


def env_name(field: str) -> str:
    return _UNPREFIXED.get(field, f"BOTPULSE_{field.upper()}")


def _expectation(field: str) -> str:
    info = msgspec.inspect.type_info(Settings)
    for f in info.fields:  # type: ignore[attr-defined]
        if f.name == field:
            return _describe(f.type)
    return "a valid value"


def _describe(t: msgspec.inspect.Type) -> str:
    if isinstance(t, msgspec.inspect.UnionType):
        return " or ".join(_describe(x) for x in t.types if not isinstance(x, msgspec.inspect.NoneType))
    if isinstance(t, msgspec.inspect.LiteralType):
        return "one of " + ", ".join(repr(v) for v in t.values)
    if isinstance(t, msgspec.inspect.IntType):
        return "an integer" + _bounds(t.ge, t.le, t.gt, t.lt)
    if isinstance(t, msgspec.inspect.FloatType):
        return "a number" + _bounds(t.ge, t.le, t.gt, t.lt)
    if isinstance(t, msgspec.inspect.StrType):
        return f"a string matching {t.pattern}" if t.pattern else "a string"
    return "a valid value"


def _bounds(ge: float | None, le: float | None, gt: float | None, lt: float | None) -> str:
    parts = []
    if ge is not None:
        parts.append(f">= {ge}")
    if gt is not None:
        parts.append(f"> {gt}")
    if le is not None:
        parts.append(f"<= {le}")
    if lt is not None:
        parts.append(f"< {lt}")
    return f" ({', '.join(parts)})" if parts else ""


def load_settings(
    environ: Mapping[str, str] | None = None, *, roles: Sequence[Role] = (), **overrides: object
) -> Settings:
    """Read every setting from the environment; `overrides` (already typed) win over it.
    `roles`: the services this process runs; what they require is checked too (`check_roles`)."""
    environ = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    for field in Settings.__struct_fields__:
        value = environ.get(env_name(field))
        if value is not None and value != "":
            raw[field] = value
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        match = re.search(r"at `\$\.(\w+)`", str(exc))
        field = match.group(1) if match else "?"
        value = raw.get(field)
        shown = "<hidden>" if field == "admin_token" else redact(repr(value))
        raise SettingsError(f"{env_name(field)}={shown} is invalid: expected {_expectation(field)}") from None
    if not settings.clickhouse_url:
        store = os.path.abspath(os.path.join(settings.data_dir, "clickhouse"))
        settings = msgspec.structs.replace(settings, clickhouse_url=f"chdb://{store}")
    _check_urls(settings)
    _check_admin_token(settings.admin_token)
    check_settings(settings)
    check_roles(settings, roles)
    return settings


# Tokens shipped in examples and templates (deploy/kubernetes/secret.yaml among them): a deployment
# that kept one has an admin API anyone who read the docs can use.
_PLACEHOLDERS = ("changeme", "change-me", "change_me", "placeholder", "replace", "example", "yourtoken",
                 "your-token", "secret", "password", "xxxxxxxx", "todo")  # fmt: skip
MIN_ADMIN_TOKEN = 32


def _check_admin_token(token: str | None) -> None:
    """Refuse a placeholder or a short or repetitive operator token at start-up (never printing it)."""
    if token is None:
        return
    lowered = token.lower()
    fix = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
    if any(p in lowered for p in _PLACEHOLDERS):
        raise SettingsError(f"BOTPULSE_ADMIN_TOKEN is a placeholder, not a secret: {fix}")
    if len(token) < MIN_ADMIN_TOKEN:
        raise SettingsError(
            f"BOTPULSE_ADMIN_TOKEN is {len(token)} characters: use at least {MIN_ADMIN_TOKEN} random "
            f"ones; {fix}"
        )
    if len(set(token)) < 12:
        raise SettingsError(f"BOTPULSE_ADMIN_TOKEN repeats a few characters, it is not random: {fix}")


def check_settings(settings: Settings) -> None:
    """Rules across fields, checked with the rest at start-up (every process, every setting).

    A live worker's entries must never look idle to the others: XAUTOCLAIM's threshold must
    exceed everything a healthy batch can take (buffering plus inserting), with margin."""
    floor = 2 * (settings.batch_ms + int(settings.insert_timeout_s * 1000))
    if settings.claim_idle_ms < floor:
        raise SettingsError(
            f"BOTPULSE_CLAIM_IDLE_MS={settings.claim_idle_ms} is too small: it must be at least "
            f"2 x (BOTPULSE_BATCH_MS + BOTPULSE_INSERT_TIMEOUT_S in ms) = {floor}, or a batch "
            "still being written could be taken over by another worker"
        )


def _check_urls(settings: Settings) -> None:
    url = settings.clickhouse_url
    if not re.match(r"^(chdb:|https?://)", url):
        raise SettingsError(
            f"CLICKHOUSE_URL={redact(repr(url))} is invalid: expected chdb:///path (embedded) or "
            "http(s)://host:port"
        )
    _check_networks(settings.alerts_allow_networks)
    if settings.redis_url is not None and not re.match(r"^(rediss?|unix)://", settings.redis_url):
        raise SettingsError(
            f"REDIS_URL={redact(repr(settings.redis_url))} is invalid: expected redis://host:port[/db] or "
            "rediss://…"
        )


def _check_networks(text: str) -> None:
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise SettingsError(
                f"BOTPULSE_ALERTS_ALLOW_NETWORKS={text!r} is invalid: expected comma-separated "
                f"networks such as 10.0.0.0/8 or ::1/128 ({part!r} is not one)"
            ) from None


# --- what each service requires ---------------------------------------------------------------
# The processes a command runs: `botpulse gateway|worker|query|alerts` one each, `botpulse dev` the
# whole stack (it starts its own Redis, so it requires none).
Role = Literal["gateway", "worker", "query", "alerts", "dev"]

# Settings a service cannot start without (they have no usable default).
REQUIRED: dict[str, tuple[str, ...]] = {
    "gateway": ("redis_url",),
    "worker": ("redis_url",),
    "query": ("redis_url",),
    "alerts": ("redis_url",),
}
_HINTS = {"redis_url": "redis://host:6379/0; `botpulse dev` runs the stack with an embedded Redis"}


def check_roles(settings: Settings, roles: Sequence[Role]) -> None:
    """The per-service rules: required settings are set, and settings that must agree do."""
    for role in roles:
        for field in REQUIRED.get(role, ()):
            if getattr(settings, field) in (None, ""):
                hint = f" (e.g. {_HINTS[field]})" if field in _HINTS else ""
                raise SettingsError(f"{env_name(field)} is not set: `botpulse {role}` needs it{hint}")
    if "dev" in roles:
        same_address = settings.gateway_listen == settings.query_listen
        if same_address and settings.gateway_port == settings.query_port != 0:
            raise SettingsError(
                f"BOTPULSE_GATEWAY_PORT and BOTPULSE_QUERY_PORT are both {settings.gateway_port}: "
                "`botpulse dev` serves both on one address, give them different ports"
            )


def cannot_listen(role: Literal["gateway", "query"], settings: Settings, exc: OSError) -> SettingsError:
    """The one line for a listen address or port that cannot be bound (taken, not local, not
    resolvable): it names the two variables that choose it."""
    listen, port = f"{role}_listen", f"{role}_port"
    reason = " ".join((exc.strerror or str(exc)).split())
    return SettingsError(
        f"{env_name(listen)}={getattr(settings, listen)!r} {env_name(port)}={getattr(settings, port)}: "
        f"cannot listen there ({reason})"
    )
