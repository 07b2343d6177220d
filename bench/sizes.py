"""How big and how long each phase runs: the full run, `--quick` (under two minutes) and the
`--tiny` smoke sizes the test suite uses."""

from __future__ import annotations

import msgspec


class Sizes(msgspec.Struct, frozen=True, kw_only=True):
    mode: str
    # gateway vs baseline
    accounts: int
    bots: int
    connections: int
    warmup_s: float
    duration_s: float
    gateway_processes: tuple[int, ...] = (1, 2)
    repeats: int = 1  # baseline/gateway pairs per process count; the best of each counts
    profile: bool = True
    # worker drain
    drain_entries: int
    drain_timeout_s: float
    # end to end
    e2e_rate: float
    e2e_duration_s: float
    e2e_probes: int
    # query
    query_bots: int
    query_days: int
    query_long_days: int
    query_requests: int
    # the listing's scaling figure: (bots, days) of a small and a large registry, posts hourly
    listing_small: tuple[int, int] = (100, 30)
    listing_large: tuple[int, int] = (1000, 365)


FULL = Sizes(
    mode="full",
    accounts=100,
    bots=1000,
    connections=64,
    warmup_s=2,
    duration_s=10,
    repeats=2,
    drain_entries=1_000_000,
    drain_timeout_s=300,
    e2e_rate=2000,
    e2e_duration_s=30,
    e2e_probes=4,
    query_bots=50,
    query_days=30,
    query_long_days=365,
    query_requests=300,
)

QUICK = Sizes(
    mode="quick",
    accounts=10,
    bots=100,
    connections=32,
    warmup_s=1,
    duration_s=2,
    drain_entries=30_000,
    drain_timeout_s=60,
    e2e_rate=2000,
    e2e_duration_s=5,
    e2e_probes=2,
    query_bots=5,
    query_days=30,
    query_long_days=90,
    query_requests=30,
    listing_small=(20, 30),
    listing_large=(200, 365),
)

TINY = Sizes(
    mode="tiny",
    accounts=2,
    bots=6,
    connections=4,
    warmup_s=0.2,
    duration_s=1,
    gateway_processes=(1,),
    profile=False,
    drain_entries=2000,
    drain_timeout_s=60,
    e2e_rate=100,
    e2e_duration_s=1.5,
    e2e_probes=1,
    query_bots=2,
    query_days=2,
    query_long_days=7,
    query_requests=5,
    listing_small=(2, 3),
    listing_large=(6, 20),
)

BY_NAME = {s.mode: s for s in (FULL, QUICK, TINY)}
