"""Profiles of services that work in threads (the worker's and the query service's ClickHouse
calls run on `Store`'s thread pool, where pyinstrument cannot see): py-spy attached to the
running process samples every thread, and the raw stacks are summed up here into where the
time goes, by function, inclusive and self."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

RATE_HZ = 200


def executable() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Spy:
    """py-spy recording one process until `stop()`; then `summary()` of its stacks."""

    def __init__(self, pid: int, raw: Path) -> None:
        self.raw = raw
        exe = executable()
        if exe is None:
            raise RuntimeError("py-spy is not installed")
        args = [exe, "record", "--pid", str(pid), "--format", "raw", "--output", str(raw)]
        args += ["--rate", str(RATE_HZ), "--nonblocking"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> bool:
        """Stop sampling (py-spy writes its file on SIGINT); True when stacks were written."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.raw.exists() and self.raw.stat().st_size > 0


# Frames every stack passes through (interpreter start-up, thread and event-loop plumbing):
# left out of the inclusive list, where they would only crowd out the functions that matter.
_PLUMBING = (
    "(<frozen runpy>)", "(botpulse/__main__.py)", "(botpulse/cli.py)", "(threading.py)",
    "(futures/thread.py)", "(asyncio/base_events.py)", "(asyncio/runners.py)", "(asyncio/events.py)",
)  # fmt: skip


def _frame(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)" so lines of one function add up.
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{name} ({short})" if where else frame


def summary(raw: Path, title: str, top: int = 30) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if f]
        total += count
        for frame in set(frames):
            if not frame.endswith(_PLUMBING):
                inclusive[frame] += count
        if frames:
            own[frames[-1]] += count
    if not total:
        return f"{title}: no samples\n"
    seconds = total / RATE_HZ
    out = [
        f"{title}",
        f"py-spy, {RATE_HZ} Hz, all threads, idle excluded: {total} samples"
        f" (~{seconds:.1f} thread-seconds busy)",
        "",
        "inclusive (time in the function and what it calls):",
    ]
    out += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    out += ["", "self (time in the function's own code):"]
    out += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    return "\n".join(out) + "\n"
