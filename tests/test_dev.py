"""`botpulse dev` as a user runs it: a real subprocess on the embedded default. The printed curl
works, the data comes back from the query service, Ctrl-C stops everything, and a second run
finds the same data again."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from botpulse.runtime.processes import free_port, pid_alive, spawn_child


def _start(data_dir: Path, gport: int, qport: int) -> tuple[subprocess.Popen[str], list[str]]:
    env = dict(
        os.environ,
        BOTPULSE_DATA_DIR=str(data_dir),
        BOTPULSE_GATEWAY_PORT=str(gport),
        BOTPULSE_QUERY_PORT=str(qport),
        BOTPULSE_LOG_LEVEL="warning",
    )
    env.pop("REDIS_URL", None)
    env.pop("CLICKHOUSE_URL", None)
    proc = spawn_child(
        [sys.executable, "-m", "botpulse", "dev"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 90
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if "Ctrl-C stops everything" in line:
            return proc, lines
    proc.kill()
    raise AssertionError("dev did not come up:\n" + "\n".join(lines))


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.mark.skipif(shutil.which("curl") is None, reason="the printed command is a curl command")
def test_dev_prints_a_working_curl_and_finds_its_data_again(tmp_path):
    data_dir = tmp_path / "bp"
    gport, qport = free_port(), free_port()
    proc, lines = _start(data_dir, gport, qport)
    try:
        text = "\n".join(lines)
        post = next(line.strip() for line in lines if line.strip().startswith("curl -i -X POST"))
        read = next(line.strip() for line in lines if line.strip().startswith("curl '"))
        key = re.search(r"API key: (DS-\S+)", text).group(1)
        assert f"127.0.0.1:{gport}" in post and key in post
        # The stack file carries the operator token: this user only.
        assert (data_dir / "stack.json").stat().st_mode & 0o777 == 0o600

        result = subprocess.run(shlex.split(post), capture_output=True, text=True, timeout=10)
        assert "HTTP/1.1 204" in result.stdout, result.stdout + result.stderr

        read_url = shlex.split(read)[1].split("?")[0]
        # Generous: the worker normally shows a post within a second, but CI machines can be loaded.
        deadline = time.monotonic() + 60
        body: dict = {}
        while time.monotonic() < deadline:
            body = _get_json(read_url)
            if body.get("lastSeen"):
                break
            time.sleep(0.1)
        assert body["lastSeen"], body
        first_seen = body["lastSeen"]
        redis_pid = int((data_dir / "redis" / "valkey.pid").read_text())
        assert pid_alive(redis_pid)
        # The alert evaluator runs inside the stack: it registered and holds the slots.
        stack = json.loads((data_dir / "stack.json").read_text())
        with redis.Redis.from_url(stack["redis_url"]) as client:
            assert client.zcard("bp:alerts:members") == 1
    finally:
        _stop(proc)
    assert not (data_dir / "stack.json").exists()
    assert not pid_alive(redis_pid)  # Ctrl-C stopped the embedded Redis too

    proc, lines = _start(data_dir, gport, qport)
    try:
        assert key in "\n".join(lines)  # the same demo account, found again
        body = _get_json(read_url)
        assert body["lastSeen"] == first_seen
    finally:
        _stop(proc)
