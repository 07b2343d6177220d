"""The chaos suite's parts and its checker.

`Cluster`: a valkey-server of its own (AOF, `appendfsync everysec`, on a free port, restartable on
the same port and directory), `botpulse gateway` subprocesses, and worker processes
(tests/chaos/worker_driver.py: the real Worker). On embedded chDB one worker process runs every
instance (one engine per process, one process per directory); with
`BOTPULSE_TEST_CLICKHOUSE_URL=http://…` each instance is a process of its own.

`Load`: a steady stream of custom-event posts in a thread, each with a unique `value1`, every
answer recorded. `report()`: lost = acknowledged - stored, duplicated = count() -
uniqExact(event_id), refused (4xx/503 with `Retry-After`), and every answer that is none of those.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis
import redis.asyncio as aioredis

from botpulse.registry import index
from botpulse.registry.keys import generate_key, hash_key
from botpulse.runtime.embedded import EmbeddedRedis
from botpulse.runtime.processes import free_port, spawn_child
from botpulse.schemas.registry import IndexedBot
from botpulse.schemas.stream import GROUP, batches_key, dead_letter_key, decode_event, stream_key

LONG = os.environ.get("BOTPULSE_TEST_CHAOS_LONG") == "1"
DRIVER = Path(__file__).with_name("worker_driver.py")

# Small batches and a short take-over time, so a killed worker's entries come back within seconds.
WORKER_ENV = {
    "BOTPULSE_BATCH_MS": "100",
    "BOTPULSE_INSERT_TIMEOUT_S": "1",
    "BOTPULSE_CLAIM_IDLE_MS": "2500",
    "BOTPULSE_MAX_DELIVERIES": "5",
}


def span(short: float, long: float) -> float:
    """A duration of the bounded form (`make test`) or of the long one (BOTPULSE_TEST_CHAOS_LONG=1)."""
    return long if LONG else short


class Driver:
    """One worker process, driven over its stdin (see worker_driver.py)."""

    def __init__(self, env: dict[str, str], control: Path, instances: int, log: Path) -> None:
        with open(log, "ab") as out:
            self.proc = spawn_child(
                [sys.executable, str(DRIVER), str(control), str(instances)],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=out,
                bufsize=0,
            )
        self._buffer = b""
        self.command("ping", within_s=120)

    def command(self, line: str, within_s: float = 60) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line.encode() + b"\n")
        deadline = time.monotonic() + within_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            assert left > 0, f"worker driver did not answer {line!r}"
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, f"worker driver exited ({self.proc.poll()}) on {line!r}"
                self._buffer += chunk
        reply, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(reply)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        """Graceful: stdin closed, every instance flushes, acknowledges and retires."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Cluster:
    def __init__(self, root: Path, clickhouse_url: str | None) -> None:
        self.root = root
        self.server_mode = bool(clickhouse_url and clickhouse_url.startswith("http"))
        self.clickhouse_url = clickhouse_url if self.server_mode else f"chdb://{root / 'chdb'}"
        self.database = f"chaos_{secrets.token_hex(4)}"
        self.control = root / "control"
        self.control.mkdir(parents=True, exist_ok=True)
        self.redis_server = EmbeddedRedis(root / "redis").start()
        self.port = self.redis_server.port
        self.redis_url = self.redis_server.url
        self.admin = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        self.gateways: dict[str, subprocess.Popen[bytes]] = {}
        self.drivers: list[Driver] = []
        self.worker_overrides: dict[str, str] = {}

    # --- environment --------------------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOTPULSE_")}
        env.update(
            REDIS_URL=self.redis_url,
            CLICKHOUSE_URL=self.clickhouse_url,
            BOTPULSE_CLICKHOUSE_DATABASE=self.database,
            BOTPULSE_DATA_DIR=str(self.root / "data"),
            BOTPULSE_ENV="production",
            BOTPULSE_LOG_FORMAT="json",
            BOTPULSE_LOG_LEVEL="info",
            PYTHONPATH=str(Path(__file__).resolve().parents[2]),
        )
        env.update(extra)
        return env

    # --- Redis --------------------------------------------------------------------------------
    def redis_stop(self, sig: signal.Signals) -> None:
        proc = self.redis_server.proc
        assert proc is not None
        proc.send_signal(sig)
        proc.wait(15)
        self.redis_server.proc = None

    def redis_start(self) -> None:
        self.redis_server = EmbeddedRedis(self.root / "redis", port=self.port).start(timeout=30)

    def fsync(self) -> None:
        """What was written so far is on disk (the fixtures' own writes: accounts, bots)."""
        self.admin.execute_command("WAITAOF", 1, 0, 5000)

    # --- gateway ------------------------------------------------------------------------------
    def gateway(self, **settings: str) -> str:
        """A `botpulse gateway` with these settings (env names without BOTPULSE_), started once."""
        key = json.dumps(settings, sort_keys=True)
        for url, proc in self.gateways.items():
            if getattr(proc, "settings_key", None) == key and proc.poll() is None:
                return url
        port = free_port()
        env = self.env(
            BOTPULSE_CUSTOM_RATE_PER_MIN="10000000",
            **{f"BOTPULSE_{k.upper()}": v for k, v in settings.items()},
        )
        with open(self.root / f"gateway-{port}.log", "ab") as out:
            proc = spawn_child(
                [sys.executable, "-m", "botpulse", "gateway", "--port", str(port)],
                env=env,
                stdout=out,
                stderr=out,
            )
        proc.settings_key = key  # type: ignore[attr-defined]
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"gateway exited; see {self.root}/gateway-{port}.log"
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/healthz", timeout=1):
                break
            assert time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.1)
        self.gateways[url] = proc
        return url

    # --- workers ------------------------------------------------------------------------------
    def workers(self, n: int, **overrides: str) -> None:
        """Exactly `n` worker instances, with these settings (restarting them if they change)."""
        if overrides != self.worker_overrides:
            self.stop_workers()
            self.worker_overrides = overrides
        if not self.drivers:
            self._spawn(n)
        else:
            self.scale(n)

    def _spawn(self, n: int) -> None:
        env = self.env(
            **{**WORKER_ENV, **{f"BOTPULSE_{k.upper()}": v for k, v in self.worker_overrides.items()}}
        )
        log = self.root / "workers.log"
        if self.server_mode:
            self.drivers += [Driver(env, self.control, 1, log) for _ in range(n)]
        else:
            self.drivers = [Driver(env, self.control, n, log)]

    def scale(self, n: int) -> None:
        if self.server_mode:
            while len(self.drivers) < n:
                self._spawn(1)
            while len(self.drivers) > n:
                self.drivers.pop().stop()
        else:
            assert self.drivers[0].command(f"scale {n}")["instances"] == n

    def kill_worker(self) -> None:
        """SIGKILL a worker process: against a server one of several (the others keep going);
        on chDB the one process holding every instance."""
        self.drivers.pop(secrets.randbelow(len(self.drivers))).kill()

    def restart_workers(self, n: int) -> None:
        """Back to `n` instances after a kill (a new process, as an orchestrator would start)."""
        if self.server_mode:
            self.scale(n)
        else:
            self._spawn(n)

    def stop_workers(self) -> None:
        for driver in self.drivers:
            driver.stop()
        self.drivers = []

    def deaths(self) -> list[str]:
        """Worker instances that exited on their own (a fault must never kill a worker)."""
        return [d for driver in self.drivers for d in driver.command("ping")["deaths"]]

    def fault(self, name: str, on: bool) -> None:
        path = self.control / name
        if on:
            path.touch()
        else:
            path.unlink(missing_ok=True)

    def count(self, bot: str) -> dict[str, Any]:
        return self.drivers[0].command(f"count {bot}", within_s=120)

    # --- state --------------------------------------------------------------------------------
    def new_bot(self) -> tuple[str, str]:
        bot = str(10**17 + secrets.randbelow(9 * 10**17))
        account, key = "acc_" + secrets.token_hex(8), generate_key()

        async def put() -> None:
            client = aioredis.Redis.from_url(self.redis_url)
            try:
                await index.put_account_key(client, account, hash_key(key), None)
                await index.put_bot(client, IndexedBot(bot, account, "Chaos", False, 10))
                await client.set(index.READY_KEY, "1")
            finally:
                await client.aclose()

        asyncio.run(put())
        self.fsync()
        return bot, key

    def backlog(self) -> int | None:
        """Entries not stored yet (lag + pending) plus batch records; None while Redis is away."""
        try:
            groups = self.admin.xinfo_groups(stream_key(0))
            group = next((g for g in groups if g["name"] == GROUP.encode()), None)
            if group is None:
                return self.admin.xlen(stream_key(0))
            return int(group["pending"]) + int(group["lag"] or 0) + self.admin.hlen(batches_key(0))
        except redis.RedisError:
            return None

    def dead_letters(self, bot: str) -> list[str]:
        """value1 of each dead letter of this bot."""
        out = []
        for _, fields in self.admin.xrange(dead_letter_key(0)):
            event = decode_event(fields[b"e"])
            if event.bot_id == bot:
                out.append(getattr(event.payload, "value1", None))
        return out

    def close(self) -> None:
        for proc in self.gateways.values():
            proc.terminate()
        for driver in self.drivers:
            driver.stop()
        for proc in self.gateways.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        with contextlib.suppress(Exception):
            self.admin.close()
        self.redis_server.stop()


@dataclass
class Answer:
    value: str
    status: int  # 0: no HTTP answer
    retry_after: str | None
    reason: str | None
    at: float  # monotonic time of the answer
    error: str | None = None


@dataclass
class Load:
    """Posts `rate` custom events per second to one bot until stopped; each answer recorded."""

    url: str
    bot: str
    key: str
    prefix: str
    rate: float = 40.0
    answers: list[Answer] = field(default_factory=list)
    poison_every: int = 0  # every n-th post carries a poison value1 (see worker_driver.py)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._n = 0

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> Load:
        self._stop.set()
        self._thread.join(120)
        assert not self._thread.is_alive(), "the load did not stop"
        return self

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            tasks: set[asyncio.Task[None]] = set()
            gate = asyncio.Semaphore(32)
            next_at = time.monotonic()
            while not self._stop.is_set():
                await gate.acquire()
                task = asyncio.create_task(self._post(session, gate))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_at += 1 / self.rate
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if tasks:
                await asyncio.wait(tasks)

    async def _post(self, session: aiohttp.ClientSession, gate: asyncio.Semaphore) -> None:
        self._n += 1
        poison = self.poison_every and self._n % self.poison_every == 0
        value = f"{'poison-' if poison else ''}{self.prefix}-{self._n}"
        try:
            async with session.post(
                f"{self.url}/v1/bot/{self.bot}/custom",
                json={"type": "chaos", "value1": value},
                headers={"Authorization": self.key},
            ) as resp:
                reason = None
                if resp.status != 200:
                    with contextlib.suppress(Exception):
                        reason = (await resp.json()).get("reason") or (await resp.json()).get("message")
                self.answers.append(
                    Answer(value, resp.status, resp.headers.get("Retry-After"), reason, time.monotonic())
                )
        except Exception as exc:
            self.answers.append(Answer(value, 0, None, None, time.monotonic(), repr(exc)))
        finally:
            gate.release()

    def acked(self) -> set[str]:
        return {a.value for a in self.answers if a.status == 200}

    def refused(self) -> list[Answer]:
        return [a for a in self.answers if a.status in (429, 503) and a.retry_after]

    def bad(self) -> list[Answer]:
        """Answers that are neither a success nor a clear refusal: a 500, a 503 without
        Retry-After, no answer at all."""
        return [a for a in self.answers if a.status != 200 and not (a.status in (429, 503) and a.retry_after)]


@dataclass
class Report:
    scenario: str
    acknowledged: int
    stored: int
    lost: int
    duplicated: int
    refused: int
    bad: int
    lost_values: list[str]
    refusal_reasons: dict[str, int]

    def line(self) -> str:
        return (
            f"[chaos] {self.scenario}: acknowledged {self.acknowledged}, stored {self.stored}, "
            f"lost {self.lost}, duplicated {self.duplicated}, refused {self.refused} "
            f"{self.refusal_reasons}, bad answers {self.bad}"
        )


def settle(cluster: Cluster, bot: str, acked: set[str], within_s: float = 90) -> dict[str, Any]:
    """Wait until every acknowledged value is stored and the backlog is empty (or time is up),
    then what ClickHouse holds for the bot."""
    deadline = time.monotonic() + within_s
    counted: dict[str, Any] = {}
    while time.monotonic() < deadline:
        counted = cluster.count(bot)
        if acked <= set(counted["values"]) and cluster.backlog() == 0:
            break
        time.sleep(0.5)
    time.sleep(0.5)  # anything still on its way that would double a row has landed by now
    return cluster.count(bot)


def report(scenario: str, load: Load, counted: dict[str, Any], *, acked: set[str] | None = None) -> Report:
    acked = load.acked() if acked is None else acked
    stored_values = counted["values"]
    lost = sorted(acked - set(stored_values))
    reasons: dict[str, int] = {}
    for a in load.refused():
        reasons[f"{a.status} {a.reason}"] = reasons.get(f"{a.status} {a.reason}", 0) + 1
    result = Report(
        scenario=scenario,
        acknowledged=len(acked),
        stored=len(acked & set(stored_values)),
        lost=len(lost),
        duplicated=counted["rows"] - counted["event_ids"],
        refused=len(load.refused()),
        bad=len(load.bad()),
        lost_values=lost[:20],
        refusal_reasons=reasons,
    )
    print(result.line(), flush=True)
    for a in load.bad()[:10]:
        print(f"[chaos]   bad answer: {a}", flush=True)
    return result
