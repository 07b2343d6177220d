"""Child processes of a benchmark run: start, wait until they answer, read their peak RSS, stop.

psutil is not a dependency: peak RSS is `VmHWM` from /proc/<pid>/status, and a process's
children are found by scanning /proc for its pid as their parent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from botpulse.runtime.processes import spawn_child


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces or parentheses: fields start after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(pid: int) -> list[int]:
    """`pid` and every live process below it."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (ppid := _parent_of(int(entry))) is not None:
            parents[int(entry)] = ppid
    found = [pid]
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        for child, ppid in parents.items():
            if ppid == current and child not in found:
                found.append(child)
                frontier.append(child)
    return found


def peak_rss_mb(pid: int) -> float | None:
    """The process's high-water resident set size, in MiB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def role_of(pid: int) -> str:
    """A process's part in a stack, from its command line: `gateway`, `worker`, `query`, `redis`
    (valkey or redis-server), `dev` (the parent of `botpulse dev`), else its program's name."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    words = [a.decode(errors="replace") for a in argv if a]
    program = Path(words[0]).name if words else "?"
    if "valkey" in program or "redis-server" in program:
        return "redis"
    if "botpulse" in words:
        rest = words[words.index("botpulse") + 1 :]
        return rest[0] if rest else "botpulse"
    return program


def cores_by_role(before: dict[int, float], after: dict[int, float], wall_s: float) -> dict[str, float]:
    """CPU seconds per wall second between two `cpu_by_pid` readings, summed per `role_of`
    (a process that started between them counts from zero)."""
    cores: dict[str, float] = {}
    for pid, cpu in after.items():
        role = role_of(pid)
        cores[role] = cores.get(role, 0.0) + (cpu - before.get(pid, 0.0)) / wall_s
    return {role: round(v, 2) for role, v in sorted(cores.items())}


def cpu_by_pid(root: int) -> dict[int, float]:
    """CPU seconds so far of a process and each live descendant."""
    return {pid: cpu for pid in descendants(root) if (cpu := cpu_seconds(pid)) is not None}


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except OSError:
        return False


class Service:
    """One child process (and whatever it forks), its output kept in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with open(self.log_path, "ab") as log:
            self.proc = spawn_child(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_http(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited before answering; log:\n{self.log_tail()}")
            if http_ok(url):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer {url} within {timeout:.0f}s; log:\n{self.log_tail()}")

    def processes(self) -> list[int]:
        return descendants(self.pid) if self.alive() else []

    def peak_rss(self) -> dict[int, float]:
        """Peak RSS (MiB) of the process and each live descendant, keyed by pid."""
        return {pid: mb for pid in self.processes() if (mb := peak_rss_mb(pid)) is not None}

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) or 0.0 for pid in self.processes())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""
