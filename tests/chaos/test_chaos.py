"""The chaos suite (issue #13): every fault under steady load, counted like Jepsen counts a queue.

Each scenario posts custom events with a unique `value1` through a real `botpulse gateway`
process into a real valkey, drained by real workers (tests/chaos/worker_driver.py), injects its
fault, lets the pipeline settle and reads ClickHouse: lost = acknowledged - stored must be 0 (the
Redis SIGKILL scenario: only posts acknowledged within the last fsync window may go, and the
checker reports them), duplicated = count() - uniqExact(event_id) must be 0, every refusal a 4xx
or 503 with `Retry-After`, no worker instance may die of the fault, no valid post may end in the
dead letters. Each prints `[chaos] <scenario>: acknowledged …, stored …, lost …, duplicated …,
refused …` (`pytest -s` shows it).

Bounded by default (the whole module in about three minutes on two cores); set
`BOTPULSE_TEST_CHAOS_LONG=1` for the long form (kill -9 every 5 s for 60 s, faults held for minutes).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import redis
from harness import LONG, Cluster, Load, Report, report, settle, span

from botpulse.runtime.embedded import EmbeddedRedis

RATE = 40.0  # posts per second: steady, well inside what a loaded 2-core machine serves
pytestmark = pytest.mark.timeout(1800 if LONG else 420)


def start(cluster: Cluster, scenario: str, *, workers: int = 2, **gateway: str) -> Load:
    cluster.workers(workers)
    bot, key = cluster.new_bot()
    return Load(cluster.gateway(**gateway), bot, key, scenario, rate=RATE).start()


def finish(cluster: Cluster, scenario: str, load: Load, deaths_before: int = 0) -> Report:
    load.stop()
    counted = settle(cluster, load.bot, load.acked())
    result = report(scenario, load, counted)
    assert result.acknowledged > 0
    assert result.bad == 0, [a for a in load.bad()][:5]
    assert result.duplicated == 0
    assert cluster.dead_letters(load.bot) == [], "valid posts ended in the dead letters"
    deaths = cluster.deaths()[deaths_before:]
    assert deaths == [], f"worker instances died of the fault: {deaths}"
    return result


def wait_for(check, within_s: float, what: str):  # type: ignore[no-untyped-def]
    """The first truthy result of `check()`."""
    deadline = time.monotonic() + within_s
    while not (result := check()):
        assert time.monotonic() < deadline, f"not reached within {within_s} s: {what}"
        time.sleep(0.2)
    return result


def status(cluster: Cluster) -> str:
    """What `botpulse status` prints for this cluster."""
    return subprocess.run(
        [sys.executable, "-m", "botpulse", "status"],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def accepted_after(load: Load, moment: float) -> int:
    return sum(1 for a in load.answers if a.status == 200 and a.at > moment)


def test_worker_kill9_repeatedly_and_scale_1_4_1(cluster: Cluster) -> None:
    load = start(cluster, "worker-crashes", workers=3)
    end = time.monotonic() + span(0, 60)
    kills = 0
    while kills < 3 or time.monotonic() < end:  # the long form: every 5 s for 60 s
        time.sleep(span(2, 5))
        cluster.kill_worker()  # on chDB: the process of all three instances
        kills += 1
        cluster.restart_workers(3)
    for n in (1, 4, 1):
        cluster.scale(n)
        time.sleep(span(2, 10))
    result = finish(cluster, f"worker-crashes ({kills} x kill -9, then 1 -> 4 -> 1)", load)
    assert result.lost == 0, result.lost_values


def test_redis_sigterm_restart_loses_and_doubles_nothing(cluster: Cluster) -> None:
    load = start(cluster, "redis-sigterm")
    deaths = len(cluster.deaths())
    time.sleep(span(2, 10))
    cluster.redis_stop(signal.SIGTERM)
    down = time.monotonic()
    time.sleep(span(1, 5))
    cluster.redis_start()
    wait_for(lambda: accepted_after(load, down) > 0, 30, "posts accepted after the restart")
    time.sleep(span(2, 10))
    result = finish(cluster, "redis-sigterm", load, deaths)
    assert result.lost == 0, result.lost_values
    assert result.refused > 0  # while it was down: 503 + Retry-After, not errors


def test_redis_sigkill_loss_is_bounded_by_fsync_and_reported(cluster: Cluster) -> None:
    load = start(cluster, "redis-sigkill")
    deaths = len(cluster.deaths())
    time.sleep(span(3, 10))
    killed = time.monotonic()
    cluster.redis_stop(signal.SIGKILL)
    time.sleep(span(1, 5))
    cluster.redis_start()
    wait_for(lambda: accepted_after(load, killed) > 0, 30, "posts accepted after the restart")
    time.sleep(span(2, 10))
    result = finish(cluster, "redis-sigkill", load, deaths)
    # appendfsync everysec: what Redis acknowledged in the last second before the kill (plus the
    # fsync in flight) may be gone. Anything older is not allowed to go.
    window = 2.0
    in_window = {a.value for a in load.answers if a.status == 200 and killed - window <= a.at <= killed}
    lost = set(result.lost_values) if result.lost <= len(result.lost_values) else None
    print(
        f"[chaos]   redis-sigkill: lost {result.lost} of {len(in_window)} acknowledged in the "
        f"{window:.0f} s before the kill (appendfsync everysec)",
        flush=True,
    )
    assert result.lost <= len(in_window)
    if lost is not None:
        assert lost <= in_window, lost - in_window


def test_redis_out_of_memory_refuses_with_503_and_keeps_draining(cluster: Cluster) -> None:
    load = start(cluster, "redis-oom")
    deaths = len(cluster.deaths())
    time.sleep(span(2, 10))
    used = int(cluster.admin.info("memory")["used_memory"])
    cluster.admin.config_set("maxmemory", str(used))
    try:
        wait_for(lambda: any(a.status == 503 for a in load.answers), 15, "a 503 while Redis is full")
        assert "the gateway refuses posts (503)" in status(cluster)  # memory against its limit
        # The workers keep draining while Redis is full: the backlog goes to zero.
        wait_for(lambda: cluster.backlog() == 0, span(20, 60), "the workers drain a full Redis")
        time.sleep(span(1, 20))
    finally:
        cluster.admin.config_set("maxmemory", "0")
    freed = time.monotonic()
    wait_for(lambda: accepted_after(load, freed) > 0, 15, "posts accepted once memory is free")
    time.sleep(span(1, 5))
    result = finish(cluster, "redis-oom", load, deaths)
    assert result.lost == 0, result.lost_values
    assert any("memory" in r or "oom" in r for r in result.refusal_reasons), result.refusal_reasons


def test_redis_readonly_failover_and_back(cluster: Cluster) -> None:
    replica = EmbeddedRedis(cluster.root / "replica").start()
    peer = redis.Redis.from_url(replica.url, socket_timeout=5)
    try:
        peer.replicaof("127.0.0.1", cluster.port)
        linked = lambda client: client.info("replication").get("master_link_status") == "up"  # noqa: E731
        wait_for(lambda: linked(peer), 30, "the replica in sync")
        load = start(cluster, "redis-readonly")
        deaths = len(cluster.deaths())
        time.sleep(span(2, 10))
        cluster.admin.execute_command("FAILOVER")  # ours becomes a replica: READONLY to every write
        wait_for(lambda: cluster.admin.info("replication")["role"] == "slave", 30, "failover")
        wait_for(lambda: any(a.reason == "redis_readonly" for a in load.answers), 15, "a READONLY 503")
        time.sleep(span(3, 30))
        wait_for(lambda: linked(cluster.admin), 30, "ours in sync with the new primary")
        peer.execute_command("FAILOVER")  # and back
        wait_for(lambda: cluster.admin.info("replication")["role"] == "master", 30, "failing back")
        back = time.monotonic()
        wait_for(lambda: accepted_after(load, back) > 0, 15, "posts accepted after failing back")
        time.sleep(span(2, 10))
        result = finish(cluster, "redis-readonly", load, deaths)
        assert result.lost == 0, result.lost_values
    finally:
        peer.close()
        replica.stop()
        cluster.admin.execute_command("REPLICAOF", "NO", "ONE")


def test_clickhouse_unavailable_backlog_grows_to_the_limit_then_drains(cluster: Cluster) -> None:
    high_water = 300
    load = start(cluster, "clickhouse-down", stream_high_water=str(high_water))
    deaths = len(cluster.deaths())
    time.sleep(span(2, 5))
    cluster.fault("clickhouse-down", True)
    down = time.monotonic()
    try:
        wait_for(
            lambda: any(a.status == 503 and a.at > down for a in load.answers),
            span(40, 60),
            "503 at the admission limit",
        )
        limit = min(a.at for a in load.answers if a.status == 503 and a.at > down)
        # Until the limit the gateway kept answering: the backlog grew while nothing was stored.
        backlog = cluster.backlog()
        answered = sum(1 for a in load.answers if a.status == 200 and down < a.at < limit)
        print(
            f"[chaos]   clickhouse-down: {answered} accepted during the outage, "
            f"then 503 at a backlog of {backlog}"
        )
        assert answered > high_water / 4
        assert backlog is not None and backlog >= high_water / 2
        # The operator sees the workers backing off, and why.
        shown = wait_for(
            lambda: "backing off: clickhouse" in (text := status(cluster)) and text, 20, "status shows it"
        )
        print(f"[chaos]   botpulse status during the outage:\n{shown}", flush=True)
        time.sleep(span(1, 120))
    finally:
        cluster.fault("clickhouse-down", False)
    result = finish(cluster, "clickhouse-down", load, deaths)
    assert result.lost == 0, result.lost_values
    assert set(result.refusal_reasons) <= {"503 worker_lag", "503 backlog_full"}, result.refusal_reasons


def test_poison_entries_end_in_dead_letters_and_replay_stores_them_once(cluster: Cluster) -> None:
    cluster.workers(2, max_deliveries="2")
    deaths = len(cluster.deaths())
    cluster.fault("poison", True)
    bot, key = cluster.new_bot()
    load = Load(cluster.gateway(), bot, key, "poison", rate=RATE, poison_every=10).start()
    try:
        time.sleep(span(4, 30))
        load.stop()
        poison = {v for v in load.acked() if v.startswith("poison-")}
        assert poison
        wait_for(lambda: len(cluster.dead_letters(bot)) >= len(poison), 90, "poison in the dead letters")
        time.sleep(1)
        assert sorted(cluster.dead_letters(bot)) == sorted(poison)  # exactly the poison ones
    finally:
        cluster.fault("poison", False)
    out = subprocess.run(
        [sys.executable, "-m", "botpulse", "dead-letters", "replay", "--all"],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert f"{len(poison)} dead letter(s) replayed" in out, out
    counted = settle(cluster, bot, load.acked())
    result = report("poison (re-driven)", load, counted)
    assert result.lost == 0, result.lost_values
    assert result.duplicated == 0
    assert all(counted["values"].get(v) == 1 for v in poison), {v: counted["values"].get(v) for v in poison}
    assert result.bad == 0
    assert cluster.deaths()[deaths:] == []
