"""Phase 3: lag from "accepted" (the gateway's 204) to "visible" (the query service reports the
post as the bot's `lastSeen`), while background load posts at a fixed rate to other bots.

The stack is the one `botpulse dev` runs: a gateway process, and the query service with an
in-process worker (embedded chDB allows one engine per process). Probe bots post one at a
time and poll the query service every 20 ms, so each sample has at most that much slack.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import msgspec

from botpulse.bench.context import PACED_CONNECTIONS, REPO, STATS_BODY, Bench, Figure, port
from botpulse.bench.loadgen import Result, percentile
from botpulse.bench.seed import Spec, Target

PHASE = "e2e"
POLL_S = 0.02
GIVE_UP_S = 10.0
TARGET_P99_S = 1.5


async def _last_seen(session: aiohttp.ClientSession, url: str) -> int | None:
    async with session.get(url) as resp:
        if resp.status != 200:
            return None
        return (await resp.json()).get("lastSeen")


async def probe(
    gateway: str, query: str, target: Target, until: float, lags: list[float], misses: list[str]
) -> None:
    post_url = f"{gateway}/v1/bot/{target.bot_id}"
    read_url = f"{query}/v1/bot/{target.bot_id}"
    headers = {"Authorization": target.key, "Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() < until:
            before = await _last_seen(session, read_url)
            async with session.post(post_url, data=STATS_BODY, headers=headers) as resp:
                status = resp.status
            accepted = time.monotonic()
            if status != 204:
                misses.append(f"post answered {status}")
                await asyncio.sleep(0.1)
                continue
            while True:
                seen = await _last_seen(session, read_url)
                now = time.monotonic()
                if seen is not None and seen != before:
                    lags.append(now - accepted)
                    break
                if now - accepted > GIVE_UP_S:
                    misses.append(f"not visible after {GIVE_UP_S:.0f} s")
                    break
                await asyncio.sleep(POLL_S)


async def probe_all(
    gateway: str, query: str, targets: list[Target], until: float, lags: list[float], misses: list[str]
) -> None:
    """Every probe bot at once until `until`: each lag sample lands in `lags`, each failure in `misses`."""
    await asyncio.gather(*(probe(gateway, query, t, until, lags, misses) for t in targets))


def start_background(
    b: Bench,
    env: dict[str, str],
    gport: int,
    targets: Path,
    rate: float,
    duration: float,
    connections: int,
    out: Path,
) -> subprocess.Popen[bytes]:
    """The built-in generator posting to `targets` at a fixed `rate` (after the run's warm-up), in
    the background while the probes measure; `finish_background` collects its result from `out`."""
    args = [
        sys.executable, "-m", "botpulse.bench.loadgen",
        "--port", str(gport), "--targets", str(targets),
        "--body", STATS_BODY, "--connections", str(connections),
        "--duration", str(duration), "--warmup", str(b.sizes.warmup_s),
        "--rate", str(rate), "--out", str(out),
    ]  # fmt: skip
    return subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish_background(loader: subprocess.Popen[bytes], out: Path, timeout: float) -> Result:
    try:
        _, err = loader.communicate(timeout=timeout)
    finally:
        if loader.poll() is None:
            loader.kill()
            loader.wait()
    if loader.returncode != 0:
        raise RuntimeError(f"background load failed:\n{err.decode()[-2000:]}")
    return msgspec.json.decode(out.read_bytes(), type=Result)


def run(b: Bench) -> None:
    s = b.sizes
    redis = b.redis(PHASE)
    try:
        env = b.env(PHASE, redis.url)
        background_bots = max(10, min(200, s.bots))
        b.say(f"e2e: seeding {background_bots} + {s.e2e_probes} bots")
        seeded = b.seed(
            PHASE, env, Spec(accounts=max(1, min(10, s.accounts)), bots=background_bots + s.e2e_probes)
        )
        probes, background = seeded.targets[: s.e2e_probes], seeded.targets[s.e2e_probes :]
        targets = b.write_targets(PHASE, msgspec.structs.replace(seeded, targets=background))
        qport, gport = port(), port()
        query = b.service(
            "query+worker", PHASE, ["-m", "botpulse", "query", "--port", str(qport), "--with-worker"], env
        )
        gateway = b.service("gateway-e2e", PHASE, ["-m", "botpulse", "gateway", "--port", str(gport)], env)
        try:
            query.wait_http(f"http://127.0.0.1:{qport}/healthz", timeout=90)
            gateway.wait_http(f"http://127.0.0.1:{gport}/healthz", timeout=60)
            connections = PACED_CONNECTIONS if s.mode != "tiny" else 4
            load_out = b.phase_dir(PHASE) / "background.json"
            loader = start_background(
                b, env, gport, targets[0], s.e2e_rate, s.e2e_duration_s, connections, load_out
            )
            time.sleep(s.warmup_s)
            lags: list[float] = []
            misses: list[str] = []
            until = time.monotonic() + s.e2e_duration_s
            gateway_url, query_url = f"http://127.0.0.1:{gport}", f"http://127.0.0.1:{qport}"
            asyncio.run(probe_all(gateway_url, query_url, probes, until, lags, misses))
            background_result = finish_background(loader, load_out, s.e2e_duration_s + s.warmup_s + 60)
            b.note_rss("gateway (e2e)", gateway)
            b.note_rss("query + worker (e2e)", query)
        finally:
            gateway.stop()
            query.stop()
        lags.sort()
        p50, p99 = percentile(lags, 50), percentile(lags, 99)
        b.raw[PHASE] = {
            "samples": len(lags),
            "misses": misses[:20],
            "miss_count": len(misses),
            "p50_s": p50,
            "p99_s": p99,
            "max_s": lags[-1] if lags else None,
            "background": msgspec.to_builtins(background_result),
            "target_rate": s.e2e_rate,
        }
        non2xx = sum(n for st, n in background_result.statuses.items() if not st.startswith("2"))
        note = f"{len(lags)} samples at {background_result.rps:.0f} posts/s achieved (asked {s.e2e_rate:.0f})"
        if misses:
            note += f"; {len(misses)} probes failed ({misses[0]})"
        if non2xx:
            note += f"; {non2xx} background posts not accepted"
        b.figure(Figure("e2e_lag_p50", "end-to-end lag p50", _r(p50), "s", note=note))
        b.figure(
            Figure(
                "e2e_lag_p99",
                f"end-to-end lag p99 at {s.e2e_rate:.0f} posts/s",
                _r(p99),
                "s",
                f"≤ {TARGET_P99_S} s",
                None if p99 is None else (p99 <= TARGET_P99_S and not misses),
                note,
            )
        )
        b.say(f"e2e: lag p50 {_r(p50)} s p99 {_r(p99)} s ({note})")
    finally:
        b.stop_redis(redis, "redis (e2e phase)")


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
