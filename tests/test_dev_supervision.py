"""`botpulse dev` keeps its parts running (issue #13): kill -9 of the bundled valkey or of the
gateway child under a running stack, on free ports in a temporary BOTPULSE_DATA_DIR. The part
comes back (Redis on the same port, from its AOF), `/readyz` names it while it is down, posts flow
again and none is lost; a part that cannot come back stops the stack with a non-zero exit and
the reason."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from botpulse.runtime.processes import free_port, pid_alive, spawn_child


class Stack:
    def __init__(self, data_dir: Path) -> None:
        self.gport, self.qport = free_port(), free_port()
        env = dict(
            os.environ,
            BOTPULSE_DATA_DIR=str(data_dir),
            BOTPULSE_GATEWAY_PORT=str(self.gport),
            BOTPULSE_QUERY_PORT=str(self.qport),
            BOTPULSE_LOG_LEVEL="info",
            BOTPULSE_LOG_FORMAT="console",
            BOTPULSE_CUSTOM_RATE_PER_MIN="100000",
        )
        for name in ("REDIS_URL", "CLICKHOUSE_URL"):
            env.pop(name, None)
        self.proc = spawn_child(
            [sys.executable, "-m", "botpulse", "dev"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.up = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.up.wait(120), "dev did not come up:\n" + self.output()
        self.key = re.search(r"API key: (DS-\S+)", self.output()).group(1)  # type: ignore[union-attr]
        self.bot = re.search(r"demo bot (\d+)", self.output()).group(1)  # type: ignore[union-attr]
        self.data_dir = data_dir
        self.sent = 0

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "Ctrl-C stops everything" in line:
                self.up.set()

    def output(self) -> str:
        return "\n".join(self.lines)

    def redis_pid(self) -> int:
        return int((self.data_dir / "redis" / "valkey.pid").read_text())

    def redis_port(self) -> int:
        return int(
            json.loads((self.data_dir / "stack.json").read_text())["redis_url"].split(":")[2].split("/")[0]
        )

    def gateway_pid(self) -> int:
        children = psutil.Process(self.proc.pid).children()
        return next(c.pid for c in children if "gateway" in " ".join(c.cmdline()))

    def ready(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.qport}/readyz", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def post(self) -> int:
        self.sent += 1
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.gport}/v1/bot/{self.bot}/custom",
            data=json.dumps({"type": "sup", "value1": f"v{self.sent}"}).encode(),
            headers={"Authorization": self.key, "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    def stored(self) -> dict[str, int]:
        url = f"http://127.0.0.1:{self.qport}/v1/bot/{self.bot}/top?type=sup&limit=100"
        req = urllib.request.Request(url, headers={"Authorization": self.key})
        with urllib.request.urlopen(req, timeout=10) as r:
            return {t["value"]: t["count"] for t in json.loads(r.read())["top"]}


def wait_for(check, within_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within_s
    while True:
        with contextlib.suppress(Exception):
            if result := check():
                return result
        assert time.monotonic() < deadline, f"not reached within {within_s} s: {what}"
        time.sleep(0.1)


def test_dev_restarts_killed_redis_and_gateway_then_gives_up_on_a_redis_that_cannot_start(tmp_path):
    stack = Stack(tmp_path / "bp")
    try:
        acked = []
        for _ in range(5):
            assert stack.post() == 200
            acked.append(f"v{stack.sent}")
        assert stack.ready()[0] == 200

        # Redis killed, and its port held by someone else for a while: the first restarts fail,
        # /readyz says why, then the port is free again and Redis comes back on it.
        port, old = stack.redis_port(), stack.redis_pid()
        blocker = socket.socket()
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        os.kill(old, signal.SIGKILL)
        wait_for(
            lambda: not pid_alive(old) or psutil.Process(old).status() == psutil.STATUS_ZOMBIE, 10, "kill"
        )
        wait_for(lambda: blocker.bind(("127.0.0.1", port)) or True, 5, "the port held")
        blocker.listen()
        # /readyz names the part that is down (the worker backing off on Redis may be named too).
        _, body = wait_for(
            lambda: (s := stack.ready())[0] == 503 and "redis is down" in s[1]["message"] and s,
            20,
            "/readyz naming the Redis that is down",
        )
        assert any(p.startswith("redis is down (killed by SIGKILL)") for p in body["problems"]), body
        assert stack.post() == 503  # the gateway: Redis is away, a clear 503
        blocker.close()
        wait_for(lambda: stack.ready()[0] == 200, 40, "the stack ready again")
        assert stack.redis_pid() != old and stack.redis_port() == port
        assert "redis died; restarting it" in stack.output()
        assert "redis is back" in stack.output()
        for _ in range(5):
            assert wait_for(lambda: stack.post() == 200, 20, "posts accepted again")
            acked.append(f"v{stack.sent}")

        # The gateway child killed: it comes back on its port.
        gateway = stack.gateway_pid()
        os.kill(gateway, signal.SIGKILL)
        wait_for(lambda: "gateway died; restarting it" in stack.output(), 10, "the gateway's death logged")
        for _ in range(3):
            assert wait_for(lambda: stack.post() == 200, 40, "posts through the new gateway")
            acked.append(f"v{stack.sent}")
        assert stack.gateway_pid() != gateway

        # Every acknowledged post stored exactly once (the AOF held what Redis had).
        def all_stored() -> dict[str, int] | None:
            stored = stack.stored()
            return stored if set(acked) <= set(stored) else None

        stored = wait_for(all_stored, 60, "every acknowledged post stored")
        assert all(stored[v] == 1 for v in acked), stored

        # Redis that cannot come back (its port taken for good): the stack stops, non-zero, saying why.
        port, old = stack.redis_port(), stack.redis_pid()
        blocker = socket.socket()
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        os.kill(old, signal.SIGKILL)
        wait_for(
            lambda: not pid_alive(old) or psutil.Process(old).status() == psutil.STATUS_ZOMBIE, 10, "kill"
        )
        wait_for(lambda: blocker.bind(("127.0.0.1", port)) or True, 5, "the port held")
        blocker.listen()
        try:
            code = stack.proc.wait(120)
        finally:
            blocker.close()
        assert code != 0
        time.sleep(0.5)
        assert "redis could not be restarted after 5 tries" in stack.output(), stack.output()[-3000:]
        assert not (tmp_path / "bp" / "stack.json").exists()
    finally:
        if stack.proc.poll() is None:
            stack.proc.send_signal(signal.SIGINT)
            try:
                stack.proc.wait(30)
            except subprocess.TimeoutExpired:
                stack.proc.kill()
