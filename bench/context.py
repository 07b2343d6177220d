"""What every phase shares: the run's work directory, child environments, fresh Redis servers,
seeding, load runs, and the figures collected so far."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from botpulse.bench import spy, wrk
from botpulse.bench.loadgen import DEFAULT_PATH, Result
from botpulse.bench.procs import Service
from botpulse.bench.seed import Seeded, Spec
from botpulse.bench.sizes import Sizes
from botpulse.bench.spy import Spy
from botpulse.runtime.embedded import EmbeddedRedis
from botpulse.runtime.processes import free_port

REPO = Path(__file__).resolve().parents[1]

# Raised for every run (and reported): the defaults (1 stats post per 30 s per bot, burst 3)
# would turn a load test into a rate-limiter test, and the high-water mark would answer 503
# once the undrained stream of the gateway phase grows.
RAISED_LIMITS = {
    "BOTPULSE_STATS_RATE_INTERVAL_S": "0.0001",
    "BOTPULSE_STATS_RATE_BURST": "1000000000",
    "BOTPULSE_CUSTOM_RATE_PER_MIN": "1000000000",
    "BOTPULSE_STREAM_HIGH_WATER": "1000000000",
    "BOTPULSE_ACCOUNT_POSTS_PER_MIN": "10000000",
    "BOTPULSE_CUSTOM_EVENT_TYPES": "1000",
}

# Fixed-rate runs: enough connections that the rate holds even when answers take ~60 ms.
PACED_CONNECTIONS = 128

STATS_BODY = json.dumps(
    {
        "guilds": 1234,
        "users": 567890,
        "shards": 2,
        "apiPing": 41.5,
        "ramUsage": 52428800,
        "ramTotal": 1073741824,
        "cpu": 12.5,
        "bandwidth": 1000,
    },
    separators=(",", ":"),
)


class Figure(msgspec.Struct, omit_defaults=True):
    """One reported number; `ok` is None when there is no target or no figure."""

    key: str
    label: str
    value: float | None
    unit: str
    target: str = ""
    ok: bool | None = None
    note: str = ""


class Bench:
    def __init__(self, sizes: Sizes, workdir: Path, generator: str, echo: bool = True) -> None:
        self.sizes = sizes
        self.workdir = workdir
        self.generator = generator
        self.echo = echo
        self.figures: list[Figure] = []
        self.raw: dict[str, Any] = {}
        self.peak_rss: dict[str, float] = {}
        self.profiles: dict[str, Path] = {}  # name -> pyinstrument text report
        self._redis: list[EmbeddedRedis] = []

    # --- output -------------------------------------------------------------------------------
    def say(self, message: str) -> None:
        if self.echo:
            print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def figure(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def note_rss(self, name: str, service: Service) -> None:
        """Record the peak RSS of a service's processes (call while they still run)."""
        for i, mb in enumerate(sorted(service.peak_rss().values(), reverse=True)):
            label = name if i == 0 else f"{name}#{i + 1}"
            self.peak_rss[label] = max(self.peak_rss.get(label, 0.0), round(mb, 1))

    # --- children -----------------------------------------------------------------------------
    def phase_dir(self, phase: str) -> Path:
        path = self.workdir / phase
        path.mkdir(parents=True, exist_ok=True)
        return path

    def env(
        self, phase: str, redis_url: str, clickhouse_url: str | None = None, **extra: str
    ) -> dict[str, str]:
        """A child's environment: only this run's settings, whatever the caller's shell holds."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("BOTPULSE_") and k not in ("CLICKHOUSE_URL", "REDIS_URL")
        }
        env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            REDIS_URL=redis_url,
            CLICKHOUSE_URL=clickhouse_url or f"chdb://{self.phase_dir(phase) / 'clickhouse'}",
            BOTPULSE_DATA_DIR=str(self.phase_dir(phase)),
            BOTPULSE_LOG_LEVEL="warning",
            BOTPULSE_LOG_FORMAT="json",
            **RAISED_LIMITS,
        )
        env.update(extra)
        return env

    def service(
        self, name: str, phase: str, args: list[str], env: dict[str, str], profile: str | None = None
    ) -> Service:
        """Start `python <args>`; with `profile`, under pyinstrument, whose text report becomes
        the run's `<profile>` profile once the service is stopped with SIGINT."""
        if profile:
            out = self.phase_dir(phase) / f"{profile}-profile.txt"
            self.profiles[profile] = out
            args = [
                "-m",
                "pyinstrument",
                "--renderer",
                "text",
                "--outfile",
                str(out),
                "--interval",
                "0.0005",
                *args,
            ]
        return Service(name, [sys.executable, *args], env, self.phase_dir(phase)).start()

    def sample(self, svc: Service, phase: str, profile: str) -> Spy | None:
        """Start py-spy on a running service (every thread, unlike pyinstrument); None when
        py-spy is not installed. Finish with `end_sample` before stopping the service."""
        if spy.executable() is None:
            self.say(f"{profile}: py-spy is not installed, no profile")
            return None
        return spy.Spy(svc.pid, self.phase_dir(phase) / f"{profile}-stacks.txt")

    def end_sample(self, sampler: Spy | None, svc: Service, phase: str, profile: str) -> None:
        if sampler is not None and sampler.stop():
            out = self.phase_dir(phase) / f"{profile}-profile.txt"
            out.write_text(spy.summary(sampler.raw, f"{profile}: {' '.join(svc.args[1:])}"))
            self.profiles[profile] = out

    def redis(self, phase: str) -> EmbeddedRedis:
        server = EmbeddedRedis(self.phase_dir(phase) / "redis").start()
        self._redis.append(server)
        return server

    def stop_redis(self, server: EmbeddedRedis, name: str) -> None:
        if server.proc is not None:
            self.note_rss_pid(name, server.proc.pid)
        server.stop()

    def note_rss_pid(self, name: str, pid: int) -> None:
        from botpulse.bench.procs import peak_rss_mb

        if (mb := peak_rss_mb(pid)) is not None:
            self.peak_rss[name] = max(self.peak_rss.get(name, 0.0), round(mb, 1))

    def close(self) -> None:
        for server in self._redis:
            server.stop()

    def child(self, what: str, env: dict[str, str], module: str, args: list[str], timeout: float) -> None:
        """Run `python -m module args` to its end (a phase's seeding or engine timing: each opens
        the phase's embedded ClickHouse while no service holds it)."""
        done = subprocess.run(
            [sys.executable, "-m", module, *args],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")

    def seed(self, phase: str, env: dict[str, str], spec: Spec, timeout: float = 600) -> Seeded:
        out = self.phase_dir(phase) / "seeded.json"
        args = ["--spec", msgspec.json.encode(spec).decode(), "--out", str(out)]
        self.child(f"seeding {phase}", env, "botpulse.bench.seed", args, timeout)
        return msgspec.json.decode(out.read_bytes(), type=Seeded)

    # --- load ---------------------------------------------------------------------------------
    def write_targets(self, phase: str, seeded: Seeded) -> tuple[Path, Path]:
        """The (bot, key) pairs as JSON (built-in generator) and as lines (wrk)."""
        as_json = self.phase_dir(phase) / "targets.json"
        as_lines = self.phase_dir(phase) / "targets.txt"
        as_json.write_text(json.dumps([[t.bot_id, t.key] for t in seeded.targets]))
        as_lines.write_text("".join(f"{t.bot_id} {t.key}\n" for t in seeded.targets))
        return as_json, as_lines

    def use_wrk(self, fixed_rate: bool) -> bool:
        # wrk cannot hold a fixed rate (that is wrk2); the built-in generator does.
        return not fixed_rate and self.generator in ("auto", "wrk") and wrk.available()

    def load(
        self,
        phase: str,
        port: int,
        targets: tuple[Path, Path],
        *,
        duration: float | None = None,
        rate: float | None = None,
        connections: int | None = None,
        env: dict[str, str] | None = None,
        builtin: bool = False,
        path: str = DEFAULT_PATH,
        body: str = STATS_BODY,
    ) -> Result:
        """`builtin`: the built-in generator even when wrk would be used (fixed rates always are).
        `path` and `body`: another server's write (a peer's), `{bot}` standing for each bot id."""
        s = self.sizes
        duration = duration or s.duration_s
        connections = connections or s.connections
        if self.use_wrk(rate is not None or builtin):
            return wrk.run(
                port, targets[1], body, connections=connections, duration=duration, warmup=s.warmup_s,
                path=path,
            )  # fmt: skip
        out = self.phase_dir(phase) / f"load-{port}-{time.monotonic_ns()}.json"
        args = [
            sys.executable, "-m", "botpulse.bench.loadgen", "--port", str(port), "--targets", str(targets[0]),
            "--body", body, "--path", path, "--connections", str(connections), "--duration", str(duration),
            "--warmup", str(s.warmup_s), "--out", str(out),
        ]  # fmt: skip
        if rate is not None:
            args += ["--rate", str(rate)]
        done = subprocess.run(
            args, env=env, cwd=REPO, capture_output=True, text=True,
            timeout=duration + s.warmup_s + 60, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"load generator failed:\n{done.stderr[-3000:]}")
        return msgspec.json.decode(out.read_bytes(), type=Result)


def port() -> int:
    return free_port()
