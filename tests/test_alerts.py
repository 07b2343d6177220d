"""The alert evaluator on real parts (chDB, valkey, a receiver on 127.0.0.1 let in by the
operator setting): offline / back online, thresholds and ratios, change rules, retries and
giving up, one delivery per incident with two evaluators, take-over when one dies, signatures,
and Discord's payload shape. Time moves by the test's clock, not by sleeping."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

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
    settle,
)

from botpulse.alerts import payloads
from botpulse.alerts.evaluator import Evaluator, quiet_until, slot_of
from botpulse.runtime.shards import shard_states
from botpulse.schemas.alerts import ALERT_SLOTS, QuietHours
from botpulse.workers.rows import SHARDS_COLUMNS

BOT = "200000000000000001"
MIN = 60_000
DOCS = Path(__file__).resolve().parent.parent / "docs" / "alerts.md"


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest.fixture
async def env(make_settings, store, redis, receiver):
    """Settings, the account API, an account with a bot, and one webhook + one Discord
    destination pointing at the receiver."""
    settings = alert_settings(make_settings)
    api = await api_client(settings, store)
    acc, key = await account(api)
    await bot(store, redis, acc, BOT)
    webhook = await destination(api, key, "webhook", f"{receiver.url}/hook")
    discord = await destination(api, key, "discord", f"{receiver.url}/api/webhooks/123/tok-en")
    yield {"settings": settings, "api": api, "key": key, "webhook": webhook, "discord": discord}
    await api.close()


@contextlib.asynccontextmanager
async def _evaluating(settings, store, clock, name: str) -> AsyncIterator[Evaluator]:
    """An evaluator on its own Redis client; its deliverer and client close when the block ends."""
    client = aioredis.Redis.from_url(settings.redis_url)
    ev = Evaluator(settings, store, client, clock=clock, instance=name)
    try:
        yield ev
    finally:
        await ev.deliverer.close()
        await client.aclose()


@contextlib.asynccontextmanager
async def _two_evaluators(settings, store, clock) -> AsyncIterator[tuple[Evaluator, Evaluator]]:
    """Evaluators "a" and "b" sharing the rules, as two processes would."""
    async with _evaluating(settings, store, clock, "a") as a, _evaluating(settings, store, clock, "b") as b:
        yield a, b


async def _deliveries(env, rule_id: str) -> list[dict]:
    resp = await env["api"].get(
        f"/v1/alerts/rules/{rule_id}/deliveries", headers={"Authorization": env["key"]}
    )
    assert resp.status == 200
    return (await resp.json())["deliveries"]


def _events(receiver: Receiver, path: str = "/hook") -> list[str]:
    return [r.json()["type"] for r in receiver.received if r.path.startswith(path)]


async def test_offline_after_n_minutes_then_back_online_with_the_outage(env, store, redis, receiver):
    clock = Clock()
    await post(store, BOT, clock.now, guilds=10)
    r = await rule(
        env["api"],
        env["key"],
        {
            "name": "down",
            "bot": BOT,
            "kind": "offline",
            "minutes": 3,
            "destinations": [env["webhook"]["id"], env["discord"]["id"]],
        },
    )
    assert r["minutes"] == 3
    async with _evaluating(env["settings"], store, clock, "solo") as ev:
        period_ms = int(env["settings"].alerts_interval_s * 1000)
        fired_at = None
        # Rounds every evaluation period of (test) time: the alert comes on the first round past N.
        while clock.now < T0 + 10 * MIN and fired_at is None:
            clock.advance(seconds=env["settings"].alerts_interval_s)
            await ev.tick()
            if receiver.received:
                fired_at = clock.now
        assert fired_at is not None
        # Latency from the last post: at most N plus one evaluation period.
        assert 3 * MIN <= fired_at - T0 <= 3 * MIN + period_ms
        assert sorted(r.path for r in receiver.received) == ["/api/webhooks/123/tok-en?wait=true", "/hook"]
        opened = next(x for x in receiver.received if x.path == "/hook").json()
        assert opened["type"] == "alert.opened" and opened["state"] == "offline"
        assert opened["bot"] == {
            "id": BOT,
            "name": "Pulse Bot",
            "url": f"https://stats.example.com/bots/{BOT}",
            "avatar": "https://cdn.discordapp.com/avatars/1/abc.png",
        }
        assert opened["incident"]["since"] == T0 and opened["incident"]["resolvedAt"] is None
        state = (
            await (
                await env["api"].get(f"/v1/alerts/rules/{r['id']}", headers={"Authorization": env["key"]})
            ).json()
        )["state"]
        assert state["status"] == "firing" and state["incident"] == opened["incident"]["id"]

        # Still down: nothing more is sent.
        for _ in range(5):
            clock.advance(minutes=1)
            await ev.tick()
        assert len(receiver.received) == 2

        back = clock.advance(minutes=1)
        await post(store, BOT, back, guilds=10)
        clock.advance(seconds=1)
        await ev.tick()
        resolved = [x.json() for x in receiver.received if x.path == "/hook"][-1]
        assert resolved["type"] == "alert.resolved" and resolved["state"] == "online"
        assert resolved["incident"]["id"] == opened["incident"]["id"]
        assert resolved["incident"]["durationMs"] == back - T0
        assert len(receiver.received) == 4
        discord = [x.json() for x in receiver.received if x.path.startswith("/api/")]
        assert "back online" in discord[1]["embeds"][0]["title"]
        log = await _deliveries(env, r["id"])
        assert [e["outcome"] for e in log] == ["delivered"] * 4
        assert {e["event"] for e in log} == {"opened", "resolved"}
        assert all(e["status"] == 200 and e["latencyMs"] is not None for e in log)


async def test_threshold_with_a_ratio_holds_for_m_minutes_then_resolves(env, store, redis, receiver):
    clock = Clock()
    await rule(
        env["api"],
        env["key"],
        {
            "name": "ram",
            "bot": BOT,
            "kind": "threshold",
            "metric": "ramUsage",
            "ofMetric": "ramTotal",
            "op": "above",
            "value": 90,
            "minutes": 5,
            "destinations": [env["webhook"]["id"]],
        },
    )
    async with _evaluating(env["settings"], store, clock, "solo") as ev:
        await post(store, BOT, clock.now, ram_usage=50.0, ram_total=100.0)
        for minute in range(1, 5):  # high for 4 minutes: not yet
            await post(store, BOT, clock.now + minute * MIN, ram_usage=95.0, ram_total=100.0)
        clock.advance(minutes=4, seconds=10)
        await ev.tick()
        assert receiver.received == []
        for minute in range(5, 8):
            await post(store, BOT, T0 + minute * MIN, ram_usage=96.0, ram_total=100.0)
        clock.now = T0 + 7 * MIN + 10_000
        await ev.tick()
        assert _events(receiver) == ["alert.opened"]
        body = receiver.received[0].json()
        assert body["value"] == pytest.approx(96.0) and "ramUsage" in body["detail"]
        assert body["incident"]["since"] == T0 + 1 * MIN  # the run of high posts began there
        await post(store, BOT, T0 + 8 * MIN, ram_usage=40.0, ram_total=100.0)
        clock.now = T0 + 8 * MIN + 10_000
        await ev.tick()
        assert _events(receiver) == ["alert.opened", "alert.resolved"]


async def _shard_posts(store, at_ms: int, *shards: int, up: int = 1) -> None:
    """One post per shard as the worker stores it (`shard_stats`; the view feeds `shard_latest`)."""
    status = None if up else "disconnected"
    rows = [[BOT, s, _utc(at_ms), f"e{s}-{at_ms}", up, status, 100 + s, None, 40.0] for s in shards]
    await store.insert("shard_stats", rows, SHARDS_COLUMNS)


def _utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


async def test_shards_down_fires_at_n_down_shards_then_clears_when_they_post(env, store, redis, receiver):
    clock = Clock()
    window = env["settings"].heartbeat_window_s * 1000
    r = await rule(
        env["api"],
        env["key"],
        {"name": "shards", "bot": BOT, "kind": "shards_down", "count": 2,
         "destinations": [env["webhook"]["id"]]},
    )  # fmt: skip
    assert r["kind"] == "shards_down" and r["count"] == 2
    async with _evaluating(env["settings"], store, clock, "solo") as ev:
        # Posts land as time passes (the read takes each shard's newest post, as in real time).
        await _shard_posts(store, T0, 0, 1, 2, 3)
        # Shards 0, 1 and 3 post every minute; 2 falls silent after T0; 3 reports itself down at 5 min.
        for minute in range(1, 5):
            await _shard_posts(store, T0 + minute * MIN, 0, 1, 3)
            clock.now = T0 + minute * MIN + 10_000
            if clock.now - T0 < window:  # shard 2 silent less than the window: still up
                await ev.tick()
        clock.now = T0 + window - 1000
        await ev.tick()
        clock.now = T0 + 4 * MIN + 10_000  # shard 2 down, the others up: 1 < 2
        await ev.tick()
        assert receiver.received == []
        await _shard_posts(store, T0 + 5 * MIN, 0, 1)
        await _shard_posts(store, T0 + 5 * MIN, 3, up=0)
        clock.now = T0 + 5 * MIN + 10_000  # shard 3 said it is down: 2 of 4
        await ev.tick()
        assert _events(receiver) == ["alert.opened"]
        opened = receiver.received[0].json()
        assert opened["state"] == "firing" and opened["value"] == 2
        assert opened["detail"] == "2 of 4 shards down (limit 2): 2, 3"
        # Still down: nothing more is sent.
        clock.now = T0 + 6 * MIN
        await ev.tick()
        assert len(receiver.received) == 1
        # Shard 3 posts up again: 1 down, below the count, so the incident resolves.
        await _shard_posts(store, T0 + 6 * MIN + 5_000, 0, 1, 3)
        clock.now = T0 + 6 * MIN + 10_000
        await ev.tick()
        assert _events(receiver) == ["alert.opened", "alert.resolved"]
        resolved = receiver.received[1].json()
        assert resolved["incident"]["id"] == opened["incident"]["id"]
        assert resolved["detail"] == "1 of 4 shards down (limit 2): 2"
        url = f"/v1/alerts/rules/{r['id']}"
        state = (await (await env["api"].get(url, headers={"Authorization": env["key"]})).json())["state"]
        assert state["status"] == "ok"


async def test_shards_down_counts_as_the_shards_read_does(env, store, redis):
    """The rule and GET /v1/bot/{id}/shards judge a shard by the same rule (runtime.shards)."""
    at = int(time.time() * 1000)
    window = env["settings"].heartbeat_window_s * 1000
    await _shard_posts(store, at - window - 1000, 0)  # silent past the window
    await _shard_posts(store, at - 1000, 1)
    await _shard_posts(store, at - 1000, 2, up=0)
    resp = await env["api"].get(f"/v1/bot/{BOT}/shards", headers={"Authorization": env["key"]})
    grid = (await resp.json())["shards"]
    read = {s["id"]: s["status"] == "up" for s in grid}
    states = await shard_states(store, [BOT], at, window)
    assert dict(states[BOT]) == read == {0: False, 1: True, 2: False}


async def test_threshold_on_a_custom_metric_below(env, store, redis, receiver):
    clock = Clock()
    await rule(
        env["api"],
        env["key"],
        {
            "name": "queue",
            "bot": BOT,
            "kind": "threshold",
            "metric": "custom.players",
            "op": "below",
            "value": 5,
            "minutes": 2,
            "destinations": [env["webhook"]["id"]],
        },
    )
    async with _evaluating(env["settings"], store, clock, "solo") as ev:
        for minute in range(4):
            await post(store, BOT, clock.now + minute * MIN, custom={"players": 2.0})
        clock.advance(minutes=3, seconds=5)
        await ev.tick()
        assert _events(receiver) == ["alert.opened"]


async def test_change_rule_guilds_dropped_by_more_than_x_percent_in_24h(env, store, redis, receiver):
    clock = Clock()
    await rule(
        env["api"],
        env["key"],
        {
            "name": "kicked",
            "bot": BOT,
            "kind": "change",
            "metric": "guilds",
            "op": "drop",
            "percent": 20,
            "destinations": [env["webhook"]["id"]],
        },
    )
    async with _evaluating(env["settings"], store, clock, "solo") as ev:
        await post(store, BOT, clock.now, guilds=1000)
        await post(store, BOT, clock.now + 23 * 3_600_000, guilds=900)  # -10 %: fine
        clock.advance(minutes=24 * 60 + 1)
        await post(store, BOT, clock.now - 30_000, guilds=900)
        await ev.tick()
        assert receiver.received == []
        await post(store, BOT, clock.now, guilds=700)  # -30 % against a day ago
        clock.advance(seconds=5)
        await ev.tick()
        assert _events(receiver) == ["alert.opened"]
        assert "dropped 30.0%" in receiver.received[0].json()["detail"]


async def test_retry_on_receiver_500_then_success_same_message_id(env, store, redis, receiver):
    clock = Clock()
    receiver.statuses = [500, 503]
    await post(store, BOT, clock.now)
    r = await rule(
        env["api"],
        env["key"],
        {"name": "down", "bot": BOT, "kind": "offline", "minutes": 1, "destinations": [env["webhook"]["id"]]},
    )
    async with _evaluating(env["settings"], store, clock, "solo") as ev:
        clock.advance(minutes=1, seconds=1)
        await ev.tick()
        assert len(receiver.received) == 1
        await ev.tick()  # not due yet: backoff
        assert len(receiver.received) == 1
        for _ in range(2):
            clock.advance(minutes=1)  # past any backoff of the first attempts
            await ev.tick()
        assert [x.json()["type"] for x in receiver.received] == ["alert.opened"] * 3
        ids = {x.headers["webhook-id"] for x in receiver.received}
        assert len(ids) == 1 and {x.headers["Idempotency-Key"] for x in receiver.received} == ids
        log = await _deliveries(env, r["id"])
        assert [(e["outcome"], e["status"]) for e in log] == [
            ("delivered", 200),
            ("retrying", 503),
            ("retrying", 500),
        ]
        clock.advance(minutes=30)
        await ev.tick()
        assert len(receiver.received) == 3  # delivered once: never again


async def test_give_up_after_the_retry_bound(make_settings, store, redis, receiver):
    settings = alert_settings(make_settings, alerts_retry_for_s=120)
    api = await api_client(settings, store)
    acc, key = await account(api)
    await bot(store, redis, acc, BOT)
    hook = await destination(api, key, "webhook", f"{receiver.url}/hook")
    receiver.statuses = [500] * 1000
    clock = Clock()
    await post(store, BOT, clock.now)
    r = await rule(
        api, key, {"name": "down", "bot": BOT, "kind": "offline", "minutes": 1, "destinations": [hook["id"]]}
    )
    async with _evaluating(settings, store, clock, "solo") as ev:
        clock.advance(minutes=1, seconds=1)
        for _ in range(40):
            await ev.tick()
            clock.advance(seconds=15)
        attempts = len(receiver.received)
        assert 2 <= attempts < 40
        resp = await api.get(f"/v1/alerts/rules/{r['id']}/deliveries", headers={"Authorization": key})
        log = (await resp.json())["deliveries"]
        assert log[0]["outcome"] == "failed" and log[0]["status"] == 500
        assert all(e["outcome"] == "retrying" for e in log[1:])
        assert log[0]["at"] - log[-1]["at"] <= 120_000
        clock.advance(minutes=60)
        await ev.tick()
        assert len(receiver.received) == attempts


async def _bots_in_every_half(store, redis, acc: str, count: int) -> list[str]:
    ids = [f"3000000000000{i:05d}" for i in range(count)]
    for bot_id in ids:
        await bot(store, redis, acc, bot_id, name=f"Bot {bot_id[-3:]}")
    return ids


async def test_two_evaluators_one_delivery_per_incident(env, store, redis, receiver):
    clock = Clock()
    acc = (await (await env["api"].get("/v1/account", headers={"Authorization": env["key"]})).json())["id"]
    ids = await _bots_in_every_half(store, redis, acc, 12)
    for bot_id in ids:
        await post(store, bot_id, clock.now)
        await rule(
            env["api"],
            env["key"],
            {
                "name": f"down {bot_id}",
                "bot": bot_id,
                "kind": "offline",
                "minutes": 2,
                "destinations": [env["webhook"]["id"]],
            },
        )
    async with _two_evaluators(env["settings"], store, clock) as (a, b):
        await settle(a.acquire, b.acquire, rounds=3)
        assert a.slots and b.slots and not a.slots & b.slots and len(a.slots | b.slots) == ALERT_SLOTS
        # Both judge every rule at once, as if their leases overlapped: the transition decides.
        everything = list((await a.rules()).values())
        clock.advance(minutes=2, seconds=1)
        await asyncio.gather(a.evaluate(everything), b.evaluate(everything), a.evaluate(everything))
        await settle(a.tick, b.tick, rounds=3)
        opened = [x.json() for x in receiver.received]
        assert sorted(o["bot"]["id"] for o in opened) == ids
        assert len({o["incident"]["id"] for o in opened}) == len(ids)
        for bot_id in ids:
            await post(store, bot_id, clock.now)
        clock.advance(seconds=1)
        await settle(a.tick, b.tick, rounds=3)
        assert sorted(_events(receiver)) == ["alert.opened"] * 12 + ["alert.resolved"] * 12


async def test_takeover_when_an_evaluator_dies(env, store, redis, receiver):
    clock = Clock()
    acc = (await (await env["api"].get("/v1/account", headers={"Authorization": env["key"]})).json())["id"]
    ids = await _bots_in_every_half(store, redis, acc, 12)
    async with _two_evaluators(env["settings"], store, clock) as (a, b):
        await settle(a.acquire, b.acquire, rounds=3)
        orphan = next(i for i in ids if slot_of(i) in b.slots)
        await post(store, orphan, clock.now)
        await rule(
            env["api"],
            env["key"],
            {
                "name": "down",
                "bot": orphan,
                "kind": "offline",
                "minutes": 2,
                "destinations": [env["webhook"]["id"]],
            },
        )
        # b dies: it stops renewing anything (a killed process runs no clean-up).
        died = time.monotonic()
        clock.advance(minutes=2, seconds=1)
        while not receiver.received:
            await a.tick()
            assert time.monotonic() - died < env["settings"].alerts_lease_s + 5, "no take-over"
            await asyncio.sleep(env["settings"].alerts_interval_s)
        assert slot_of(orphan) in a.slots and len(a.slots) == ALERT_SLOTS
        assert receiver.received[0].json()["bot"]["id"] == orphan


async def test_graceful_stop_hands_the_slots_over_at_once(env, store, redis):
    clock = Clock()
    async with _two_evaluators(env["settings"], store, clock) as (a, b):
        await settle(a.acquire, b.acquire, rounds=3)
        assert len(b.slots) == ALERT_SLOTS // 2
        b.stop()
        await b.run()  # stopped already: one clean-up pass that gives the slots back
        await a.acquire()
        assert len(a.slots) == ALERT_SLOTS


async def test_muted_and_min_interval_suppress_and_quiet_hours_defer(env, store, redis, receiver):
    clock = Clock()
    await post(store, BOT, clock.now)
    r = await rule(
        env["api"],
        env["key"],
        {
            "name": "down",
            "bot": BOT,
            "kind": "offline",
            "minutes": 1,
            "muted": True,
            "destinations": [env["webhook"]["id"]],
        },
    )
    async with _evaluating(env["settings"], store, clock, "solo") as ev:
        clock.advance(minutes=2)
        await ev.tick()
        assert receiver.received == []  # muted: the incident is tracked, nobody is told
        got = await (
            await env["api"].get(f"/v1/alerts/rules/{r['id']}", headers={"Authorization": env["key"]})
        ).json()
        assert got["state"]["status"] == "firing"
        await post(store, BOT, clock.now)
        clock.advance(seconds=1)
        await ev.tick()
        assert receiver.received == []  # nor of its end

        resp = await env["api"].patch(
            f"/v1/alerts/rules/{r['id']}",
            json={"muted": False, "minIntervalMinutes": 30},
            headers={"Authorization": env["key"]},
        )
        assert resp.status == 200, await resp.text()
        clock.advance(minutes=2)
        await ev.tick()
        assert _events(receiver) == ["alert.opened"]
        await post(store, BOT, clock.now)
        clock.advance(seconds=1)
        await ev.tick()
        assert _events(receiver) == ["alert.opened", "alert.resolved"]
        # A second outage within the 30 minutes: tracked, not announced (nor its end).
        clock.advance(minutes=2)
        await ev.tick()
        await post(store, BOT, clock.now)
        clock.advance(seconds=1)
        await ev.tick()
        assert _events(receiver) == ["alert.opened", "alert.resolved"]
        # Past the interval, the next outage is announced again.
        clock.advance(minutes=31)
        await ev.tick()
        assert _events(receiver) == ["alert.opened", "alert.resolved", "alert.opened"]


async def test_quiet_hours_hold_notifications_until_they_end(env, store, redis, receiver):
    clock = Clock()  # 2026-05-28 20:26:40 UTC
    await post(store, BOT, clock.now)
    quiet = {"start": "20:00", "end": "21:00", "timezone": "UTC"}
    body = {"name": "down", "bot": BOT, "kind": "offline", "minutes": 1, "quietHours": quiet}
    await rule(env["api"], env["key"], body | {"destinations": [env["webhook"]["id"]]})
    async with _evaluating(env["settings"], store, clock, "solo") as ev:
        clock.advance(minutes=2)
        await ev.tick()
        clock.advance(minutes=30)  # 20:58:40: still quiet
        await ev.tick()
        assert receiver.received == []
        clock.advance(minutes=2)  # 21:00:40
        await ev.tick()
        assert _events(receiver) == ["alert.opened"]


def test_quiet_hours_defer_to_their_end_across_midnight_and_time_zones():
    quiet = QuietHours(start="22:00", end="07:00", timezone="Europe/Berlin")
    # 2026-01-10 23:30 in Berlin (UTC+1) = 22:30 UTC -> until 07:00 Berlin = 06:00 UTC next day.
    inside = 1_768_084_200_000
    assert quiet_until(quiet, inside) == 1_768_111_200_000
    noon = 1_768_046_400_000  # 2026-01-10 12:00 UTC
    assert quiet_until(quiet, noon) == noon
    assert quiet_until(None, noon) == noon


async def test_signature_verifies_with_the_documented_snippet(env, store, redis, receiver):
    clock = Clock()
    await post(store, BOT, clock.now)
    await rule(
        env["api"],
        env["key"],
        {"name": "down", "bot": BOT, "kind": "offline", "minutes": 1, "destinations": [env["webhook"]["id"]]},
    )
    async with _evaluating(env["settings"], store, clock, "solo") as ev:
        clock.advance(minutes=1, seconds=1)
        await ev.tick()
    got = receiver.received[0]
    secret = env["webhook"]["secret"]
    assert secret.startswith("whsec_")
    # The verification snippet from docs/alerts.md, run as a receiver would.
    snippet = re.search(r"```python verify\n(.*?)```", DOCS.read_text(), re.S).group(1)
    scope: dict = {}
    exec(snippet, scope)
    verify = scope["verify"]
    headers = {k.lower(): v for k, v in got.headers.items()}
    assert verify(secret, headers, got.body, now=clock.now // 1000)
    assert not verify(secret, headers, got.body.replace(b"offline", b"online"), now=clock.now // 1000)
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    assert not verify(other, headers, got.body, now=clock.now // 1000)
    assert not verify(secret, headers, got.body, now=clock.now // 1000 + 3600)  # replayed later
    # And by hand, the Standard Webhooks way.
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + got.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"


# Discord's Execute Webhook JSON params and Embed object, as documented
# (developers: resources/webhook#execute-webhook, resources/message#embed-object).
_EXECUTE_FIELDS = {
    "content",
    "username",
    "avatar_url",
    "tts",
    "embeds",
    "allowed_mentions",
    "components",
    "files",
    "payload_json",
    "attachments",
    "flags",
    "thread_name",
    "applied_tags",
    "poll",
}
_EMBED_FIELDS = {
    "title",
    "type",
    "description",
    "url",
    "timestamp",
    "color",
    "footer",
    "image",
    "thumbnail",
    "video",
    "provider",
    "author",
    "fields",
}
_AUTHOR_FIELDS = {"name", "url", "icon_url", "proxy_icon_url"}
_FOOTER_FIELDS = {"text", "icon_url", "proxy_icon_url"}
_FIELD_FIELDS = {"name", "value", "inline"}


def _check_discord(body: dict) -> None:
    assert set(body) <= _EXECUTE_FIELDS
    assert body["allowed_mentions"] == {"parse": []}
    assert 1 <= len(body["embeds"]) <= 10
    for embed in body["embeds"]:
        assert set(embed) <= _EMBED_FIELDS
        assert len(embed["title"]) <= 256 and len(embed.get("description", "")) <= 4096
        assert isinstance(embed["color"], int) and 0 <= embed["color"] <= 0xFFFFFF
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$", embed["timestamp"])
        assert set(embed["author"]) <= _AUTHOR_FIELDS and len(embed["author"]["name"]) <= 256
        assert set(embed["footer"]) <= _FOOTER_FIELDS and len(embed["footer"]["text"]) <= 2048
        assert set(embed["thumbnail"]) <= {"url", "proxy_url", "height", "width"}
        assert len(embed["fields"]) <= 25
        for f in embed["fields"]:
            assert set(f) <= _FIELD_FIELDS and 0 < len(f["name"]) <= 256 and 0 < len(f["value"]) <= 1024
        total = len(embed["title"]) + len(embed.get("description", "")) + len(embed["footer"]["text"])
        total += len(embed["author"]["name"]) + sum(len(f["name"]) + len(f["value"]) for f in embed["fields"])
        assert total <= 6000


async def test_discord_payload_matches_the_webhook_api(env, store, redis, receiver):
    clock = Clock()
    await post(store, BOT, clock.now)
    await rule(
        env["api"],
        env["key"],
        {"name": "down", "bot": BOT, "kind": "offline", "minutes": 1, "destinations": [env["discord"]["id"]]},
    )
    async with _evaluating(env["settings"], store, clock, "solo") as ev:
        clock.advance(minutes=1, seconds=1)
        await ev.tick()
        await post(store, BOT, clock.advance(minutes=4))
        clock.advance(seconds=1)
        await ev.tick()
    opened, resolved = (x.json() for x in receiver.received)
    for body in (opened, resolved):
        _check_discord(body)
        embed = body["embeds"][0]
        assert embed["url"] == f"https://stats.example.com/bots/{BOT}"
        assert embed["author"]["name"] == "Pulse Bot"
        assert (
            embed["thumbnail"]["url"]
            == embed["author"]["icon_url"]
            == "https://cdn.discordapp.com/avatars/1/abc.png"
        )
    assert opened["embeds"][0]["title"] == "Pulse Bot is offline"
    assert {"name": "State", "value": "Offline", "inline": True} in opened["embeds"][0]["fields"]
    assert resolved["embeds"][0]["title"] == "Pulse Bot is back online"
    assert {"name": "Outage", "value": "5 min", "inline": True} in resolved["embeds"][0]["fields"]
    assert receiver.received[0].headers["Content-Type"] == "application/json"


def test_discord_payload_bounds_hold_for_long_names():
    from botpulse.schemas.alerts import Job, Rule

    rule_ = Rule(
        id="alr_1",
        account="a",
        bot="1",
        name="r" * 100,
        kind="threshold",
        destinations=["d"],
        metric="apiPing",
        op="above",
        value=1.0,
        minutes=5,
    )
    job = Job(
        id="j",
        rule="alr_1",
        destination="d",
        incident="inc_1",
        event="opened",
        bot="1",
        since=0,
        until=None,
        detail="x" * 5000,
        value=2.0,
        created=1,
    )
    body = payloads.discord_body(rule_, job, payloads.BotInfo("1", "@everyone " * 40, None, "https://x"))
    body["embeds"][0].setdefault("thumbnail", {})
    _check_discord(body)


async def test_bot_latest_gives_the_evaluator_each_bots_newest_post_and_is_backfilled(store):
    from botpulse.runtime.migrations import available, render

    await post(store, "a", T0)
    await post(store, "a", T0 + 5_000)
    await post(store, "a", T0 - 60_000)  # late, older: does not move it back
    await post(store, "b", T0 + 1_000)
    sql = "SELECT bot_id, toUnixTimestamp64Milli(max(last_ts)) FROM bot_latest GROUP BY bot_id ORDER BY 1"
    assert await store.query(sql) == [("a", T0 + 5_000), ("b", T0 + 1_000)]
    # The evaluator reads main's bot_latest (0033): an install that had posts before it gets
    # last_ts from 0033's back-fill of the roll-up, so its offline rules judge the true silence.
    await store.command("TRUNCATE TABLE bot_latest")
    (migration,) = [m for m in available() if m.version == "0033_keys_limits"]
    statements = render(migration.sql, cluster=None, database=store.database, ttl_days=400)
    backfill = [s for s in statements if s.startswith("INSERT")]
    assert len(backfill) == 1
    await store.command(backfill[0])
    assert await store.query(sql) == [("a", T0 + 5_000), ("b", T0 + 1_000)]


async def test_a_rule_stays_quiet_once_its_bot_changed_hands(env, store, redis, receiver):
    clock = Clock()
    await post(store, BOT, clock.now)
    await rule(
        env["api"],
        env["key"],
        {"name": "down", "bot": BOT, "kind": "offline", "minutes": 1, "destinations": [env["webhook"]["id"]]},
    )
    other, _ = await account(env["api"], "new owner")
    await bot(store, redis, other, BOT)  # the operator moved the bot to another account
    async with _evaluating(env["settings"], store, clock, "solo") as ev:
        clock.advance(minutes=5)
        await ev.tick()
        assert receiver.received == []


async def test_a_delivery_claimed_by_an_evaluator_that_died_is_sent_by_another(env, store, redis, receiver):
    from botpulse.schemas.alerts import JOBS_KEY, claim_key

    clock = Clock()
    await post(store, BOT, clock.now)
    await rule(
        env["api"],
        env["key"],
        {"name": "down", "bot": BOT, "kind": "offline", "minutes": 1, "destinations": [env["webhook"]["id"]]},
    )
    async with _two_evaluators(env["settings"], store, clock) as (a, b):
        clock.advance(minutes=2)
        await a.acquire()
        await a.evaluate(list((await a.rules()).values()))
        # a claims the due notification with the real claim script, then dies before sending.
        claimed = await a.deliverer._claim(keys=[JOBS_KEY], args=[clock(), 20, 300, "a", claim_key("")])
        assert len(claimed) == 1
        await b.tick()
        assert receiver.received == []  # still a's
        # The claim lapses: its key in real time (a Redis TTL), and the job's due time, which
        # the claim pushed on by the claim time, in the evaluators' clock.
        await asyncio.sleep(0.4)
        clock.advance(seconds=1)
        await b.tick()
        assert _events(receiver) == ["alert.opened"]
        await b.tick()
        assert len(receiver.received) == 1
