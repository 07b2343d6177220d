"""Health of a part a process runs in the background (the embedded worker), for readiness.

A composer that runs such a part puts its `Health` under `WORKER_HEALTH` on the aiohttp app; a
`/readyz` handler reads `app.get(WORKER_HEALTH)` and answers 503 with `reason` while `ready` is
false. The part updates it; nobody else writes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Health:
    """`ready`: the part is running and its last step reached its backends. `reason`: why not
    (the last Redis or ClickHouse error, or that the part stopped), one line."""

    ready: bool = False
    reason: str = "starting"
    since: float = field(default_factory=time.time)
    restarts: int = 0

    def set(self, ready: bool, reason: str = "") -> None:
        if ready != self.ready or reason != self.reason:
            self.ready, self.reason, self.since = ready, reason, time.time()


WORKER_HEALTH = web.AppKey("worker_health", Health)
