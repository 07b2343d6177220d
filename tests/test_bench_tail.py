"""When the bench may judge the gateway's 70 % tail against the bare handler's."""

from __future__ import annotations

from botpulse.bench.gateway import baseline_held_back
from botpulse.bench.loadgen import Result


def _paced(rate: float | None, late_p99_ms: float | None, connections: int = 128) -> Result:
    return Result(
        generator="builtin", connections=connections, duration_s=10, requests=1, rps=1.0, p50_ms=1.0,
        p90_ms=1.0, p99_ms=1.0, max_ms=1.0, statuses={"204": 1}, errors=0, rate=rate,
        send_late_p99_ms=late_p99_ms,
    )  # fmt: skip


def test_a_bare_handler_whose_sends_went_out_on_time_is_a_baseline() -> None:
    # 128 connections at 8,000/s: each sends every 16 ms.
    assert baseline_held_back(_paced(8000, 1.2)) is None
    assert baseline_held_back(_paced(8000, 15.9)) is None


def test_a_bare_handler_that_held_its_sends_back_past_an_interval_is_not() -> None:
    why = baseline_held_back(_paced(8000, 284.5))
    assert why is not None and "284.5 ms" in why and "16.0 ms interval" in why
    # The interval is the connection's: fewer connections at the same rate send more often.
    assert baseline_held_back(_paced(8000, 10.0, connections=64)) is not None


def test_a_run_that_was_not_paced_or_not_timed_decides_nothing() -> None:
    assert baseline_held_back(_paced(None, 500.0)) is None
    assert baseline_held_back(_paced(8000, None)) is None
