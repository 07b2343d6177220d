"""The parts an embedded stack owns (the bundled Redis, the gateway child, the in-process worker
and alert evaluator), kept running: a part that dies is logged once, restarted with backoff, and
reported by the query service's `/readyz` while it is down. A part that cannot come back
(`MAX_TRIES` failed starts in a row, or `MAX_DEATHS` deaths within `DEATH_WINDOW_S`) stops the
whole stack, which exits non-zero with the reason (`Supervisor.failure`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable

from aiohttp import web

from botpulse.query.resources import READINESS
from botpulse.runtime.logs import get_logger

log = get_logger("supervisor")

MAX_TRIES = 5  # failed starts in a row before giving up on a part
MAX_DEATHS = 10  # deaths within DEATH_WINDOW_S: a crash loop, given up on too
DEATH_WINDOW_S = 300.0
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0


class Supervisor:
    def __init__(self) -> None:
        self.down: dict[str, str] = {}  # part -> why it is down
        self.restarts: dict[str, int] = {}
        self.failure: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def problem(self) -> str | None:
        """For `/readyz`: every part that is down and why."""
        if not self.down:
            return None
        return "; ".join(self.down.values())

    def keep(
        self,
        name: str,
        died: Callable[[], Awaitable[str]],
        start: Callable[[], Awaitable[None]],
    ) -> None:
        """Watch a running part: `died()` returns (why) when it has died, `start()` brings it
        back (raising when it could not)."""
        self._tasks.append(asyncio.create_task(self._keep(name, died, start), name=f"keep-{name}"))

    async def _keep(
        self, name: str, died: Callable[[], Awaitable[str]], start: Callable[[], Awaitable[None]]
    ) -> None:
        deaths: deque[float] = deque()
        while True:
            reason = await died()
            if self._stopping:
                return
            now = time.monotonic()
            deaths.append(now)
            while deaths and deaths[0] < now - DEATH_WINDOW_S:
                deaths.popleft()
            self.down[name] = f"{name} is down ({reason}), restarting"
            log.error(f"{name} died; restarting it", part=name, reason=reason)
            if len(deaths) > MAX_DEATHS:
                self.give_up(
                    f"{name} died {len(deaths)} times within {DEATH_WINDOW_S:.0f} s (last: {reason})"
                )
                return
            error: BaseException | None = None
            for attempt in range(1, MAX_TRIES + 1):
                await asyncio.sleep(min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))
                if self._stopping:
                    return
                try:
                    await start()
                except Exception as exc:
                    error = exc
                    self.down[name] = (
                        f"{name} is down ({reason}); restart {attempt}/{MAX_TRIES} failed: {exc}"
                    )
                    log.warning(f"{name} did not come back", part=name, attempt=attempt, error=str(exc))
                    continue
                break
            else:
                self.give_up(f"{name} could not be restarted after {MAX_TRIES} tries: {error}")
                return
            self.restarts[name] = self.restarts.get(name, 0) + 1
            self.down.pop(name, None)
            log.info(f"{name} is back", part=name, restarts=self.restarts[name])

    def give_up(self, reason: str) -> None:
        """Stop the stack: SIGTERM to this process runs the ordinary graceful shutdown (the worker
        flushes and acknowledges what it can); the command then exits non-zero with `reason`."""
        if self.failure is not None:
            return
        self.failure = reason
        self.down["stack"] = f"stopping: {reason}"
        log.error("a part of the stack cannot come back; stopping", reason=reason)
        os.kill(os.getpid(), signal.SIGTERM)

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()


async def process_exit(proc) -> str:  # type: ignore[no-untyped-def]
    """Returns once the child process `proc` (a Popen) has exited: how it ended."""
    while True:
        code = proc.poll()
        if code is not None:
            break
        await asyncio.sleep(0.25)
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def supervisor_of(app: web.Application) -> Supervisor:
    """The app's supervisor (created on first use, before the app starts), its problems reported
    by `/readyz`, its watching stopped when the app shuts down (a part stopped on purpose is not a
    death)."""
    if SUPERVISOR not in app:
        supervisor = app[SUPERVISOR] = Supervisor()
        app[READINESS].append(supervisor.problem)

        async def stop(app: web.Application) -> None:
            await supervisor.stop()

        app.on_shutdown.append(stop)
    return app[SUPERVISOR]


SUPERVISOR = web.AppKey("supervisor", Supervisor)
