"""The gateway and the query service as real processes (`botpulse gateway|query`) on free
127.0.0.1 ports, for tests that talk to them over HTTP from outside (schemathesis, scrapes of
several gateway processes). Each stops with the test (PR_SET_PDEATHSIG as well)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from botpulse.runtime.processes import free_port, spawn_child


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not become healthy")


@contextlib.contextmanager
def service(args: list[str], env: dict[str, str], port: int) -> Iterator[str]:
    process = spawn_child([sys.executable, "-m", "botpulse", *args, "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def base_env(redis_url: str, data_dir: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTPULSE_") and k != "CLICKHOUSE_URL"}
    env.update(
        REDIS_URL=redis_url,
        CLICKHOUSE_URL=f"chdb://{data_dir / 'clickhouse'}",  # its own engine path: one process each
        BOTPULSE_DATA_DIR=str(data_dir),
        BOTPULSE_LOG_LEVEL="warning",
        BOTPULSE_LOG_FORMAT="json",
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(settings)
    return env


def call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


def free() -> int:
    return free_port()
