"""Prometheus metrics: what the gateway and the query service count, where the endpoint is (and
is not), several gateway processes adding up, and the names and labels following Prometheus'
conventions."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from ingest_server import GatewayServer
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from services import base_env, free, service
from test_ingest import BOT, seed

import botpulse.ingest.metrics
import botpulse.query.metrics
import botpulse.runtime.clickhouse
from botpulse.ingest.app import EXPOSITION
from botpulse.query.app import build_app as build_query
from botpulse.registry import index
from botpulse.registry.catalog import Bot, create_account, now, write_bot
from botpulse.runtime.clickhouse import Store
from botpulse.runtime.metrics import start_listener
from botpulse.runtime.settings import Settings

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client: TestClient, path: str = "/metrics") -> Samples:
    response = await client.get(path)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return parse(await response.text())


async def test_gateway_counts_requests_posts_refusals_and_redis_round_trips(
    settings: Settings, redis
) -> None:  # type: ignore[no-untyped-def]
    _, key, other_key = await seed(redis)
    route = "/v1/bot/{botId}"
    async with TestClient(GatewayServer(settings)) as client:
        before = await scrape(client)
        auth = {"Authorization": key}
        assert (await client.post(f"/v1/bot/{BOT}", json={"guilds": 1}, headers=auth)).status == 204
        assert (await client.post(f"/v1/bot/{BOT}", json={"guilds": -1}, headers=auth)).status == 400
        assert (await client.post(f"/v1/bot/{BOT}", json={"guilds": 1})).status == 401
        assert (
            await client.post(f"/v1/bot/{BOT}", json={"guilds": 1}, headers={"Authorization": other_key})
        ).status == 403
        assert (await client.post("/v1/bot/nope", json={"guilds": 1}, headers=auth)).status == 404
        statuses = [
            (await client.post(f"/v1/bot/{BOT}", json={"guilds": 1}, headers=auth)).status for _ in range(4)
        ]
        assert statuses.count(429) >= 1  # a burst of 3 per 30 s
        assert (await client.post(f"/bots/{BOT}/stats", json={"guildCount": 3}, headers=auth)).status in (
            200,
            429,
        )
        assert (await client.get("/no/such/route")).status == 404
        await asyncio.sleep(0.12)  # the loop-lag probe wakes every 50 ms
        after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "botpulse_gateway_requests_total"
    assert delta(requests, route=route, method="POST", status_class="2xx") == 1 + statuses.count(204)
    assert delta(requests, route=route, method="POST", status_class="4xx") == 4 + statuses.count(429)
    assert delta(requests, route="unmatched", method="GET", status_class="4xx") == 1
    assert delta("botpulse_gateway_request_duration_seconds_count", route=route) == 5 + len(statuses)
    assert delta("botpulse_gateway_posts_appended_total", route=route) == 1 + statuses.count(204)
    refusals = "botpulse_gateway_refusals_total"
    assert delta(refusals, reason="validation") == 1
    assert delta(refusals, reason="auth") == 2
    assert delta(refusals, reason="not_found") == 1
    assert delta(refusals, reason="rate_limit") >= statuses.count(429)
    assert delta("botpulse_gateway_redis_duration_seconds_count") >= 1
    assert delta("botpulse_gateway_event_loop_lag_seconds_count") >= 1
    # Bounded labels: the bot id never appears in a scrape.
    assert not any(BOT in v for (_, labels) in after for _, v in labels)


async def test_gateway_metrics_port_takes_them_off_the_public_port(
    make_settings: Callable[..., Settings],
) -> None:
    port = free()
    settings = make_settings(gateway_metrics_port=port)
    async with TestClient(GatewayServer(settings)) as client:
        assert (await client.get("/metrics")).status == 404
        stop = await start_listener(client.app[EXPOSITION], "127.0.0.1", port, settings.metrics_path)
        try:
            async with client.session.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
                assert "botpulse_gateway_requests_total" in await response.text()
            async with client.session.get(f"http://127.0.0.1:{port}/v1/bot/1") as response:
                assert response.status == 404  # the listener serves the metrics and nothing else
        finally:
            await stop()


def _post_custom(url: str, key: str, n: int) -> None:
    for i in range(n):
        request = urllib.request.Request(
            f"{url}/v1/bot/88/custom",
            data=f'{{"type": "t", "value1": {i}}}'.encode(),
            headers={"Authorization": key, "Content-Type": "application/json", "Connection": "close"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200


def _scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as response:
        return parse(response.read().decode())


@pytest.mark.parametrize("own_port", [True, False], ids=["metrics-port", "public-port"])
async def test_gateway_processes_add_up(settings, store, redis, tmp_path: Path, own_port: bool) -> None:  # type: ignore[no-untyped-def]
    """`--workers 3`: fresh connections land on any process, and any scrape shows the sum."""
    account, key = await create_account(store, redis, "procs")
    await write_bot(store, redis, Bot("88", account.id, "Bot", None, False, 10, None, now()))
    await redis.set(index.READY_KEY, "1")
    metrics_port = free()
    extra = {"BOTPULSE_GATEWAY_METRICS_PORT": str(metrics_port)} if own_port else {}
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = base_env(settings.redis_url, tmp_path, BOTPULSE_GATEWAY_WORKERS="3", TMPDIR=str(temp), **extra)
    await asyncio.to_thread(_several_processes, env, key, metrics_port if own_port else None, temp)
    assert list(temp.glob("botpulse-metrics-*")) == []  # the run's directory goes with the run


def _several_processes(env: dict[str, str], key: str, metrics_port: int | None, temp: Path) -> None:
    with service(["gateway"], env, free()) as url:
        time.sleep(1.0)  # the children bind after the parent answers
        _post_custom(url, key, 30)
        where = f"{url}/metrics" if metrics_port is None else f"http://127.0.0.1:{metrics_port}/metrics"
        if metrics_port is not None:
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{url}/metrics", timeout=5)
            assert refused.value.code == 404
        for _ in range(6):  # each scrape may reach another process: every one answers the sum
            samples = _scrape(where)
            assert (
                value(samples, "botpulse_gateway_posts_appended_total", route="/v1/bot/{botId}/custom") == 30
            )
        assert len(list(temp.glob("botpulse-metrics-*"))) == 1  # one directory for the run


async def test_query_counts_requests_cache_and_clickhouse(
    make_settings: Callable[..., Settings], store: Store, redis
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(query_prefix="/stats")
    account, _ = await create_account(store, redis, "reader")
    await write_bot(store, redis, Bot("77", account.id, "Bot", None, False, 10, None, now()))
    async with TestClient(TestServer(build_query(settings, store))) as client:
        before = await scrape(client)
        assert (await client.get("/stats/v1/bot/77")).status == 200
        assert (await client.get("/stats/v1/bot/77")).status == 200
        assert (await client.get("/stats/v1/bot/77?dataPoints=0")).status == 400
        assert (await client.get("/stats/v1/bot/404404")).status == 404
        assert (await client.get("/stats/metrics")).status == 404  # the metrics are not under the prefix
        await asyncio.sleep(0.12)  # the loop-lag probe wakes every 50 ms
        after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = "/v1/bot/{botId}"
    assert delta("botpulse_query_requests_total", route=route, method="GET", status_class="2xx") == 2
    assert delta("botpulse_query_requests_total", route=route, method="GET", status_class="4xx") == 2
    assert delta("botpulse_query_request_duration_seconds_count", route=route) == 4
    assert delta("botpulse_query_cache_requests_total", cache="bot_records", result="hit") >= 1
    assert delta("botpulse_query_cache_requests_total", cache="bot_records", result="miss") >= 1
    assert delta("botpulse_clickhouse_request_duration_seconds_count", operation="query") >= 2
    assert delta("botpulse_query_event_loop_lag_seconds_count") >= 1


async def test_query_metrics_port(make_settings: Callable[..., Settings], store: Store, redis) -> None:  # type: ignore[no-untyped-def]
    port = free()
    settings = make_settings(query_metrics_port=port)
    async with TestClient(TestServer(build_query(settings, store))) as client:
        assert (await client.get("/metrics")).status == 404
        async with client.session.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200
            assert "botpulse_query_requests_total" in await response.text()


_NAME = re.compile(r"^botpulse_[a-z0-9_]+$")
_UNIT_SUFFIXES = ("_seconds", "_bytes", "_entries", "_rows", "_total", "_timestamp_seconds", "_info")
FORBIDDEN_LABELS = {"bot", "bot_id", "botId", "account", "account_id", "key", "path", "id", "consumer"}


def test_names_help_and_labels_follow_prometheus_conventions() -> None:
    found = 0
    for family in REGISTRY.collect():
        if not family.name.startswith("botpulse_"):
            continue
        found += 1
        assert _NAME.match(family.name), family.name
        assert family.documentation.strip(), f"{family.name} has no HELP"
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
        if family.type == "histogram":
            # A count's unit is what it counts: rows, stream entries, posts (per append write).
            assert family.name.endswith("_seconds") or family.name.endswith(
                ("_rows", "_entries", "_posts")
            ), family.name
        assert not any(u in family.name for u in ("_ms", "_milliseconds", "_kb", "_mb")), family.name
        for sample in family.samples:
            assert not set(sample.labels) & FORBIDDEN_LABELS, (family.name, sample.labels)
    assert found >= 8


def _samples_of(route: str) -> Samples:
    return {
        (name, labels): v
        for (name, labels), v in parse(generate_latest(REGISTRY).decode()).items()
        if ("route", route) in labels and not name.endswith("_created")
    }


def _relabel(samples: Samples, route: str) -> Samples:
    return {
        (n, tuple((k, route if k == "route" else v) for k, v in labels)): v
        for (n, labels), v in samples.items()
    }


async def test_the_stats_route_tally_adds_up_to_direct_observations() -> None:
    """The hot route's metrics are tallied per post and reach prometheus at the end of the loop
    iteration: the same counts, buckets (bounds included: a value equal to a bound is in it) and
    sum as observing each post directly, and nothing is left behind once the loop moved on."""
    tallied, direct = "/tally/{botId}", "/direct/{botId}"
    answers = [
        (204, 0.0005),
        (204, 0.00051),
        (204, 0.001),
        (429, 0.003),
        (503, 10.0),
        (204, 12.5),
        (400, 0.0),
    ]
    tally = botpulse.ingest.metrics.Tally(tallied)
    for status, seconds in answers:
        tally.answered(status, seconds)
        botpulse.ingest.metrics.observe(direct, "POST", status, seconds)
    for _ in range(3):
        tally.appended()
        botpulse.ingest.metrics.appended(direct)
    assert value(_samples_of(tallied), "botpulse_gateway_posts_appended_total", route=tallied) == 0
    await asyncio.sleep(0)  # the iteration ends: the tally is flushed
    got, want = _samples_of(tallied), _relabel(_samples_of(direct), tallied)
    assert value(got, "botpulse_gateway_request_duration_seconds_count", route=tallied) == len(answers)
    assert (
        value(got, "botpulse_gateway_requests_total", route=tallied, method="POST", status_class="2xx") == 4
    )
    assert got == want
    tally.answered(204, 0.002)  # a later iteration's post counts on top
    await asyncio.sleep(0)
    assert value(_samples_of(tallied), "botpulse_gateway_request_duration_seconds_count", route=tallied) == 8


async def test_the_tally_observes_directly_without_prometheus_clients_bucket_counters() -> None:
    # The installed prometheus_client has the counters the tally adds to in bulk; a release
    # without them gets each post observed at once, with the same figures.
    route = "/tally-direct/{botId}"
    assert not botpulse.ingest.metrics.Tally("/tally-probe/{botId}")._direct
    tally = botpulse.ingest.metrics.Tally(route)
    tally._direct = True
    tally.answered(204, 0.001)
    tally.appended()
    got = _samples_of(route)  # before the loop iteration ends
    assert value(got, "botpulse_gateway_request_duration_seconds_count", route=route) == 1
    assert value(got, "botpulse_gateway_posts_appended_total", route=route) == 1
