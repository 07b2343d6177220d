"""The benchmark harness keeps working: a minimal run produces every figure (how fast is the
business of `botpulse bench` itself, never of the test suite), and its parsers read real
output correctly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from botpulse.bench import wrk
from botpulse.bench.loadgen import percentile
from botpulse.bench.report import DOCS_END, DOCS_START, update_docs
from botpulse.bench.spy import summary

REPO = Path(__file__).resolve().parents[1]

# Real output of `wrk -t1 -c4 -d1s --latency -s bench/wrk_post.lua` against bench.baseline.
WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:53323
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.85ms   18.09ms 112.68ms   93.46%
    Req/Sec    11.10k     6.67k   19.26k    55.56%
  Latency Distribution
     50%  210.00us
     75%    0.98ms
     90%   11.84ms
     99%   99.04ms
  10022 requests in 1.00s, 1.26MB read
  Non-2xx or 3xx responses: 22
Requests/sec:   9972.86
Transfer/sec:      1.26MB
"""


def test_wrk_output_is_parsed_with_units_and_rejections():
    result = wrk.parse(WRK_OUTPUT, connections=4, duration=1.0)
    assert result.rps == 9972.86
    assert result.requests == 10022
    assert result.p50_ms == 0.21
    assert result.p90_ms == 11.84
    assert result.p99_ms == 99.04
    assert result.max_ms == 112.68
    assert result.statuses == {"2xx/3xx": 10000, "other": 22}


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


def test_docs_block_is_replaced_and_hand_written_text_kept(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\nintro\n\n{DOCS_START}\nold table\n{DOCS_END}\n\nreading\n")
    update_docs(doc, f"{DOCS_START}\nnew table\n{DOCS_END}")
    text = doc.read_text()
    assert "new table" in text and "old table" not in text
    assert text.startswith("# B\n\nintro") and text.rstrip().endswith("reading")


def test_tiny_run_produces_every_figure(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--tiny",
            # The peers phase has its own smoke test (tests/test_bench_peers.py).
            "--only",
            "gateway,worker,e2e,sustain,query",
            "--generator",
            "builtin",
            "--no-docs",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads((tmp_path / "tiny-latest.json").read_text())
    assert doc["failed"] == {}
    assert doc["generator"].startswith("built-in")
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["python"]
    assert doc["machine"]["libraries"]["aiohttp"]
    figures = {f["key"]: f for f in doc["figures"]}
    for key in ("gateway_rps_1p", "baseline_rps_1p", "gateway_ratio_1p", "worker_rows_s_embedded"):
        assert figures[key]["value"] > 0, figures[key]
    assert figures["gateway_p99_70pct"]["value"] > 0
    # The bare handler is paced at the same rate, and its tail is reported beside the gateway's.
    paced_base = doc["raw"]["gateway"]["runs"]["baseline_1p_70pct"]["result"]
    assert paced_base["rate"] == doc["raw"]["gateway"]["runs"]["gateway_1p_70pct"]["result"]["rate"]
    assert f"same rate: p99 {paced_base['p99_ms']} ms" in figures["gateway_p99_70pct"]["note"]
    assert doc["raw"]["gateway"]["runs"]["gateway_1p"]["result"]["statuses"].get("204", 0) > 0
    # The 70 % tail against the bare handler at the same rate, with the 3x target.
    vs_bare = figures["gateway_p99_70pct_vs_bare"]
    assert vs_bare["value"] > 0 and vs_bare["target"] == "≤ 3x"
    assert f"bare aiohttp 204 p99 {paced_base['p99_ms']} ms" in vs_bare["note"]
    _assert_appender_distribution(doc, figures)
    _assert_sustain(doc, figures)
    # Redis's commands per post and posts per script call, from its commandstats over the run.
    gateway_run = doc["raw"]["gateway"]["runs"]["gateway_1p"]
    assert gateway_run["redis_commands_per_post"] > 0 and gateway_run["posts_per_call"] >= 1
    assert (
        f"redis commands per post {gateway_run['redis_commands_per_post']}"
        in figures["gateway_cpu_us_1p"]["note"]
    )
    assert doc["raw"]["worker"]["embedded_1p"]["stored_rows"] == doc["sizes"]["drain_entries"]
    # The engine's own insert rate for the same rows, and the drain against it (target 0.8).
    engine = doc["raw"]["worker"]["engine"]
    assert engine["rows"] == engine["stored_rows"] == doc["sizes"]["drain_entries"]
    assert engine["rollup_posts"] and set(engine["rollup_posts"].values()) == {engine["rows"]}
    assert figures["worker_engine_rows_s_embedded"]["value"] == engine["rows_per_s"] > 0
    ratio = figures["worker_engine_ratio_embedded"]
    drain_rate = figures["worker_rows_s_embedded"]["value"]
    assert ratio["value"] == round(drain_rate / engine["rows_per_s"], 3) and ratio["target"] == "≥ 0.8"
    assert ratio["ok"] is (ratio["value"] >= 0.8)
    assert doc["raw"]["e2e"]["samples"] >= 1
    assert figures["e2e_lag_p99"]["value"] > 0
    for key in ("query_bot_30d_p50", "query_bot_1y_p50", "query_uptime_2w_p50", "query_bots_page_p50"):
        # A figure, or the honest reason there is none (a route not served yet).
        assert figures[key].get("value") or figures[key]["note"], figures[key]
    # The engine's own time for the statements of the stats answer, run by a child after the
    # service stopped, and the service's p50 divided by it.
    engine = doc["raw"]["query"]["engine"]
    for key in ("query_bot_30d", "query_bot_30d_aligned"):
        # The seeded bots have no custom events, names, properties or shards: the head and the
        # buckets (query/bot_reads.py).
        assert engine[key]["total_ms"] > 0 and len(engine[key]["statements_ms"]) == 2, engine
        ratio = figures[f"{key}_engine_ratio"]
        assert ratio["target"] == "≤ 1.15x" and ratio["value"] == round(
            figures[f"{key}_p50"]["value"] / engine[key]["total_ms"], 2
        ), ratio
    assert figures["gateway_peak_rss"]["value"] > 0
    # The listing's scaling figure: both registries measured, the ratio reported against 2x.
    assert figures["query_listing_small_p50"]["value"] > 0, figures["query_listing_small_p50"]
    assert figures["query_listing_scale"]["value"] > 0 and figures["query_listing_scale"]["target"] == "≤ 2x"


def _assert_appender_distribution(doc: dict, figures: dict) -> None:
    """What the paced gateway's appender saw: every post of the run in some write, once."""
    paced = doc["raw"]["gateway"]["runs"]["gateway_1p_70pct"]
    result, inside = paced["result"], paced["inside"]
    posts = inside["posts_per_write"]
    counted = result["statuses"].get("204", 0) + result["warmup_statuses"].get("204", 0)
    sent = sum(result["statuses"].values()) + sum(result["warmup_statuses"].values())
    # Answered posts were all appended; at most one per connection more was still in flight.
    assert counted <= posts["sum"] <= sent + result["connections"], (posts, result)
    assert 1 <= posts["count"] <= posts["sum"]
    assert sum(posts["buckets"].values()) == posts["count"]
    assert inside["oldest_wait_ms"]["count"] == posts["count"]  # both are per write
    assert inside["request_ms"]["count"] >= counted  # the whole post, one per request
    assert figures["gateway_70pct_posts_per_write"]["value"] == round(posts["mean"], 2) >= 1
    assert f"{posts['count']:,.0f} writes" in figures["gateway_70pct_posts_per_write"]["note"]
    wait = figures["gateway_70pct_oldest_wait_p99"]
    assert wait["value"] is None or wait["value"] > 0, wait
    assert "Redis round trip per write: p50" in wait["note"] and "whole post: p50" in wait["note"]


def _assert_sustain(doc: dict, figures: dict) -> None:
    """The box ran (`botpulse dev`), the full-duration run happened, and the ratio is taken
    against this run's gateway peak, or there is none and the figures say why."""
    raw = doc["raw"]["sustain"]
    peak = figures["gateway_rps_1p"]["value"]
    assert raw["peak"] == peak and raw["start_rate"] == round(0.5 * peak, 1)
    holds = [s for s in raw["steps"] if s["kind"] == "hold"]
    assert holds and holds[0]["duration_s"] == doc["sizes"]["sustain_s"]
    for step in raw["steps"]:
        assert step["lag_samples"] >= 1 or step["why"], step
        assert step["held"] == (step["why"] == ""), step
        assert step["inside"]["posts_per_write"]["sum"] >= 1, step  # the box's gateway took posts
    rate, ratio = figures["sustain_rps"], figures["sustain_ratio"]
    assert ratio["target"] == "≥ 0.8"
    if raw["held"] is not None:
        assert rate["value"] == raw["held"]["achieved"] > 0
        assert ratio["value"] == round(rate["value"] / peak, 3)
        assert ratio["ok"] == (ratio["value"] >= 0.8)
        assert f"1-process gateway peak {peak:,.0f} req/s" in ratio["note"]
    else:  # a loaded machine may hold nothing: a miss, with the reason
        assert rate.get("value") is None and rate["note"].startswith("no rate held for")
        assert ratio.get("value") is None and ratio["ok"] is False and "no rate held" in ratio["note"]


def test_py_spy_stacks_are_summed_by_function(tmp_path):
    raw = tmp_path / "stacks.txt"
    main = "_run_module_as_main (<frozen runpy>:198)"
    raw.write_text(
        f"{main};run (workers/runner.py:10);insert (runtime/clickhouse.py:5) 3\n"
        f"{main};run (workers/runner.py:12);decode (schemas/stream.py:7) 1\n"
    )
    text = summary(raw, "worker")
    assert "4 samples" in text
    inclusive, own = text.split("self (")
    assert "100.0%  run (workers/runner.py)" in inclusive  # two lines of one function add up
    assert "75.0%  insert (runtime/clickhouse.py)" in own
    assert "25.0%  decode (schemas/stream.py)" in own
    assert "frozen runpy" not in inclusive  # interpreter plumbing is left out
