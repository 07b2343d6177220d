"""The bench's peers (VictoriaMetrics, InfluxDB 1.x) answer the same data botpulse serves, and
their figures are produced; when they are not installed the phase says so and gives no value.
Never a timing assertion: how fast is the business of `botpulse bench`, not of the suite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from botpulse.bench import peers
from botpulse.bench.context import Bench
from botpulse.bench.loadgen import build_requests
from botpulse.bench.sizes import TINY
from botpulse.schemas.stats import STATS_FIELDS

REPO = Path(__file__).resolve().parents[1]
INSTALLED = peers.locate()


def test_missing_peers_are_reported_skipped_without_a_value(tmp_path):
    assert peers.locate(str(tmp_path)) == {}  # a search path without them finds nothing
    b = Bench(TINY, tmp_path, "builtin", echo=False)
    peers.run(b, found={})
    figures = {f.key: f for f in b.figures}
    for key in (
        "peer_victoria-metrics_aligned_p50",
        "peer_ratio_victoria-metrics_aligned",
        "peer_ratio_victoria-metrics_any",
        "peer_ratio_influxd_aligned",
        "peer_influx_writes_1p",
        "peer_ratio_ingest_1p",
        "peer_floor_victoria-metrics_aligned",
        "peer_floor_victoria-metrics_any",
    ):
        assert figures[key].value is None and figures[key].ok is None
        assert figures[key].note.startswith("skipped: install Debian's victoria-metrics / influxdb")
    assert figures["peer_ratio_victoria-metrics_aligned"].target == "≤ 1.0x"
    assert figures["peer_ratio_victoria-metrics_any"].target == "≤ 2.0x"
    assert b.raw["peers"]["installed"] == {}


def test_peer_writes_carry_the_gateway_bodys_eight_numbers():
    line = peers.INGEST_LINE
    assert line.startswith("bot_stats,bot={bot} ")
    fields = dict(kv.split("=") for kv in line.split(" ", 1)[1].split(","))
    assert list(fields) == [f.column for f in STATS_FIELDS]
    assert fields["guilds"] == "1234i" and fields["api_ping"] == "41.5"  # integer and float types
    (request,) = build_requests(8086, [["42", "key"]], line.encode(), peers.INGEST_PATH)
    head, body = request.split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /write?db=ingest HTTP/1.1\r\n")
    assert body.startswith(b"bot_stats,bot=42 guilds=1234i,")
    assert f"Content-Length: {len(body)}".encode() in head


@pytest.mark.skipif(
    set(INSTALLED) != {peers.VM, peers.INFLUX},
    reason="the bench's peers are not installed (apt-get install victoria-metrics influxdb); "
    "they are for measuring, never a dependency",
)
def test_tiny_peers_run_answers_botpulse_data(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--only", "peers", "--generator", "builtin",
         "--no-docs", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads((tmp_path / "tiny-latest.json").read_text())
    assert doc["failed"] == {}
    raw = doc["raw"]["peers"]
    figures = {f["key"]: f for f in doc["figures"]}
    for name in (peers.VM, peers.INFLUX):
        for span in ("aligned", "any"):
            check = raw["checks"][name][span]
            # Every value botpulse answered, the peer answered the same (none missing, none off).
            assert check["mismatch_count"] == 0, check["mismatches"]
            assert check["values_agreeing"] >= 8 * 80, check  # most of the 90 buckets hold posts
            mine, theirs = check["botpulse_sample"], check["peer_sample"]
            assert mine and mine["guilds"] is not None
            assert theirs == pytest.approx(mine, rel=1e-9)
            assert figures[f"peer_{name}_{span}_p50"]["value"] > 0
            assert figures[f"peer_ratio_{name}_{span}"]["value"] > 0
            assert raw["reads"][name][span]["samples"] == TINY.query_requests
    # The botpulse side of the ratios was measured in the same phase.
    assert raw["reads"]["botpulse"]["aligned"]["p50_ms"] > 0
    assert "botpulse p50" in figures["peer_ratio_victoria-metrics_aligned"]["note"]
    # Both ways botpulse answers, from memory (the default) and from the tables, were read, and
    # gave the same answers.
    for span in ("aligned", "any"):
        assert raw["reads"][peers.TABLES][span]["p50_ms"] > 0
        same = raw["checks"][peers.TABLES][span]
        assert same["mismatch_count"] == 0 and same["values_agreeing"] >= 8 * 80, same
        note = figures[f"peer_ratio_{peers.VM}_{span}"]["note"]
        assert "from the tables (BOTPULSE_QUERY_MEMORY_HOURS=0)" in note and "answers the same" in note
    # The engine's floor (one statement, one table) was timed on the same data, against the
    # peer's whole answer of the same phase.
    for span in ("aligned", "any"):
        low = raw["engine_floor"][span]
        assert low["statement_ms"] > 0 and low["table_ms"] > 0 and low["rows"] > 0, low
        floor = figures[f"peer_floor_{peers.VM}_{span}"]
        vm = figures[f"peer_{peers.VM}_{span}_p50"]["value"]
        assert floor["value"] == round(low["table_ms"] / vm, 2), (floor, vm)
        assert f"{low['table_ms']} ms" in floor["note"]
    # Ingest: every InfluxDB write was accepted, and the gateway ran beside it.
    influx = raw["ingest"]["influxdb_1p"]["result"]
    assert influx["statuses"].get("204", 0) == influx["requests"] > 0
    assert figures["peer_influx_writes_1p"]["value"] > 0
    assert figures["peer_ratio_ingest_1p"]["value"] > 0
    assert raw["ingest"]["gateway_1p"]["result"]["statuses"].get("204", 0) > 0
