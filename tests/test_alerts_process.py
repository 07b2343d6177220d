"""`botpulse alerts` as its own process: it takes every slot when alone, and on SIGTERM finishes
its round, gives the slots back and exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import redis.asyncio as aioredis

from botpulse.runtime.processes import spawn_child
from botpulse.schemas.alerts import ALERT_SLOTS, MEMBERS_KEY, slot_key


async def _held(redis) -> set[bytes]:  # type: ignore[no-untyped-def]
    values = await redis.mget([slot_key(s) for s in range(ALERT_SLOTS)])
    return {v for v in values if v is not None}


async def test_alerts_process_holds_the_slots_and_hands_them_over_on_sigterm(settings, redis, tmp_path):
    env = dict(
        os.environ,
        REDIS_URL=settings.redis_url,
        CLICKHOUSE_URL=f"chdb://{tmp_path / 'clickhouse'}",  # its own engine: one per process
        BOTPULSE_DATA_DIR=str(tmp_path),
        BOTPULSE_ALERTS_INTERVAL_S="0.2",
        BOTPULSE_LOG_LEVEL="warning",
    )
    proc = spawn_child(
        [sys.executable, "-m", "botpulse", "alerts"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            members = await redis.zrange(MEMBERS_KEY, 0, -1)
            if len(members) == 1 and await _held(redis) == set(members):
                break
            await asyncio.sleep(0.1)
        members = await redis.zrange(MEMBERS_KEY, 0, -1)
        assert len(members) == 1, proc.stderr.read() if proc.poll() is not None else "no member"
        assert all(v == members[0] for v in await redis.mget([slot_key(s) for s in range(ALERT_SLOTS)]))
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert await _held(redis) == set()
        assert await redis.zcard(MEMBERS_KEY) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def test_a_killed_evaluator_s_share_is_taken_over_within_the_lease(
    make_settings, store, redis, tmp_path
):
    """A real `botpulse alerts` holds half the slots; SIGKILL (no clean-up runs); the evaluator
    left takes its slots within BOTPULSE_ALERTS_LEASE_S and judges the bot that lived there."""
    from alerts_fixtures import (
        Clock,
        Receiver,
        alert_settings,
        api_client,
        destination,
        owner_with_bot,
        post,
        rule,
    )

    from botpulse.alerts.evaluator import Evaluator, slot_of

    settings = alert_settings(make_settings, alerts_lease_s=2.0)
    env = dict(
        os.environ,
        REDIS_URL=settings.redis_url,
        CLICKHOUSE_URL=f"chdb://{tmp_path / 'clickhouse'}",
        BOTPULSE_DATA_DIR=str(tmp_path),
        BOTPULSE_ALERTS_INTERVAL_S="0.2",
        BOTPULSE_ALERTS_LEASE_S="2",
        BOTPULSE_LOG_LEVEL="warning",
    )
    receiver = await Receiver().start()
    client = aioredis.Redis.from_url(settings.redis_url)
    clock = Clock()
    ev = Evaluator(settings, store, client, clock=clock, instance="survivor")
    proc = spawn_child([sys.executable, "-m", "botpulse", "alerts"], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(ev.slots) != ALERT_SLOTS // 2:
            await ev.acquire()
            await asyncio.sleep(0.2)
        assert len(ev.slots) == ALERT_SLOTS // 2, "the process did not take its half"
        theirs = set(range(ALERT_SLOTS)) - ev.slots
        bot_id = next(f"4000{i}" for i in range(10_000) if slot_of(f"4000{i}") in theirs)
        api = await api_client(settings, store)
        _, key = await owner_with_bot(store, redis, bot_id)
        hook = await destination(api, key, "webhook", f"{receiver.url}/hook")
        await post(store, bot_id, clock.now)
        body = {"name": "down", "bot": bot_id, "kind": "offline", "minutes": 1, "destinations": [hook["id"]]}
        await rule(api, key, body)
        await api.close()
        clock.advance(minutes=2)
        await ev.tick()
        assert receiver.received == []  # its slot is still leased to the other process

        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed = time.monotonic()
        while not receiver.received:
            assert time.monotonic() - killed < settings.alerts_lease_s + 5, "no take-over"
            await asyncio.sleep(settings.alerts_interval_s)
            await ev.tick()
        assert len(ev.slots) == ALERT_SLOTS
        assert receiver.received[0].json()["bot"]["id"] == bot_id
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        await ev.deliverer.close()
        await client.aclose()
        await receiver.stop()


async def test_the_embedded_evaluator_is_supervised_and_readyz_names_it_while_down(
    make_settings, store, redis
):
    """`botpulse dev` / `query --with-alerts`: the evaluator's task ending (here: cancelled from
    outside, as no Redis or ClickHouse fault ends it) is seen by the stack's supervisor, reported
    by `/readyz` meanwhile, and the evaluator is started again and takes the slots back."""
    from aiohttp.test_utils import TestClient, TestServer
    from alerts_fixtures import alert_settings

    from botpulse.embedded_alerts import with_embedded_alerts
    from botpulse.query.app import build_app
    from botpulse.supervisor import SUPERVISOR

    app = with_embedded_alerts(build_app(alert_settings(make_settings), store))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:

        def evaluators() -> list[asyncio.Task[None]]:
            return [t for t in asyncio.all_tasks() if t.get_name() == "alerts" and not t.done()]

        async def until(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
            deadline = time.monotonic() + 20.0  # a bound on waiting, never a speed assertion
            while not await predicate():
                assert time.monotonic() < deadline, what
                await asyncio.sleep(0.05)

        async def slots_held() -> bool:
            return len(await _held(redis)) == 1

        await until(slots_held, "the embedded evaluator takes the slots")
        (first,) = evaluators()
        first.cancel()

        async def reported() -> bool:
            resp = await client.get("/readyz")
            return resp.status == 503 and "alerts is down" in (await resp.text())

        await until(reported, "/readyz names the evaluator while it is down")

        async def back() -> bool:
            supervisor = app[SUPERVISOR]
            return supervisor.restarts.get("alerts") == 1 and "alerts" not in supervisor.down

        await until(back, "the supervisor restarts the evaluator")
        (second,) = evaluators()
        assert second is not first
        await redis.delete(*[slot_key(s) for s in range(ALERT_SLOTS)], MEMBERS_KEY)
        await until(slots_held, "the restarted evaluator takes the slots again")
        assert (await client.get("/readyz")).status == 200
