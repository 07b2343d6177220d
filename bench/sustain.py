"""Phase: the highest post rate one box sustains, against the gateway's single-process peak.

The box is `botpulse dev` itself, run as a child on the embedded default in the phase's
directory: its bundled valkey-server, embedded chDB, the gateway process it starts and the query
service with its in-process worker and alert evaluator, composed by `botpulse/dev.py` exactly as
a user gets them. The phase's bots are seeded first, with the bundled Redis the other phases use,
on the directory `botpulse dev` then starts its own on (the AOF carries the registry over).

Posts come at a fixed rate from the built-in generator while the e2e phase's probes measure the
lag (a probe's post accepted -> its `lastSeen` moved on the query service) and the bench samples
the stream backlog as `botpulse status` reads it (each partition's consumer-group lag + pending).
A rate *holds* over a run when:
  - lag p99 ≤ 1 s and every probe post became visible;
  - the generator achieved ≥ 95 % of the asked rate, and every post was answered 204;
  - the backlog did not grow: the mean of the last third of the samples is at most one second
    of posts (and at least 100 entries) above the first third's.
The search starts at half the gateway phase's 1-process peak (a figure of the same run), goes up
by 30 % while rates hold and down by 30 % while they do not, then halves the bracket (geometrically)
until it is within 8 %, in short steps; the best rate held must then hold for the phase's whole
duration (60 s in the full run), stepping down by 15 % when it does not. Everything after
start-up fits in the size's budget. The ratio to the gateway's peak is reported only when the
gateway phase ran in this run; otherwise the figure says why there is none.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis

from botpulse.bench import e2e, gateway
from botpulse.bench.context import PACED_CONNECTIONS, Bench, Figure, port
from botpulse.bench.loadgen import percentile
from botpulse.bench.procs import Service, cores_by_role, cpu_by_pid
from botpulse.bench.seed import Spec, Target
from botpulse.bench.sizes import Sizes
from botpulse.runtime.settings import load_settings
from botpulse.stack import StackInfo, read_stack
from botpulse.workers.status import partition_view

PHASE = "sustain"
LAG_P99_S = 1.0
TARGET_RATIO = 0.8
PEAK_KEY = "gateway_rps_1p"  # the gateway phase's figure the ratio is taken against
START_SHARE = 0.5
UP, DOWN, CLOSE = 1.3, 0.7, 1.08
CONFIRM_DOWN = 0.85
ACHIEVED_SHARE = 0.95
BACKLOG_SLACK_S = 1.0  # growth allowed between the first and the last third, in seconds of posts
BACKLOG_SLACK_MIN = 100
SAMPLE_S = 0.25
STEP_OVERHEAD_S = 1.0


class Step(msgspec.Struct, kw_only=True):
    """One run of the box at one rate."""

    kind: str  # "search" (a short step) or "hold" (the phase's full duration)
    rate: float  # asked
    duration_s: float
    held: bool
    why: str  # what failed ("" when it held)
    achieved: float = 0.0
    lag_p50_s: float | None = None
    lag_p99_s: float | None = None
    lag_samples: int = 0
    misses: list[str] = []
    not_accepted: int = 0
    backlog_start: int = 0  # when the run began (what the previous one left)
    backlog_first_third: float | None = None
    backlog_last_third: float | None = None
    backlog_max: int = 0
    inside: dict[str, Any] | None = None  # the box's gateway, as the gateway phase reads it
    # Cores kept busy over the step (warm-up included), per part of the box (`procs.role_of`),
    # and by the generator loading it: where a 2-core machine's time went.
    cores: dict[str, float] = {}
    generator_cores: float | None = None


def thirds(samples: list[int]) -> tuple[float | None, float | None]:
    """The mean of the first and of the last third of the samples (None: fewer than 3)."""
    n = len(samples) // 3
    if n == 0:
        return None, None
    return sum(samples[:n]) / n, sum(samples[-n:]) / n


def judge(
    rate: float,
    achieved: float,
    lag_p99_s: float | None,
    misses: list[str],
    not_accepted: int,
    backlog: list[int],
) -> str:
    """Why a run at `rate` did not hold ("" when it did)."""
    why = []
    if lag_p99_s is None:
        why.append("no probe post became visible")
    elif lag_p99_s > LAG_P99_S:
        why.append(f"lag p99 {lag_p99_s:.2f} s > {LAG_P99_S:g} s")
    if misses:
        why.append(f"{len(misses)} probe posts failed ({misses[0]})")
    if achieved < ACHIEVED_SHARE * rate:
        why.append(f"achieved {achieved:.0f}/s of {rate:.0f}/s")
    if not_accepted:
        why.append(f"{not_accepted} posts not accepted")
    first, last = thirds(backlog)
    if first is None or last is None:
        why.append(f"only {len(backlog)} backlog samples")
    elif last > first + max(BACKLOG_SLACK_MIN, BACKLOG_SLACK_S * rate):
        why.append(f"backlog grew from {first:.0f} to {last:.0f} entries (first to last third)")
    return "; ".join(why)


def next_rate(tried: list[tuple[float, bool]]) -> float | None:
    """The next rate to try after `tried` (rate, held), None once the best held rate and the
    lowest failed rate above it are within `CLOSE`. A lower rate failing after a higher one held
    (noise) does not move the search down."""
    held = [rate for rate, ok in tried if ok]
    best = max(held, default=None)
    failed = [rate for rate, ok in tried if not ok and (best is None or rate > best)]
    if best is None:
        return round(min(failed) * DOWN, 1)
    if not failed:
        return round(best * UP, 1)
    low = min(failed)
    if low / best <= CLOSE:
        return None
    return round(math.sqrt(best * low), 1)


RunStep = Callable[[str, float, float], Step]


def search(
    run_step: RunStep, start: float, s: Sizes, clock: Callable[[], float] = time.monotonic
) -> tuple[Step | None, list[Step]]:
    """Short steps to find the rate, then the full duration at the best one held: the step that
    held for `s.sustain_s` (None when none did) and every step run, in order. One full-duration
    run always happens; the rest only while they fit in `s.sustain_budget_s`."""
    began = clock()

    def fits(duration: float) -> bool:
        # A step also spends the warm-up, the generator's start and the previous step's drain.
        return clock() - began + duration + s.warmup_s + STEP_OVERHEAD_S <= s.sustain_budget_s

    steps: list[Step] = []
    rate: float | None = round(start, 1)
    for _ in range(s.sustain_steps):
        if rate is None or not fits(s.sustain_step_s + s.sustain_s):
            break
        steps.append(run_step("search", rate, s.sustain_step_s))
        rate = next_rate([(x.rate, x.held) for x in steps])
    held = [x.rate for x in steps if x.held]
    if held:
        candidate = max(held)
    elif steps:
        candidate = round(min(x.rate for x in steps) * DOWN, 1)
    else:
        candidate = round(start, 1)
    for attempt in range(max(1, s.sustain_confirms)):
        if attempt and not fits(s.sustain_s):
            break
        step = run_step("hold", candidate, s.sustain_s)
        steps.append(step)
        if step.held:
            return step, steps
        candidate = round(candidate * CONFIRM_DOWN, 1)
    return None, steps


def gateway_peak(figures: list[Figure]) -> tuple[float | None, str]:
    """The gateway phase's 1-process peak of this run, or why there is none."""
    peak = next((f for f in figures if f.key == PEAK_KEY), None)
    if peak is None:
        if any(f.key == "gateway_failed" for f in figures):
            return None, "not available: the gateway phase failed in this run"
        return None, "not available: the gateway phase was not in this run (--only)"
    if not peak.value:
        return None, "not available: the gateway phase measured no peak"
    return peak.value, f"1-process gateway peak {peak.value:,.0f} req/s (gateway phase, this run)"


def figures(
    s: Sizes, held: Step | None, steps: list[Step], peak: float | None, peak_note: str
) -> list[Figure]:
    tried = ", ".join(
        f"{x.rate:.0f}/s {x.duration_s:g} s {'held' if x.held else 'no'}" for x in steps
    )  # fmt: skip
    label = f"one box (botpulse dev) sustains posts/s for {s.sustain_s:g} s, lag p99 ≤ {LAG_P99_S:g} s"
    if held is not None:
        note = (
            f"asked {held.rate:.0f}/s; lag p50 {held.lag_p50_s} s, p99 {held.lag_p99_s} s "
            f"({held.lag_samples} samples); backlog {held.backlog_first_third:.0f} -> "
            f"{held.backlog_last_third:.0f} entries (first -> last third); tried: {tried}"
        )
        rate_figure = Figure("sustain_rps", label, held.achieved, "req/s", note=note)
    else:
        last = steps[-1] if steps else None
        why = f"at {last.rate:.0f}/s: {last.why}" if last else "nothing was run"
        rate_figure = Figure(
            "sustain_rps",
            label,
            None,
            "req/s",
            note=f"no rate held for {s.sustain_s:g} s ({why}); tried: {tried}",
        )
    target = f"≥ {TARGET_RATIO:g}"
    if peak is None:
        ratio = Figure(
            "sustain_ratio", "one box sustained / gateway 1-process peak", None, "x", target, None, peak_note
        )
    elif held is None:
        ratio = Figure(
            "sustain_ratio", "one box sustained / gateway 1-process peak", None, "x", target, False,
            f"no rate held; {peak_note}",
        )  # fmt: skip
    else:
        value = round(held.achieved / peak, 3)
        ratio = Figure(
            "sustain_ratio", "one box sustained / gateway 1-process peak", value, "x", target,
            value >= TARGET_RATIO, f"sustained {held.achieved:,.0f} req/s; {peak_note}",
        )  # fmt: skip
    return [rate_figure, ratio]


# --- the box ------------------------------------------------------------------------------------


async def backlog_now(client: aioredis.Redis, partitions: int) -> int:
    """Entries not stored yet, as `botpulse status` shows them: each partition's consumer-group
    lag + pending (its length while no worker has joined, or Redis cannot tell the lag)."""
    total = 0
    for p in range(partitions):
        view = await partition_view(client, p)
        total += view.lag + view.pending if view.lag is not None else view.length
    return total


async def _drain(redis_url: str, partitions: int, below: int, within_s: float) -> int:
    """Wait (about `within_s` at most) for the previous run's backlog to go below `below`; what
    is left."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        left = await backlog_now(client, partitions)
        for _ in range(int(within_s / SAMPLE_S)):
            if left < below:
                break
            await asyncio.sleep(SAMPLE_S)
            left = await backlog_now(client, partitions)
        return left
    finally:
        await client.aclose()


async def _measure(
    stack: StackInfo, probes: list[Target], duration: float, partitions: int
) -> tuple[list[float], list[str], list[int]]:
    """Probes and backlog samples over `duration`, together."""
    lags: list[float] = []
    misses: list[str] = []
    backlog: list[int] = []
    until = time.monotonic() + duration
    client = aioredis.Redis.from_url(stack.redis_url)

    async def sample() -> None:
        while time.monotonic() < until:
            backlog.append(await backlog_now(client, partitions))
            await asyncio.sleep(SAMPLE_S)

    try:
        await asyncio.gather(
            e2e.probe_all(stack.gateway_url, stack.query_url, probes, until, lags, misses), sample()
        )
    finally:
        await client.aclose()
    return lags, misses, backlog


class Box:
    """The running `botpulse dev` child and what a step needs to load and watch it."""

    def __init__(
        self, b: Bench, env: dict[str, str], stack: StackInfo, targets: Path, probes: list[Target], root: int
    ):
        self.b, self.env, self.stack, self.targets, self.probes = b, env, stack, targets, probes
        self.root = root  # the `botpulse dev` process: its descendants are the box
        settings = load_settings(env)
        self.partitions = settings.stream_partitions
        self.metrics_url = f"{stack.gateway_url}{settings.metrics_path}"
        self.gport = int(stack.gateway_url.rsplit(":", 1)[1])

    def step(self, kind: str, rate: float, duration: float) -> Step:
        b, s = self.b, self.b.sizes
        left = asyncio.run(
            _drain(
                self.stack.redis_url, self.partitions, max(BACKLOG_SLACK_MIN, int(rate)), max(2.0, duration)
            )
        )
        before = gateway.inside_of(self.metrics_url)
        cpu_before, began = cpu_by_pid(self.root), time.monotonic()
        connections = PACED_CONNECTIONS if s.mode != "tiny" else 4
        out = b.phase_dir(PHASE) / f"background-{kind}-{rate:.0f}-{time.monotonic_ns()}.json"
        loader = e2e.start_background(b, self.env, self.gport, self.targets, rate, duration, connections, out)
        try:
            time.sleep(s.warmup_s)
            lags, misses, backlog = asyncio.run(_measure(self.stack, self.probes, duration, self.partitions))
        except BaseException:
            loader.kill()
            loader.wait()
            raise
        result = e2e.finish_background(loader, out, duration + s.warmup_s + 60)
        cores = cores_by_role(cpu_before, cpu_by_pid(self.root), time.monotonic() - began)
        inside = gateway.summarize_inside(gateway.inside_of(self.metrics_url), before)
        lags.sort()
        p50, p99 = (None if v is None else round(v, 3) for v in (percentile(lags, 50), percentile(lags, 99)))
        not_accepted = result.errors + sum(n for st, n in result.statuses.items() if not st.startswith("2"))
        why = judge(rate, result.rps, p99, misses, not_accepted, backlog)
        first, last = thirds(backlog)
        step = Step(
            kind=kind,
            rate=rate,
            duration_s=duration,
            held=not why,
            why=why,
            achieved=result.rps,
            lag_p50_s=p50,
            lag_p99_s=p99,
            lag_samples=len(lags),
            misses=misses[:5],
            not_accepted=not_accepted,
            backlog_start=left,
            backlog_first_third=first,
            backlog_last_third=last,
            backlog_max=max(backlog, default=0),
            inside=inside,
            cores=cores,
            generator_cores=result.client_cpu_share,
        )
        b.say(
            f"sustain: {kind} {rate:.0f}/s for {duration:g} s: achieved {result.rps:.0f}/s, lag p99 {p99} s, "
            f"backlog {_n(first)} -> {_n(last)} (max {step.backlog_max}); "
            f"{'held' if step.held else 'not held: ' + why}"
        )
        b.say(f"sustain: cores busy {cores}, generator {result.client_cpu_share}")
        if "posts_per_write" in inside:
            b.say(f"sustain: posts per append write {inside['posts_per_write']['text']}")
        return step


def _n(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _wait_stack(svc: Service, env: dict[str, str], timeout: float) -> StackInfo:
    """Until `botpulse dev` wrote its stack file and both its services answer."""
    settings = load_settings(env)
    deadline = time.monotonic() + timeout
    while (stack := read_stack(settings)) is None or stack.pid != svc.pid:
        if not svc.alive():
            raise RuntimeError(f"botpulse dev exited before it was up; log:\n{svc.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"botpulse dev wrote no stack file within {timeout:.0f}s; log:\n{svc.log_tail()}"
            )
        time.sleep(0.1)
    left = max(1.0, deadline - time.monotonic())
    svc.wait_http(f"{stack.gateway_url}/healthz", timeout=left)
    svc.wait_http(f"{stack.query_url}/healthz", timeout=left)
    return stack


def run(b: Bench) -> None:
    s = b.sizes
    peak, peak_note = gateway_peak(b.figures)
    start = START_SHARE * peak if peak else s.e2e_rate
    background_bots = max(10, min(200, s.bots))
    b.say(f"sustain: seeding {background_bots} + {s.e2e_probes} bots, then `botpulse dev`")
    redis = b.redis(PHASE)
    try:
        env = b.env(PHASE, redis.url)
        seeded = b.seed(
            PHASE, env, Spec(accounts=max(1, min(10, s.accounts)), bots=background_bots + s.e2e_probes)
        )
    finally:
        redis.stop()  # valkey writes its AOF out on SIGTERM; `botpulse dev` starts its own on it
    probes, background = seeded.targets[: s.e2e_probes], seeded.targets[s.e2e_probes :]
    targets = b.write_targets(PHASE, msgspec.structs.replace(seeded, targets=background))
    # The embedded default: no REDIS_URL (dev starts its bundled valkey on BOTPULSE_DATA_DIR/redis)
    # and no CLICKHOUSE_URL (chDB under BOTPULSE_DATA_DIR/clickhouse, where the seed went).
    dev_env = {k: v for k, v in env.items() if k not in ("REDIS_URL", "CLICKHOUSE_URL")}
    dev_env.update(BOTPULSE_GATEWAY_PORT=str(port()), BOTPULSE_QUERY_PORT=str(port()))
    started = time.monotonic()
    svc = b.service("dev", PHASE, ["-m", "botpulse", "dev"], dev_env)
    try:
        stack = _wait_stack(svc, dev_env, timeout=120)
        b.say(f"sustain: botpulse dev up in {time.monotonic() - started:.1f} s; starting at {start:.0f}/s")
        box = Box(b, dev_env, stack, targets[0], probes, svc.pid)
        held, steps = search(box.step, start, s)
        b.note_rss("dev stack (sustain)", svc)
    finally:
        svc.stop(sig=signal.SIGINT, timeout=30)  # Ctrl-C: the worker flushes, then Redis stops
    b.raw[PHASE] = {
        "start_rate": round(start, 1),
        "peak": peak,
        "peak_note": peak_note,
        "held": None if held is None else msgspec.to_builtins(held),
        "steps": msgspec.to_builtins(steps),
        "criteria": {
            "lag_p99_s": LAG_P99_S,
            "achieved_share": ACHIEVED_SHARE,
            "backlog_slack_s": BACKLOG_SLACK_S,
            "backlog_slack_min": BACKLOG_SLACK_MIN,
        },
    }
    for figure in figures(s, held, steps, peak, peak_note):
        b.figure(figure)
