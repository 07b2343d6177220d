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


def _verdict(tmp_path, gateway_p99: float, bare_p99: float, bare_late: float) -> bool | None:  # type: ignore[no-untyped-def]
    from botpulse.bench.context import Bench
    from botpulse.bench.gateway import Run, _tail_figures
    from botpulse.bench.sizes import BY_NAME

    b = Bench(BY_NAME["tiny"], tmp_path, "builtin", echo=False)
    gw = _paced(7000, 1.0)
    gw.p99_ms = gateway_p99
    base = _paced(7000, bare_late)
    base.p99_ms = bare_p99
    _tail_figures(b, Run(1, gw), Run(1, base))
    return next(f.ok for f in b.figures if f.key == "gateway_p99_70pct_vs_bare")


def test_a_held_back_baseline_withholds_a_pass_but_never_a_miss(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # 128 connections at 7,000/s: an 18.3 ms interval. A slow bare run can only lower the ratio.
    assert _verdict(tmp_path, 200.0, 40.0, bare_late=20.0) is False  # 5x: a miss, whatever the baseline
    assert _verdict(tmp_path, 20.0, 40.0, bare_late=20.0) is None  # a pass it may have faked
    assert _verdict(tmp_path, 20.0, 40.0, bare_late=1.0) is True
    assert _verdict(tmp_path, 200.0, 40.0, bare_late=1.0) is False


def test_the_bare_try_that_kept_up_is_chosen_over_a_faster_held_back_one() -> None:
    from botpulse.bench.gateway import Run, _keep_best

    clean, held = _paced(7000, 15.0), _paced(7000, 19.0)  # an 18.3 ms interval
    clean.p99_ms, held.p99_ms = 35.0, 25.0
    runs: dict[str, Run] = {}
    _keep_best(runs, "baseline_1p_70pct", 0, Run(1, clean))
    _keep_best(runs, "baseline_1p_70pct", 1, Run(1, held))
    assert runs["baseline_1p_70pct"].result is clean
    # The gateway's own lateness is its tail, not a disturbance: its lowest p99 counts.
    _keep_best(runs, "gateway_1p_70pct", 0, Run(1, clean))
    _keep_best(runs, "gateway_1p_70pct", 1, Run(1, held))
    assert runs["gateway_1p_70pct"].result is held
    # A try with refusals never wins over one whose every answer was a 204.
    refused = _paced(7000, 1.0)
    refused.p99_ms, refused.statuses, refused.requests = 1.0, {"204": 1, "429": 5}, 6
    _keep_best(runs, "gateway_1p_70pct", 2, Run(1, refused))
    assert runs["gateway_1p_70pct"].result is held
