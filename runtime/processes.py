"""Child processes and ports: what the gateway's SO_REUSEPORT parent, the dev stack, the bench
and the tests use to start children that never outlive their parent."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn_child(args: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """Start a child process that is terminated if this process dies (no orphans in tests)."""
    return subprocess.Popen(args, preexec_fn=_die_with_parent, **kwargs)  # type: ignore[call-overload]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
