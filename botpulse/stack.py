"""The running `botpulse dev` stack's address file, `<data_dir>/stack.json`: `botpulse dev`
writes it while it runs and removes it when it stops; operator commands read it to reach the
stack over HTTP or Redis (its process holds the embedded chDB engine, which allows one process
only)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from botpulse.runtime.processes import pid_alive
from botpulse.runtime.settings import Settings


class StackInfo(msgspec.Struct):
    """How operator commands reach the running stack."""

    pid: int
    gateway_url: str
    query_url: str
    redis_url: str
    admin_token: str


def stack_file(settings: Settings) -> Path:
    return Path(settings.data_dir) / "stack.json"


def write_stack(settings: Settings, info: StackInfo) -> None:
    # It carries the operator token: readable by this user only, like admin_token and demo.json.
    path = stack_file(settings)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_bytes(msgspec.json.encode(info))


def remove_stack(settings: Settings) -> None:
    stack_file(settings).unlink(missing_ok=True)


def read_stack(settings: Settings) -> StackInfo | None:
    """The running embedded stack, if any: a file left by a stack that died does not count."""
    try:
        info = msgspec.json.decode(stack_file(settings).read_bytes(), type=StackInfo)
    except (OSError, msgspec.DecodeError):
        return None
    return info if pid_alive(info.pid) else None
