"""The built-in load generator's accounting: which requests a run counts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from botpulse.bench.loadgen import build_requests, run_load


@pytest.fixture
async def slow_server() -> AsyncIterator[int]:
    """A server whose every answer takes longer than the whole measured window."""

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(0.6)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/v1/bot/{bot}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port
    finally:
        await runner.cleanup()


async def test_paced_run_counts_requests_that_finish_after_the_window(slow_server: int) -> None:
    # Each answer takes 0.6 s and the window is 0.5 s: a run that only counted requests
    # finished inside the window would report no latency at all (CI saw p99 None this way).
    requests = build_requests(slow_server, [["1", "key"]], b'{"guilds": 1}')
    result = await run_load(slow_server, requests, connections=2, duration=0.5, warmup=0.1, rate=8)
    assert result.requests > 0
    assert result.p99_ms is not None and result.p99_ms >= 600
    assert result.statuses == {"204": result.requests}
    # Sent inside the 0.5 s window, answered after it: latency, not throughput.
    assert result.rps == 0.0


async def test_paced_run_sends_what_fell_due_while_a_connection_waited(slow_server: int) -> None:
    # One connection, 10 sends due in the window, 0.6 s per answer: it runs late and still
    # sends the due ones (bounded by a second window), each timed from when it was due.
    requests = build_requests(slow_server, [["1", "key"]], b'{"guilds": 1}')
    result = await run_load(slow_server, requests, connections=1, duration=1.0, warmup=0.0, rate=10)
    # Sent at 0, 0.6, 1.2 and 1.8 s; at 2.4 s the second window is over and the connection stops.
    assert result.requests == 4
    # The later sends queued behind the slow answers: their latency includes that wait.
    assert result.max_ms is not None and result.max_ms > 1000
    # Due at 0, 0.1, 0.2 and 0.3 s, sent at 0, 0.6, 1.2 and 1.8 s: the send lateness says it was
    # the answers that held the sends back.
    assert result.send_late_max_ms is not None and 1400 <= result.send_late_max_ms < 2500
    assert result.send_late_p50_ms is not None and result.send_late_p50_ms >= 400
    # The 6 sends still due were never made, and say so; the rate is what was answered inside
    # the window (one answer), not what was asked.
    assert result.missed == 6
    assert result.rps == 1.0
    assert 1.0 < result.overran_s < 3.0


async def test_closed_loop_counts_the_request_in_flight_at_the_stop(slow_server: int) -> None:
    requests = build_requests(slow_server, [["1", "key"]], b'{"guilds": 1}')
    result = await run_load(slow_server, requests, connections=3, duration=0.4, warmup=0.0)
    assert result.requests == 3
    assert result.p50_ms is not None and result.p50_ms >= 600
