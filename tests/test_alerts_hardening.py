"""What the security review of alerts found, each on real parts (chDB, valkey, receivers on
127.0.0.1): a receiver's answer cannot wedge the delivery queue for everyone, claimed jobs do
not fill a claim batch, URLs are checked as aiohttp will connect to them, refusals do not tell
what a host resolves to, DNS failures at delivery are retried, tokens and query values stay out
of listings, and odd input is a 400 naming its field."""

from __future__ import annotations

import ipaddress

import pytest
import redis.asyncio as aioredis
from alerts_fixtures import (
    T0,
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

from botpulse.alerts.delivery import _retry_after_ms
from botpulse.alerts.evaluator import Evaluator
from botpulse.registry import alerts as rules_db
from botpulse.registry.model import Invalid
from botpulse.runtime.egress import Egress, Refused, refusal
from botpulse.schemas.account import DestinationCreate
from botpulse.schemas.alerts import JOBS_KEY, Destination, claim_key

ATTACKER_BOT = "400000000000000001"
VICTIM_BOT = "400000000000000002"
HOUR_MS = 3_600_000
# 127.0.0.1 in fullwidth digits (U+FF10…): yarl, and so aiohttp, reads it as 127.0.0.1.
FULLWIDTH_LOOPBACK = "\uff11\uff12\uff17.\uff10.\uff10.\uff11"


def _h(key: str) -> dict[str, str]:
    return {"Authorization": key}


async def _deliveries(api, key: str, rule_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    resp = await api.get(f"/v1/alerts/rules/{rule_id}/deliveries", headers=_h(key))
    assert resp.status == 200
    return (await resp.json())["deliveries"]


@pytest.fixture
async def receivers():
    made: list[Receiver] = []

    async def make(host: str = "127.0.0.1") -> Receiver:
        made.append(await Receiver().start(host))
        return made[-1]

    yield make
    for r in made:
        await r.stop()


# --- 1. a receiver's answer cannot halt delivery for everyone -------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("inf", 0), ("-inf", 0), ("1e400", 0), ("nan", 0), ("-5", 0), ("soon", 0), ("", 0),
        ("7", 7_000), ("2.5", 2_500), ("99999999999", 120_000),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0),  # a date in the past: come back at once
    ],
)  # fmt: skip
def test_retry_after_is_parsed_safely_and_capped(raw: str, expected: int) -> None:
    assert _retry_after_ms({"Retry-After": raw}, now_ms=T0, cap_ms=120_000) == expected


def test_retry_after_as_a_date_is_honoured_up_to_the_cap() -> None:
    # T0 is 2026-05-28 20:26:40 UTC; a date one minute on asks for 60 s.
    assert (
        _retry_after_ms({"Retry-After": "Thu, 28 May 2026 20:27:40 GMT"}, now_ms=T0, cap_ms=HOUR_MS) == 60_000
    )
    assert (
        _retry_after_ms({"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}, now_ms=T0, cap_ms=HOUR_MS)
        == HOUR_MS
    )


async def test_a_hostile_retry_after_cannot_block_other_accounts(make_settings, store, redis, receivers):
    """20 rules whose receiver answers 503 with `Retry-After: inf` head the queue; another
    account's rule still gets its notification, the hostile jobs are retried with backoff and
    recorded, and they stop at the retry bound."""
    hostile = await receivers()
    hostile.statuses = [503] * 10_000
    hostile.headers = {"Retry-After": "inf"}
    friendly = await receivers()
    settings = alert_settings(make_settings, alerts_retry_for_s=300, registry_writes_per_min=1000)
    api = await api_client(settings, store)
    attacker, attacker_key = await account(api, "attacker")
    victim, victim_key = await account(api, "victim")
    await bot(store, redis, attacker, ATTACKER_BOT)
    await bot(store, redis, victim, VICTIM_BOT)
    bad = await destination(api, attacker_key, "webhook", f"{hostile.url}/hook")
    good = await destination(api, victim_key, "webhook", f"{friendly.url}/hook")
    clock = Clock()
    await post(store, ATTACKER_BOT, clock.now)
    await post(store, VICTIM_BOT, clock.now + 60_000)  # falls silent a minute later
    hostile_rules = [
        await rule(api, attacker_key, {"name": f"r{i}", "bot": ATTACKER_BOT, "kind": "offline",
                                       "minutes": 1, "destinations": [bad["id"]]})
        for i in range(20)
    ]  # fmt: skip
    victim_rule = await rule(
        api, victim_key,
        {"name": "down", "bot": VICTIM_BOT, "kind": "offline", "minutes": 1, "destinations": [good["id"]]},
    )  # fmt: skip
    client = aioredis.Redis.from_url(settings.redis_url)
    ev = Evaluator(settings, store, client, clock=clock, instance="solo")
    failures: list[BaseException] = []

    async def round_() -> None:
        # As `Evaluator.run` does: a failing round is logged and the next one tries again.
        try:
            await ev.tick()
        except Exception as exc:
            failures.append(exc)

    try:
        clock.advance(minutes=1, seconds=1)
        await round_()  # the 20 hostile notifications are due first, and tried
        assert len(hostile.received) == 20
        clock.advance(minutes=1)
        await round_()  # now the victim's is due too, behind the 20 hostile ones
        await round_()
        assert [r.json()["type"] for r in friendly.received] == ["alert.opened"]
        assert failures == []
        log = await _deliveries(api, attacker_key, hostile_rules[0]["id"])
        assert [(e["outcome"], e["status"]) for e in log] == [("retrying", 503)] * 2
        assert (await _deliveries(api, victim_key, victim_rule["id"]))[0]["outcome"] == "delivered"
        # The hostile jobs end at the retry bound (5 min) instead of being sent forever.
        for _ in range(20):
            clock.advance(minutes=1)
            await round_()
        assert await redis.zcard(JOBS_KEY) == 0
        sent = len(hostile.received)
        log = await _deliveries(api, attacker_key, hostile_rules[0]["id"])
        assert log[0]["outcome"] == "failed" and log[0]["at"] - log[-1]["at"] <= 300_000
        clock.advance(minutes=60)
        await round_()
        assert len(hostile.received) == sent and failures == []
    finally:
        await ev.deliverer.close()
        await client.aclose()
        await api.close()


async def test_jobs_claimed_elsewhere_do_not_fill_the_claim_batch(make_settings, store, redis, receivers):
    """An evaluator holding 20 claims (stuck, or dead) does not keep the others from the
    notifications queued behind them."""
    friendly = await receivers()
    settings = alert_settings(make_settings)
    api = await api_client(settings, store)
    acc, key = await account(api)
    await bot(store, redis, acc, VICTIM_BOT)
    hook = await destination(api, key, "webhook", f"{friendly.url}/hook")
    clock = Clock()
    await post(store, VICTIM_BOT, clock.now)
    await rule(api, key, {"name": "d", "bot": VICTIM_BOT, "kind": "offline", "minutes": 1,
                          "destinations": [hook["id"]]})  # fmt: skip
    stuck_c = aioredis.Redis.from_url(settings.redis_url)
    other_c = aioredis.Redis.from_url(settings.redis_url)
    stuck = Evaluator(settings, store, stuck_c, clock=clock, instance="stuck")
    other = Evaluator(settings, store, other_c, clock=clock, instance="other")
    try:
        await redis.zadd(JOBS_KEY, {f"stuck-{i:02d}": T0 for i in range(20)})  # due before any other
        claimed = await stuck.deliverer._claim(
            keys=[JOBS_KEY], args=[clock(), 20, 60_000, "stuck", claim_key("")]
        )
        assert len(claimed) == 20
        clock.advance(minutes=2)
        await other.tick()
        assert [r.json()["type"] for r in friendly.received] == ["alert.opened"]
    finally:
        for ev, c in ((stuck, stuck_c), (other, other_c)):
            await ev.deliverer.close()
            await c.aclose()
        await api.close()


# --- 2. the host checked is the host aiohttp connects to -----------------------------------------
def _odd_forms(port: int) -> list[str]:
    return [
        f"http://{FULLWIDTH_LOOPBACK}:{port}/hook",
        f"http://2130706433:{port}/hook",  # decimal
        f"http://0177.0.0.1:{port}/hook",  # octal
        f"http://127.1:{port}/hook",  # short form
        f"http://0x7f.0.0.1:{port}/hook",  # hex
    ]


async def test_odd_ip_forms_are_refused_at_creation(make_settings, store, redis, receivers):
    target = await receivers()
    port = int(target.url.rsplit(":", 1)[1])
    api = await api_client(alert_settings(make_settings, alerts_allow_networks=""), store)
    try:
        _, key = await account(api)
        for url in _odd_forms(port):
            resp = await api.post(
                "/v1/alerts/destinations", json={"name": "x", "type": "webhook", "url": url}, headers=_h(key)
            )
            assert resp.status == 400, (url, await resp.text())
            body = await resp.json()
            assert body["field"] == "url" and "127.0.0.1" not in body["message"], url
    finally:
        await api.close()


async def test_odd_ip_forms_are_refused_at_delivery_without_a_byte_sent(make_settings, receivers):
    target = await receivers()
    port = int(target.url.rsplit(":", 1)[1])
    egress = Egress(alert_settings(make_settings, alerts_allow_networks=""))
    try:
        for url in _odd_forms(port):
            with pytest.raises(Refused):
                await egress.post(url, b"{}", {})
        assert target.received == []
    finally:
        await egress.close()


async def test_a_fullwidth_destination_stored_earlier_is_refused_at_delivery(
    make_settings, store, redis, receivers
):
    """Created while the operator let 127.0.0.1 in; delivered after the allowance is gone: the
    delivery check sees 127.0.0.1 (as aiohttp does) and refuses it."""
    target = await receivers()
    port = int(target.url.rsplit(":", 1)[1])
    api = await api_client(alert_settings(make_settings), store)
    acc, key = await account(api)
    await bot(store, redis, acc, VICTIM_BOT)
    hook = await destination(api, key, "webhook", f"http://{FULLWIDTH_LOOPBACK}:{port}/hook")
    clock = Clock()
    await post(store, VICTIM_BOT, clock.now)
    r = await rule(api, key, {"name": "d", "bot": VICTIM_BOT, "kind": "offline", "minutes": 1,
                              "destinations": [hook["id"]]})  # fmt: skip
    settings = alert_settings(make_settings, alerts_allow_networks="")
    client = aioredis.Redis.from_url(settings.redis_url)
    ev = Evaluator(settings, store, client, clock=clock, instance="solo")
    try:
        clock.advance(minutes=2)
        await ev.tick()
        assert target.received == []
        (entry,) = await _deliveries(api, key, r["id"])
        assert entry["outcome"] == "refused"
    finally:
        await ev.deliverer.close()
        await client.aclose()
        await api.close()


# --- 3. refusals are no DNS oracle, and they count --------------------------------------------------
async def test_refusals_do_not_say_what_a_host_resolves_to(make_settings, store, redis):
    api = await api_client(make_settings(admin_token="test-admin-token-0123456789"), store)
    try:
        _, key = await account(api)
        messages = set()
        for url in ("https://localhost/hook", "https://does-not-exist.invalid/hook"):
            resp = await api.post(
                "/v1/alerts/destinations", json={"name": "x", "type": "webhook", "url": url}, headers=_h(key)
            )
            assert resp.status == 400
            body = await resp.json()
            assert body["field"] == "url"
            messages.add(body["message"])
        # One answer for "resolves to something private" and "does not resolve": which one it
        # was, and the address, stay on this side.
        assert messages == {"url: host not allowed (it does not resolve to a public address)"}
    finally:
        await api.close()


async def test_refused_creations_count_against_registry_writes(make_settings, store, redis):
    api = await api_client(
        alert_settings(make_settings, alerts_allow_networks="", registry_writes_per_min=3), store
    )
    try:
        _, key = await account(api)
        statuses = []
        for _ in range(4):
            resp = await api.post(
                "/v1/alerts/destinations",
                json={"name": "x", "type": "webhook", "url": "http://localhost:9/hook"},
                headers=_h(key),
            )
            statuses.append(resp.status)
        assert statuses == [400, 400, 400, 429]
    finally:
        await api.close()


# --- 4. a DNS failure at delivery is retried -------------------------------------------------------
async def test_a_dns_failure_at_delivery_is_retried_not_dropped(make_settings, store, redis):
    settings = alert_settings(make_settings, alerts_timeout_s=3)
    api = await api_client(settings, store)
    acc, key = await account(api)
    await bot(store, redis, acc, VICTIM_BOT)
    # A destination whose name resolved when it was created and no longer does (written as
    # the API writes it: creation would refuse it now).
    gone = Destination(id="dst_" + "0" * 16, account=acc, name="gone", type="webhook",
                       url="http://does-not-exist.invalid/hook", created_at=T0)  # fmt: skip
    await rules_db.save_destination(store, redis, gone, rules_db.new_secret())
    clock = Clock()
    await post(store, VICTIM_BOT, clock.now)
    r = await rule(api, key, {"name": "d", "bot": VICTIM_BOT, "kind": "offline", "minutes": 1,
                              "destinations": [gone.id]})  # fmt: skip
    client = aioredis.Redis.from_url(settings.redis_url)
    ev = Evaluator(settings, store, client, clock=clock, instance="solo")
    try:
        clock.advance(minutes=2)
        await ev.tick()
        (entry,) = await _deliveries(api, key, r["id"])
        assert entry["outcome"] == "retrying" and entry["status"] is None
        assert "does not resolve" in entry["error"]
        assert await redis.zcard(JOBS_KEY) == 1
    finally:
        await ev.deliverer.close()
        await client.aclose()
        await api.close()


# --- 5. tokens and query values stay out of listings ------------------------------------------------
async def test_listings_redact_discord_tokens_and_query_values(make_settings, store, redis):
    api = await api_client(alert_settings(make_settings), store)
    try:
        _, key = await account(api)
        discord = await destination(api, key, "discord", "http://127.0.0.1:9/api/webhooks/1/TOK?x=/b")
        hook = await destination(api, key, "webhook", "http://127.0.0.1:9/hook?token=s3cr3t&team=ops")
        listed = (await (await api.get("/v1/alerts/destinations", headers=_h(key))).json())["destinations"]
        shown = {d["id"]: d["url"] for d in listed}
        assert shown[discord["id"]] == "http://127.0.0.1:9/api/webhooks/1/…"
        assert shown[hook["id"]] == "http://127.0.0.1:9/hook?token=…&team=…"
        assert "TOK" not in str(listed) and "s3cr3t" not in str(listed)
        for url in ("http://127.0.0.1:9/api/webhooks/1/TOK#frag", "http://127.0.0.1:9/hook#frag"):
            kind = "discord" if "webhooks" in url else "webhook"
            resp = await api.post(
                "/v1/alerts/destinations", json={"name": "x", "type": kind, "url": url}, headers=_h(key)
            )
            assert resp.status == 400 and (await resp.json())["field"] == "url", url
    finally:
        await api.close()


async def test_a_discord_destination_must_be_on_a_discord_host(make_settings, store, redis):
    # 127.0.0.2 passes the SSRF rules here; it is not a host `discord` destinations may name.
    settings = alert_settings(make_settings, alerts_allow_networks="127.0.0.0/8")
    api = await api_client(settings, store)
    try:
        _, key = await account(api)
        resp = await api.post(
            "/v1/alerts/destinations",
            json={"name": "x", "type": "discord", "url": "http://127.0.0.2:9/api/webhooks/1/T"},
            headers=_h(key),
        )
        assert resp.status == 400 and (await resp.json())["field"] == "url"
        await destination(api, key, "webhook", "http://127.0.0.2:9/api/webhooks/1/T")  # a webhook may
    finally:
        await api.close()


@pytest.mark.parametrize(
    "url",
    [
        "https://discord.com/api/webhooks/1/T",
        "https://discordapp.com/api/webhooks/1/T",
        "https://canary.discord.com/api/v10/webhooks/1/T",
        "https://ptb.discordapp.com/api/webhooks/1/T?thread_id=5",
        "https://DISCORD.com/api/webhooks/1/T",
    ],
)
def test_discord_urls_on_discord_hosts_pass(url: str) -> None:
    body = DestinationCreate(name="d", type="discord", url=url)
    assert rules_db.destination_from_body(body, account="a", discord_hosts=()).url == url


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/api/webhooks/1/T",
        "https://discord.com.evil.example/api/webhooks/1/T",
        "https://evildiscord.com/api/webhooks/1/T",
        "https://x.canary.discord.com/api/webhooks/1/T",
        "http://127.0.0.1:9/api/webhooks/1/T",  # not let in here
    ],
)
def test_discord_urls_elsewhere_are_refused(url: str) -> None:
    with pytest.raises(Invalid) as caught:
        rules_db.destination_from_body(
            DestinationCreate(name="d", type="discord", url=url), account="a", discord_hosts=()
        )
    assert caught.value.field == "url"


# --- 6 and 8. odd input is a 400 naming its field ---------------------------------------------------
async def test_odd_urls_and_time_zones_are_400_naming_the_field(make_settings, store, redis):
    api = await api_client(alert_settings(make_settings), store)
    try:
        acc, key = await account(api)
        await bot(store, redis, acc, VICTIM_BOT)
        for url in ("https://" + "a" * 70 + ".example.com/hook", "https://\xad/hook", "https://a..b/hook"):
            resp = await api.post(
                "/v1/alerts/destinations", json={"name": "x", "type": "webhook", "url": url}, headers=_h(key)
            )
            assert resp.status == 400, (url, await resp.text())
            assert (await resp.json())["field"] == "url"
        hook = await destination(api, key, "webhook", "http://127.0.0.1:9/hook")
        base = {"name": "x", "bot": VICTIM_BOT, "kind": "offline", "destinations": [hook["id"]]}
        for quiet in (
            {"start": "22:00", "end": "07:00", "timezone": "A" * 5000},
            {"start": "22:00", "end": "07:00", "timezone": "Europe/" + "B" * 100},
            {"start": "22:00", "end": "07:00", "timezone": "../../etc/passwd"},
        ):
            resp = await api.post("/v1/alerts/rules", json=base | {"quietHours": quiet}, headers=_h(key))
            assert resp.status == 400, (quiet, await resp.text())
            assert (await resp.json())["field"] == "quietHours.timezone"
        for body in (
            base | {"op": None},
            base | {"kind": "threshold", "metric": "cpu", "value": 1, "op": None},
        ):
            resp = await api.post("/v1/alerts/rules", json=body, headers=_h(key))
            assert resp.status == 400, (body, await resp.text())
            assert (await resp.json())["field"] == "op"
    finally:
        await api.close()


async def test_an_unknown_bot_and_another_accounts_bot_get_the_same_answer(make_settings, store, redis):
    api = await api_client(alert_settings(make_settings), store)
    try:
        _, key = await account(api, "one")
        other, _ = await account(api, "two")
        await bot(store, redis, other, ATTACKER_BOT)
        hook = await destination(api, key, "webhook", "http://127.0.0.1:9/hook")
        answers = []
        for bot_id in (ATTACKER_BOT, "400000000000009999"):
            resp = await api.post(
                "/v1/alerts/rules",
                json={"name": "x", "bot": bot_id, "kind": "offline", "destinations": [hook["id"]]},
                headers=_h(key),
            )
            answers.append((resp.status, await resp.json()))
        assert answers[0] == answers[1]
        assert answers[0][0] == 400 and answers[0][1]["field"] == "bot"
    finally:
        await api.close()


# --- 9. site-local IPv6 -------------------------------------------------------------------------
@pytest.mark.parametrize("address", ["fec0::1", "feff:ffff::1"])
def test_deprecated_site_local_ipv6_is_refused(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), []) is not None
