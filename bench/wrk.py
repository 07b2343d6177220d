"""Load from `wrk` (Debian package `wrk`) with `wrk_post.lua`, parsed into the same `Result` as
the built-in generator. wrk has no warm-up phase, so a short discarded run comes first."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from botpulse.bench.loadgen import DEFAULT_PATH, Result

SCRIPT = Path(__file__).with_name("wrk_post.lua")
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def available() -> bool:
    return shutil.which("wrk") is not None


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return round(float(match.group(1)) * _UNITS[match.group(2)], 3)


def parse(output: str, connections: int, duration: float) -> Result:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if not rps or not total:
        raise ValueError(f"could not read wrk output:\n{output}")
    pcts = {m.group(1): _ms(m.group(2)) for m in re.finditer(r"^\s+(50|90|99)%\s+(\S+)", output, re.M)}
    max_ms = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    bad = int(non2xx.group(1)) if non2xx else 0
    requests = int(total.group(1))
    return Result(
        generator="wrk",
        connections=connections,
        duration_s=duration,
        requests=requests,
        rps=float(rps.group(1)),
        p50_ms=pcts.get("50"),
        p90_ms=pcts.get("90"),
        p99_ms=pcts.get("99"),
        max_ms=_ms(max_ms.group(1)) if max_ms else None,
        # wrk counts statuses only as 2xx/3xx versus the rest.
        statuses={"2xx/3xx": requests - bad, "other": bad},
        errors=sum(int(x) for x in sock.groups()) if sock else 0,
    )


def run(
    port: int,
    targets_file: Path,
    body: str,
    *,
    connections: int,
    duration: float,
    warmup: float,
    path: str = DEFAULT_PATH,
) -> Result:
    """`{bot}` in `body` and `path` is each target's bot id (as in the built-in generator)."""

    def wrk(seconds: float) -> str:
        args = [
            "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
            "-s", str(SCRIPT), f"http://127.0.0.1:{port}", "--", str(targets_file), body, path,
        ]  # fmt: skip
        done = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 30, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
        return done.stdout

    warm: dict[str, int] = {}
    if warmup > 0:
        warm = parse(wrk(warmup), connections, float(max(1, round(warmup)))).statuses
    seconds = max(1, round(duration))
    result = parse(wrk(seconds), connections, float(seconds))
    result.warmup_statuses = warm  # counted apart, as the built-in generator does
    return result
