"""`botpulse bench` / `python -m botpulse.bench`: run the phases, print the table, write the results."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from botpulse.bench.context import Bench

REPO = Path(__file__).resolve().parents[1]

# Phase name -> module with `run(bench)`; imported when a run starts, so registering the
# subcommand costs every other `botpulse` command nothing.
PHASES = ["gateway", "worker", "e2e", "sustain", "query", "peers"]
GATEWAY_RSS_TARGET_MB = 80


def add_arguments(p: argparse.ArgumentParser) -> None:
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="everything small, in about five minutes")
    size.add_argument("--tiny", action="store_true", help="minimal sizes (the test suite's smoke run)")
    p.add_argument("--only", default=",".join(PHASES), help=f"comma-separated phases of: {', '.join(PHASES)}")
    p.add_argument(
        "--generator",
        choices=["auto", "wrk", "builtin"],
        default="auto",
        help="peak-load generator: wrk when installed (auto), or the built-in one",
    )
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="where the JSON goes")
    p.add_argument(
        "--docs", type=Path, default=None, help="doc to update (default: docs/benchmarks.md on full runs)"
    )
    p.add_argument("--no-docs", action="store_true", help="never touch the docs")
    p.add_argument("--keep", action="store_true", help="keep the work directory (service logs, data)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure every speed target (see docs/benchmarks.md)")
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from botpulse.bench import report, wrk
    from botpulse.bench.context import RAISED_LIMITS, Bench, Figure
    from botpulse.bench.sizes import BY_NAME

    sizes = BY_NAME["tiny" if args.tiny else "quick" if args.quick else "full"]
    asked = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in asked if name not in PHASES]
    # Always in PHASES' order: a phase that reads an earlier one's figure (sustain reads the
    # gateway's peak) finds it whatever order --only names them in.
    phases = [name for name in PHASES if name in asked]
    if unknown:
        print(f"botpulse bench: unknown phase(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    if args.generator == "wrk" and not wrk.available():
        print(
            "botpulse bench: --generator wrk but wrk is not installed (apt-get install wrk)", file=sys.stderr
        )
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="botpulse-bench-"))
    b = Bench(sizes, workdir, args.generator)
    generator = "wrk + bench/wrk_post.lua" if b.use_wrk(False) else "built-in (bench/loadgen.py)"
    machine = report.machine_info()
    b.say(f"{sizes.mode} run, phases {', '.join(phases)}, peak load from {generator}, work dir {workdir}")
    started = time.monotonic()
    failed: dict[str, str] = {}
    try:
        for name in phases:
            try:
                importlib.import_module(f"botpulse.bench.{name}").run(b)
            except Exception as exc:
                failed[name] = "".join(traceback.format_exception_only(exc)).strip()
                b.say(f"{name}: FAILED\n{traceback.format_exc()}")
                b.figure(
                    Figure(f"{name}_failed", f"{name} phase", None, "", "runs", False, failed[name][:300])
                )
    finally:
        b.close()
    _memory_figures(b)
    elapsed = round(time.monotonic() - started, 1)
    meta = {
        "mode": sizes.mode,
        "generator": generator,
        "fixed_rate_generator": "built-in (bench/loadgen.py)",
        "machine": machine,
        "elapsed_s": elapsed,
        "sizes": msgspec.to_builtins(sizes),
        "raised_limits": RAISED_LIMITS,
        "phases": phases,
        "failed": failed,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"full-{stamp}" if sizes.mode == "full" else f"{sizes.mode}-latest"
    result_path = args.out / f"{name}.json"
    document = {**meta, "figures": msgspec.to_builtins(b.figures), "peak_rss_mb": b.peak_rss, "raw": b.raw}
    profiles = {}
    for name, path in b.profiles.items():
        if path.exists():
            target = args.out / (
                f"{name}-profile.txt" if sizes.mode == "full" else f"{sizes.mode}-{name}-profile.txt"
            )
            shutil.copyfile(path, target)
            profiles[name] = str(target.relative_to(REPO)) if target.is_relative_to(REPO) else str(target)
        else:
            b.say(f"profile of {name} was not written")
    document["profiles"] = profiles
    result_path.write_bytes(msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n")
    print()
    print(report.table(b.figures))
    print(f"\n{sizes.mode} run took {elapsed} s; results in {result_path}")
    docs = args.docs or (REPO / "docs" / "benchmarks.md" if sizes.mode == "full" else None)
    if docs and not args.no_docs:
        try:
            shown = result_path.relative_to(REPO)
        except ValueError:
            shown = result_path
        report.update_docs(docs, report.markdown(b.figures, meta, str(shown)))
        print(f"updated {docs}")
    if args.keep:
        print(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def _memory_figures(b: Bench) -> None:
    from botpulse.bench.context import Figure

    gateways = {k: v for k, v in b.peak_rss.items() if k.startswith("gateway")}
    if gateways:
        worst = max(gateways, key=gateways.__getitem__)
        b.figure(
            Figure(
                "gateway_peak_rss",
                "gateway peak RSS (largest process)",
                gateways[worst],
                "MiB",
                f"≤ {GATEWAY_RSS_TARGET_MB} MiB",
                gateways[worst] <= GATEWAY_RSS_TARGET_MB,
                f"in run '{worst}'",
            )
        )
    for label, mb in b.peak_rss.items():
        if not label.startswith("gateway"):
            b.figure(Figure(f"rss_{label}", f"peak RSS: {label}", mb, "MiB"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m botpulse.bench", description="Measure every botpulse speed target."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
