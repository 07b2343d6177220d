"""The built-in load generator, run as its own process (`python -m botpulse.bench.loadgen`) so it never
shares an event loop or a core's time slice accounting with the server it measures.

It speaks just enough HTTP/1.1 over raw asyncio protocols (keep-alive, Content-Length or
chunked bodies) to stay much cheaper per request than the aiohttp server it loads. Two modes:
closed loop (each connection sends its next request when the previous answer arrived: peak
throughput) and fixed rate (`--rate`: each connection sends on its own schedule, and latency
counts from the scheduled send time so a stalled server cannot hide its queueing delay).
Targets only 127.0.0.1; the run is bounded by `--warmup + --duration` (a fixed-rate run that
fell behind: by up to `LATE_S` more, see `run_load`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

import msgspec

from botpulse.runtime.loop_lag import LoopLagProbe

HOST = "127.0.0.1"
# How long past its window a fixed-rate run may keep sending what fell due in it. A server that
# far behind has failed any rate it was asked; the sends still due are counted as `missed`.
LATE_S = 5.0
LAG_PROBE_S = 0.01


class Result(msgspec.Struct):
    generator: str
    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    statuses: dict[str, int]
    errors: int
    rate: float | None = None
    client_cpu_share: float | None = None  # CPU seconds per wall second of the generator itself
    warmup_statuses: dict[str, int] = {}  # answers during the warm-up (cold caches), not counted
    # Fixed rate: sends due in the window that were still unsent `LATE_S` (or one more window, if
    # shorter) after its end, and how long past the window's end the run went.
    missed: int = 0
    overran_s: float = 0.0
    # Fixed rate: how late each request went on the wire, past its due time. A connection sends
    # its next request once the previous answer arrived, so this is the generator's own delay
    # (its loop, its share of the cores) plus any answer that took longer than the connection's
    # interval: near zero while the server keeps up, and about the latency above when it is the
    # server that held the sends back.
    send_late_p50_ms: float | None = None
    send_late_p99_ms: float | None = None
    send_late_max_ms: float | None = None
    # The generator's own event loop over the run (`runtime/loop_lag.py`, a 10 ms timer): time
    # every answer waited before the generator read it, counted in the latencies above.
    loop_lag_p99_ms: float | None = None
    loop_lag_max_ms: float | None = None


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), math.ceil(q * len(sorted_values) / 100)))
    return sorted_values[rank - 1]


# `{bot}` in the path and the body is each target's bot id (a peer's write names the bot in both).
BOT = "{bot}"
DEFAULT_PATH = "/v1/bot/{bot}"


def build_requests(port: int, targets: list[list[str]], body: bytes, path: str = DEFAULT_PATH) -> list[bytes]:
    """One prepared request per (bot id, key): many distinct bots and keys, so caches are honest."""
    requests = []
    for bot_id, key in targets:
        data = body.replace(BOT.encode(), bot_id.encode())
        head = (
            f"POST {path.replace(BOT, bot_id)} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        requests.append(head.encode() + data)
    return requests


class _Conn(asyncio.Protocol):
    """One keep-alive connection; `request()` sends bytes and resolves with the status code."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._parse()

    def _parse(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None or self.waiter.done():
            return
        head = bytes(self.buffer[:end]).decode("latin-1")
        lines = head.split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body_start = end + 4
        if headers.get("transfer-encoding", "").lower() == "chunked":
            terminator = self.buffer.find(b"0\r\n\r\n", body_start)
            if terminator < 0:
                return
            consumed = terminator + 5
        else:
            length = 0 if status in (204, 304) else int(headers.get("content-length", "0"))
            if len(self.buffer) < body_start + length:
                return
            consumed = body_start + length
        del self.buffer[:consumed]
        self.waiter.set_result(status)
        if headers.get("connection", "").lower() == "close" and self.transport is not None:
            self.transport.close()

    async def request(self, data: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


async def _connect(port: int) -> _Conn:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(_Conn, HOST, port)
    return protocol


async def run_load(
    port: int,
    requests: list[bytes],
    *,
    connections: int,
    duration: float,
    warmup: float,
    rate: float | None = None,
) -> Result:
    # Not loop.time(): uvloop's clock is libuv's millisecond tick, cached per loop iteration.
    clock = time.perf_counter
    start = clock() + warmup
    stop = start + duration
    late_stop = stop + min(duration, LATE_S)
    latencies: list[float] = []
    send_late: list[float] = []
    statuses: Counter[str] = Counter()
    warmup_counts: Counter[str] = Counter()
    errors = 0
    counter = 0
    answered = 0  # sent in the window and answered before its end: what `rps` counts
    missed = 0

    async def one_connection(index: int) -> None:
        nonlocal errors, counter, answered, missed
        conn: _Conn | None = None
        interval = connections / rate if rate else 0.0
        # Stagger fixed-rate connections so sends spread evenly over each interval.
        scheduled = clock() + (interval * index / connections if rate else 0.0)
        while True:
            now = clock()
            # A paced connection still sends what was due before the stop when it runs late
            # (latency counts from the due time, so a slow server cannot hide its backlog), but
            # for at most `LATE_S` (or one more window, if shorter) past the stop.
            if (scheduled >= stop or now >= late_stop) if rate else now >= stop:
                if rate and scheduled < stop:
                    missed += math.ceil((stop - scheduled) / interval)
                break
            if rate:
                if scheduled > now:
                    await asyncio.sleep(scheduled - now)
                sent_at = scheduled
                scheduled += interval
            else:
                sent_at = now
            try:
                if conn is None or conn.closed.done():
                    conn = await _connect(port)
                data = requests[counter % len(requests)]
                counter += 1
                if rate and start <= sent_at < stop:
                    send_late.append(clock() - sent_at)
                status = await conn.request(data)
            except (OSError, ConnectionError, ValueError, IndexError):
                conn = None
                if clock() >= start:
                    errors += 1
                await asyncio.sleep(0.01)
                continue
            done = clock()
            # Every request sent inside the window counts, however late it finished: dropping
            # those that straddle the stop would drop the slowest ones from the tail.
            # The rate, though, is what the server answered inside the window: a late backlog
            # answered afterwards is latency, not throughput.
            if start <= sent_at < stop:
                latencies.append(done - sent_at)
                statuses[str(status)] += 1
                answered += done <= stop
            elif sent_at < start:
                warmup_counts[str(status)] += 1
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    lags: list[float] = []
    probe = LoopLagProbe(lags.append, interval_s=LAG_PROBE_S)
    cpu_before, began = time.process_time(), clock()
    probe.start()
    try:
        await asyncio.gather(*(one_connection(i) for i in range(connections)))
    finally:
        await probe.stop()
    cpu_used, ended = time.process_time() - cpu_before, clock()
    latencies.sort()
    send_late.sort()
    lags.sort()

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    return Result(
        generator="builtin",
        connections=connections,
        duration_s=duration,
        requests=len(latencies),
        rps=round(answered / duration, 1),
        p50_ms=ms(percentile(latencies, 50)),
        p90_ms=ms(percentile(latencies, 90)),
        p99_ms=ms(percentile(latencies, 99)),
        max_ms=ms(latencies[-1] if latencies else None),
        statuses=dict(statuses),
        errors=errors,
        rate=rate,
        client_cpu_share=round(cpu_used / (ended - began), 3),
        warmup_statuses=dict(warmup_counts),
        missed=missed,
        overran_s=round(max(0.0, ended - stop), 3),
        send_late_p50_ms=ms(percentile(send_late, 50)),
        send_late_p99_ms=ms(percentile(send_late, 99)),
        send_late_max_ms=ms(send_late[-1] if send_late else None),
        loop_lag_p99_ms=ms(percentile(lags, 99)),
        loop_lag_max_ms=ms(lags[-1] if lags else None),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m botpulse.bench.loadgen")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--targets", type=Path, required=True, help="JSON list of [bot id, key]")
    parser.add_argument("--body", default='{"guilds": 1234}', help="request body; {bot} is the bot id")
    parser.add_argument("--path", default=DEFAULT_PATH, help="request path; {bot} is the bot id")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=None, help="requests/s in total (fixed-rate mode)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    targets = json.loads(args.targets.read_text())
    requests = build_requests(args.port, targets, args.body.encode(), args.path)
    result = asyncio.run(
        run_load(
            args.port,
            requests,
            connections=args.connections,
            duration=args.duration,
            warmup=args.warmup,
            rate=args.rate,
        )
    )
    tmp = args.out.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.encode(result))
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
