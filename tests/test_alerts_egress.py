"""SSRF rules for alert destinations: forbidden addresses refused with a 400 at creation and
refused (logged, never fetched) at delivery; redirects not followed; bodies capped; timeouts."""

from __future__ import annotations

import asyncio
import ipaddress

import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from alerts_fixtures import (
    Clock,
    Receiver,
    account,
    alert_settings,
    api_client,
    bot,
    destination,
    post,
    rule,
)

from botpulse.alerts.evaluator import Evaluator
from botpulse.runtime.egress import Egress, Refused, check_destination, refusal
from botpulse.runtime.settings import SettingsError, load_settings

BOT = "200000000000000001"

FORBIDDEN = [
    "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "240.0.0.1",
    "::1", "::", "fe80::1", "fc00::1", "fd00:ec2::254", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
    "2002:7f00:1::",  # 6to4 around 127.0.0.1
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo around 10.0.0.1
    "64:ff9b::a00:1",  # NAT64 around 10.0.0.1
]  # fmt: skip
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_forbidden_addresses_are_refused(address):
    assert refusal(ipaddress.ip_address(address), []) is not None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    assert refusal(ipaddress.ip_address(address), []) is None


def test_operator_allows_only_the_networks_it_lists():
    allowed = [ipaddress.ip_network("10.20.0.0/16")]
    assert refusal(ipaddress.ip_address("10.20.3.4"), allowed) is None
    assert refusal(ipaddress.ip_address("10.21.3.4"), allowed) is not None
    assert refusal(ipaddress.ip_address("::ffff:10.20.3.4"), allowed) is None


def test_a_bad_allowed_network_stops_start_up():
    with pytest.raises(SettingsError, match="BOTPULSE_ALERTS_ALLOW_NETWORKS"):
        load_settings({"BOTPULSE_ALERTS_ALLOW_NETWORKS": "10.0.0.0/8,bogus"})


@pytest.fixture
async def strict(make_settings, store, redis):
    """The default rules: https only, nothing private allowed."""
    settings = make_settings(admin_token="test-admin-token-0123456789")
    api = await api_client(settings, store)
    _, key = await account(api)
    yield api, key
    await api.close()


REFUSED_AT_CREATION = [
    "https://127.0.0.1/hook",
    "https://10.0.0.7/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://[::1]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://0.0.0.0/hook",
    "https://localhost/hook",  # a name that resolves to loopback
    "http://example.com/hook",  # http without the operator's permission
    "https://user:pw@example.com/hook",
    "ftp://example.com/hook",
]


async def test_creation_refuses_with_a_400_naming_url(strict):
    api, key = strict
    for url in REFUSED_AT_CREATION:
        resp = await api.post(
            "/v1/alerts/destinations",
            json={"name": "x", "type": "webhook", "url": url},
            headers={"Authorization": key},
        )
        assert resp.status == 400, (url, await resp.text())
        body = await resp.json()
        assert body["field"] == "url" and body["message"].startswith("url: "), url
    listed = await api.get("/v1/alerts/destinations", headers={"Authorization": key})
    assert (await listed.json())["destinations"] == []


async def test_every_resolved_address_must_pass(make_settings):
    # localhost resolves to 127.0.0.1 and (usually) ::1; allowing only 127.0.0.1 is not enough
    # when ::1 comes back too, and enough when it does not.
    settings = make_settings(alerts_allow_networks="127.0.0.1/32")
    loop = asyncio.get_running_loop()
    answers = {i[4][0] for i in await loop.getaddrinfo("localhost", 443)}
    if answers - {"127.0.0.1"}:
        with pytest.raises(Refused, match="not allowed"):
            await check_destination("https://localhost/x", settings)
    else:
        await check_destination("https://localhost/x", settings)


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


async def _deliver_once(settings, store, clock: Clock) -> None:
    client = aioredis.Redis.from_url(settings.redis_url)
    ev = Evaluator(settings, store, client, clock=clock, instance="solo")
    try:
        await ev.tick()
    finally:
        await ev.deliverer.close()
        await client.aclose()


async def test_delivery_rechecks_and_refuses_without_fetching(make_settings, store, redis, receiver):
    """A destination that passed at creation but is forbidden at delivery (here: the operator
    withdrew the allowance; in the wild: its DNS changed) is refused and logged, never sent."""
    open_settings = alert_settings(make_settings)
    api = await api_client(open_settings, store)
    acc, key = await account(api)
    await bot(store, redis, acc, BOT)
    hook = await destination(api, key, "webhook", f"{receiver.url}/hook")
    clock = Clock()
    await post(store, BOT, clock.now)
    r = await rule(
        api, key, {"name": "down", "bot": BOT, "kind": "offline", "minutes": 1, "destinations": [hook["id"]]}
    )
    clock.advance(minutes=2)
    await _deliver_once(alert_settings(make_settings, alerts_allow_networks=""), store, clock)
    assert receiver.received == []
    resp = await api.get(f"/v1/alerts/rules/{r['id']}/deliveries", headers={"Authorization": key})
    (entry,) = (await resp.json())["deliveries"]
    # The account learns it is not a public address; which address is in the operator's log.
    assert (
        entry["outcome"] == "refused" and entry["error"] == "refused: host not allowed (not a public address)"
    )
    assert entry["status"] is None
    await api.close()


async def test_redirect_to_a_private_address_is_not_followed(make_settings, store, redis, receiver):
    target = await Receiver().start(host="127.0.0.2")
    receiver.redirect_to = f"{target.url}/internal"
    try:
        settings = alert_settings(make_settings)
        api = await api_client(settings, store)
        acc, key = await account(api)
        await bot(store, redis, acc, BOT)
        hook = await destination(api, key, "webhook", f"{receiver.url}/hook")
        clock = Clock()
        await post(store, BOT, clock.now)
        r = await rule(
            api, key, {"name": "d", "bot": BOT, "kind": "offline", "minutes": 1, "destinations": [hook["id"]]}
        )
        clock.advance(minutes=2)
        await _deliver_once(settings, store, clock)
        assert len(receiver.received) == 1
        assert target.received == []
        resp = await api.get(f"/v1/alerts/rules/{r['id']}/deliveries", headers={"Authorization": key})
        (entry,) = (await resp.json())["deliveries"]
        assert entry["outcome"] == "failed" and entry["status"] == 302
        await api.close()
    finally:
        await target.stop()


async def _server(handler) -> tuple[web.AppRunner, str]:  # type: ignore[no-untyped-def]
    app = web.Application()
    app.router.add_post("/x", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/x"  # type: ignore[union-attr]


async def test_response_body_is_capped_and_slow_receivers_time_out(make_settings):
    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 5_000_000)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.5)
        return web.Response(text="late")

    settings = alert_settings(make_settings, alerts_max_response_bytes=1000, alerts_timeout_s=0.5)
    egress = Egress(settings)
    runners = []
    try:
        runner, url = await _server(big)
        runners.append(runner)
        answer = await egress.post(url, b"{}", {})
        assert answer.status == 200 and len(answer.body) == 1000
        runner, url = await _server(slow)
        runners.append(runner)
        answer = await egress.post(url, b"{}", {})
        assert answer.status is None and "timed out" in (answer.error or "")
    finally:
        await egress.close()
        for runner in runners:
            await runner.cleanup()


async def test_egress_refuses_a_forbidden_literal_before_connecting(make_settings):
    egress = Egress(make_settings(alerts_allow_http=True))
    try:
        for url in ("http://127.0.0.1:9/x", "http://[::1]:9/x", "http://169.254.169.254/latest"):
            with pytest.raises(Refused):
                await egress.post(url, msgspec.json.encode({}), {})
    finally:
        await egress.close()
