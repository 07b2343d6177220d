"""The sustain phase's decisions, without a box: when a run holds, where the search goes next,
that it stays within its budget, and what the ratio says when the gateway's peak is missing.
The histograms the bench reads come from a real prometheus-client exposition. The phase's run
against a real `botpulse dev` is in tests/test_bench_smoke.py (the tiny run)."""

from __future__ import annotations

import math

import msgspec
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from botpulse.bench import gateway, scrape
from botpulse.bench.context import Figure
from botpulse.bench.sizes import FULL, QUICK
from botpulse.bench.sustain import Step, gateway_peak, judge, next_rate, search
from botpulse.bench.sustain import figures as sustain_figures

FLAT = [0, 400, 900, 100, 500, 800, 50, 450, 950]  # a worker's sawtooth, not growing


def test_a_run_holds_only_when_lag_rate_answers_and_backlog_all_hold():
    assert judge(1000, 990, 0.7, [], 0, FLAT) == ""
    assert "lag p99 1.20 s > 1 s" in judge(1000, 990, 1.2, [], 0, FLAT)
    assert "no probe post became visible" in judge(1000, 990, None, [], 0, FLAT)
    assert "2 probe posts failed (not visible after 10 s)" in judge(
        1000, 990, 0.5, ["not visible after 10 s"] * 2, 0, FLAT
    )
    assert "achieved 900/s of 1000/s" in judge(1000, 900, 0.5, [], 0, FLAT)
    assert "3 posts not accepted" in judge(1000, 1000, 0.5, [], 3, FLAT)
    # Growing by more than a second of posts between the first and the last third.
    growing = [0, 100, 200, 900, 1000, 1100, 2100, 2200, 2300]
    assert "backlog grew from 100 to 2200 entries" in judge(1000, 1000, 0.5, [], 0, growing)
    assert judge(3000, 3000, 0.5, [], 0, growing) == ""  # one second of posts is 3,000 here
    assert "only 2 backlog samples" in judge(1000, 1000, 0.5, [], 0, [0, 0])


def test_the_search_steps_up_down_then_bisects_and_ignores_noise_below_the_best():
    assert next_rate([(1000, True)]) == 1300
    assert next_rate([(1000, False)]) == 700
    assert next_rate([(1000, True), (1300, False)]) == round(math.sqrt(1000 * 1300), 1)
    assert next_rate([(1000, True), (1050, False)]) is None  # within 8 %: done
    # 800 failing after 1000 held is noise: the search goes on above 1000.
    assert next_rate([(1000, True), (800, False)]) == 1300


def _box(short_limit: float, long_limit: float):  # type: ignore[no-untyped-def]
    """A fake box: holds rates up to `short_limit` for short runs, `long_limit` for long ones."""
    runs: list[tuple[str, float, float]] = []

    def run_step(kind: str, rate: float, duration: float) -> Step:
        runs.append((kind, rate, duration))
        limit = long_limit if duration >= 60 else short_limit
        held = rate <= limit
        return Step(
            kind=kind, rate=rate, duration_s=duration, held=held, why="" if held else "lag", achieved=rate
        )

    return run_step, runs


def test_the_search_finds_the_rate_and_holds_it_for_the_full_duration():
    run_step, runs = _box(short_limit=1000, long_limit=900)
    held, steps = search(run_step, 600, FULL)
    assert [k for k, _, _ in runs].count("search") == FULL.sustain_steps
    # Up while it holds (600, 780), over the limit (1014), then bisecting below it.
    assert [r for _, r, _ in runs[:3]] == [600, 780, 1014]
    best_short = max(r for k, r, _ in runs if k == "search" and r <= 1000)
    assert 940 <= best_short <= 1000
    # The best short rate does not hold for 60 s, 15 % less does.
    assert held is not None and held.kind == "hold" and held.duration_s == 60
    assert held.rate == round(best_short * 0.85, 1) <= 900
    assert steps[-1] is held and [s.kind for s in steps[-2:]] == ["hold", "hold"]


def test_the_search_stays_within_its_budget_and_always_runs_one_full_duration():
    now = [0.0]
    run_step, runs = _box(short_limit=1e9, long_limit=1e9)

    def timed(kind: str, rate: float, duration: float) -> Step:
        now[0] += duration + QUICK.warmup_s + 1.0
        return run_step(kind, rate, duration)

    held, _ = search(timed, 500, QUICK, clock=lambda: now[0])
    assert now[0] <= QUICK.sustain_budget_s
    assert held is not None and held.duration_s == QUICK.sustain_s and held.rate == max(r for _, r, _ in runs)
    tight = msgspec.structs.replace(QUICK, sustain_budget_s=1)
    now[0] = 0.0
    runs.clear()
    held, _ = search(timed, 500, tight, clock=lambda: now[0])
    assert [k for k, _, _ in runs] == ["hold"] and held is not None and held.rate == 500


def test_a_box_that_holds_nothing_is_a_miss_with_its_reason():
    run_step, _ = _box(short_limit=0, long_limit=0)
    held, steps = search(run_step, 500, QUICK)
    assert held is None
    rate, ratio = sustain_figures(QUICK, held, steps, 4000.0, "1-process gateway peak 4,000 req/s")
    assert rate.value is None and rate.note.startswith(f"no rate held for {QUICK.sustain_s:g} s (at ")
    assert ratio.value is None and ratio.ok is False and ratio.target == "≥ 0.8"


def test_the_ratio_is_against_the_gateway_phases_peak_or_says_why_there_is_none():
    peak = Figure("gateway_rps_1p", "gateway req/s, 1 process", 5000.0, "req/s")
    assert gateway_peak([peak]) == (5000.0, "1-process gateway peak 5,000 req/s (gateway phase, this run)")
    assert gateway_peak([]) == (None, "not available: the gateway phase was not in this run (--only)")
    failed = Figure("gateway_failed", "gateway phase", None, "", "runs", False, "boom")
    assert gateway_peak([failed])[1] == "not available: the gateway phase failed in this run"

    step = Step(kind="hold", rate=4200, duration_s=60, held=True, why="", achieved=4150.0,
                backlog_first_third=10.0, backlog_last_third=12.0)  # fmt: skip
    _, ratio = sustain_figures(FULL, step, [step], 5000.0, gateway_peak([peak])[1])
    assert (ratio.value, ratio.ok, ratio.target) == (0.83, True, "≥ 0.8")
    assert "sustained 4,150 req/s; 1-process gateway peak 5,000 req/s" in ratio.note
    rate, ratio = sustain_figures(FULL, step, [step], None, gateway_peak([])[1])
    assert rate.value == 4150.0 and "tried: 4200/s 60 s held" in rate.note
    assert ratio.value is None and ratio.ok is None
    assert ratio.note == "not available: the gateway phase was not in this run (--only)"


def _exposition(values: list[float]) -> str:
    registry = CollectorRegistry()
    posts = Histogram("botpulse_gateway_append_posts", "posts", buckets=(1, 2, 4, 8), registry=registry)
    for v in values:
        posts.observe(v)
    return generate_latest(registry).decode()


def test_histograms_read_from_an_exposition_give_bucket_bounded_percentiles():
    name = "botpulse_gateway_append_posts"
    before = scrape.parse(_exposition([1] * 10), [name])[name]
    after = scrape.parse(_exposition([1] * 10 + [1] * 90 + [3] * 9 + [20]), [name])[name]
    h = after.minus(before)
    assert (h.count, h.sum) == (100, 90 + 27 + 20)
    assert (h.quantile(50), h.quantile(90), h.quantile(99), h.quantile(100)) == (1, 1, 4, math.inf)
    assert scrape.describe(h, what="writes") == "p50 ≤ 1, p90 ≤ 1, p99 ≤ 4 (mean 1.37, 100 writes)"
    summary = scrape.summary(h)
    assert summary["buckets"] == {"1": 90, "2": 0, "4": 9, "8": 0, "+Inf": 1}
    assert summary["p99_at_most"] == 4 and summary["sum"] == 137
    # The gateway's reading of the same exposition: posts per write, nothing else invented.
    inside = gateway.summarize_inside(scrape.parse(_exposition([2, 2]), [name]))
    assert list(inside) == ["posts_per_write"] and inside["posts_per_write"]["mean"] == 2
