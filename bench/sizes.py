"""How big and how long each phase runs: the full run, `--quick` (about five minutes) and the
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
    # sustain (the `botpulse dev` box at the highest rate it holds): the reported rate held for
    # sustain_s; the search before it runs up to sustain_steps steps of sustain_step_s, then up
    # to sustain_confirms runs of sustain_s, all within sustain_budget_s (start-up not counted).
    sustain_s: float
    sustain_step_s: float
    sustain_steps: int
    sustain_confirms: int
    sustain_budget_s: float
    # query
    query_bots: int
    query_days: int
    query_long_days: int
    query_requests: int
    # One more bot with query_days of history posted by this many shards, once a minute each.
    query_shards: int
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
    sustain_s=60,
    sustain_step_s=10,
    sustain_steps=5,
    sustain_confirms=2,
    sustain_budget_s=300,
    query_bots=50,
    query_days=30,
    query_long_days=365,
    query_requests=300,
    query_shards=1000,
)

QUICK = Sizes(
    mode="quick",
    accounts=10,
    bots=100,
    connections=32,
    warmup_s=1,
    duration_s=2,
    # Four of the worker's batches (BOTPULSE_BATCH_ROWS, 50,000): fewer measure its start-up.
    drain_entries=200_000,
    drain_timeout_s=60,
    e2e_rate=2000,
    e2e_duration_s=5,
    e2e_probes=2,
    sustain_s=8,
    sustain_step_s=3,
    # From half the peak, x1.3 a step: two steps could never find more than 0.65 of it.
    sustain_steps=4,
    sustain_confirms=2,  # a hold that misses is retried once lower, as in full runs
    sustain_budget_s=60,
    query_bots=5,
    query_days=30,
    query_long_days=90,
    query_requests=30,
    query_shards=1000,
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
    sustain_s=1.5,
    sustain_step_s=1,
    sustain_steps=0,
    sustain_confirms=1,
    sustain_budget_s=10,
    query_bots=2,
    query_days=2,
    query_long_days=7,
    query_requests=5,
    query_shards=10,
    listing_small=(2, 3),
    listing_large=(6, 20),
)

BY_NAME = {s.mode: s for s in (FULL, QUICK, TINY)}
