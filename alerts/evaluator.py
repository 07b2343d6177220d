"""The evaluator: every BOTPULSE_ALERTS_INTERVAL_S, judge the rules of the bots this instance
holds, open and close incidents, and work the delivery queue.

Sharing the work. Bots are hashed into `ALERT_SLOTS` slots; each slot is a lease in Redis
(`SET NX PX`, renewed every round) held by at most one instance. Instances register in a
members set with the same TTL; each holds at most its fair share (slots / live instances),
gives back the excess and picks up free slots. A crashed instance's slots expire after
BOTPULSE_ALERTS_LEASE_S and are taken by the others on their next round, so its rules are
judged again within lease + interval.

Once per incident. Leases alone could overlap for a moment (a paused process renewing late),
so the transition itself is the guard: opening and closing run as one Lua script that checks
the rule's state in Redis (open only when not firing; close only the incident that is open) and,
in the same step, queues that incident's notifications. Whoever loses the race changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import secrets
import socket
import time
import zlib
import zoneinfo
from collections.abc import Awaitable, Callable

import msgspec
import redis.asyncio as aioredis

from botpulse.alerts.conditions import CONDITIONS, Context, Verdict
from botpulse.alerts.delivery import Deliverer
from botpulse.registry import alerts as rules_db
from botpulse.runtime.cancelling import reraise_if_cancelled
from botpulse.runtime.clickhouse import Store
from botpulse.runtime.egress import Egress
from botpulse.runtime.logs import get_logger
from botpulse.runtime.settings import Settings
from botpulse.schemas.alerts import (
    ALERT_SLOTS,
    JOBS_KEY,
    MEMBERS_KEY,
    RULES_VERSION_KEY,
    Job,
    QuietHours,
    Rule,
    job_key,
    slot_key,
    state_key,
)

log = get_logger(__name__)

RULES_REFRESH_S = 30.0

_LEASES = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, lease, stopping = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if stopping then redis.call('ZREM', KEYS[1], me) else redis.call('ZADD', KEYS[1], now + lease, me) end
local members = math.max(redis.call('ZCARD', KEYS[1]), 1)
local share = stopping and 0 or math.ceil((#KEYS - 1) / members)
local owned = {}
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == me then
    if #owned < share then
      redis.call('PEXPIRE', KEYS[i], lease)
      table.insert(owned, i - 2)
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
for i = 2, #KEYS do
  if #owned >= share then break end
  if redis.call('SET', KEYS[i], me, 'NX', 'PX', lease) then table.insert(owned, i - 2) end
end
return owned
"""

# KEYS: state, jobs. ARGV: incident, now, since, detail, announce (1/0), min interval (ms),
# due (ms), then job id / job JSON pairs.
_OPEN = """
if redis.call('HGET', KEYS[1], 'status') == 'firing' then return 0 end
local now = tonumber(ARGV[2])
local announce = ARGV[5] == '1'
local gap = tonumber(ARGV[6])
if announce and gap > 0 then
  local last = tonumber(redis.call('HGET', KEYS[1], 'announced_at') or '0') or 0
  if now - last < gap then announce = false end
end
redis.call('HSET', KEYS[1], 'status', 'firing', 'incident', ARGV[1], 'since', ARGV[3],
  'opened', ARGV[2], 'detail', ARGV[4], 'announced', announce and '1' or '0')
if announce then
  redis.call('HSET', KEYS[1], 'announced_at', ARGV[2])
  for i = 8, #ARGV, 2 do
    redis.call('HSET', 'bp:alerts:job:' .. ARGV[i], 'data', ARGV[i + 1], 'attempts', 0)
    redis.call('ZADD', KEYS[2], tonumber(ARGV[7]), ARGV[i])
  end
end
return announce and 2 or 1
"""

# KEYS: state, jobs. ARGV: incident expected open, now, detail, announce (1/0), due, job pairs.
_CLOSE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'firing' then return 0 end
if redis.call('HGET', KEYS[1], 'incident') ~= ARGV[1] then return 0 end
local announce = ARGV[4] == '1' and redis.call('HGET', KEYS[1], 'announced') == '1'
redis.call('HSET', KEYS[1], 'status', 'ok', 'closed', ARGV[2], 'detail', ARGV[3])
if announce then
  for i = 6, #ARGV, 2 do
    redis.call('HSET', 'bp:alerts:job:' .. ARGV[i], 'data', ARGV[i + 1], 'attempts', 0)
    redis.call('ZADD', KEYS[2], tonumber(ARGV[5]), ARGV[i])
  end
end
return announce and 2 or 1
"""

assert job_key("x") == "bp:alerts:job:x"  # the scripts above spell the prefix out


def slot_of(bot_id: str) -> int:
    return zlib.crc32(bot_id.encode()) % ALERT_SLOTS


def wall_clock() -> int:
    return int(time.time() * 1000)


def quiet_until(quiet: QuietHours | None, now_ms: int) -> int:
    """`now_ms`, or the end of the quiet hours it falls in."""
    if quiet is None:
        return now_ms
    tz = zoneinfo.ZoneInfo(quiet.timezone)
    local = dt.datetime.fromtimestamp(now_ms / 1000, tz)
    start = dt.time.fromisoformat(quiet.start)
    end = dt.time.fromisoformat(quiet.end)
    t = local.time()
    inside = start <= t < end if start < end else (t >= start or t < end)
    if not inside:
        return now_ms
    end_day = local.date() if t < end else local.date() + dt.timedelta(days=1)
    until = dt.datetime.combine(end_day, end, tz)
    return max(now_ms, int(until.timestamp() * 1000))


class Evaluator:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        redis: aioredis.Redis,
        *,
        clock: Callable[[], int] = wall_clock,
        instance: str | None = None,
        egress: Egress | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.redis = redis
        self.clock = clock
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.deliverer = Deliverer(settings, store, redis, clock=clock, instance=self.instance, egress=egress)
        self.slots: set[int] = set()
        self._leases = redis.register_script(_LEASES)
        self._open = redis.register_script(_OPEN)
        self._close = redis.register_script(_CLOSE)
        self._rules: dict[str, Rule] = {}
        self._rules_version: bytes | None = None
        self._rules_loaded = 0.0
        self._stopping = asyncio.Event()

    # --- one round ------------------------------------------------------------------------------
    async def acquire(self, *, stopping: bool = False) -> set[int]:
        keys = [MEMBERS_KEY] + [slot_key(s) for s in range(ALERT_SLOTS)]
        lease_ms = int(self.settings.alerts_lease_s * 1000)
        owned = await self._leases(keys=keys, args=[self.instance, lease_ms, "1" if stopping else "0"])
        self.slots = {int(s) for s in owned}
        return self.slots

    async def rules(self) -> dict[str, Rule]:
        """Every rule, reloaded when a write bumped the version (or every 30 s regardless)."""
        version = await self.redis.get(RULES_VERSION_KEY)
        fresh = time.monotonic() - self._rules_loaded < RULES_REFRESH_S
        if version == self._rules_version and fresh and self._rules_loaded:
            return self._rules
        self._rules = {r.id: r for r in await rules_db.list_rules(self.store)}
        self._rules_version = version
        self._rules_loaded = time.monotonic()
        return self._rules

    async def tick(self) -> None:
        """One round, in order: renew leases, judge the held rules, deliver what is due
        (`run` runs the two halves side by side)."""
        await self._judge()
        await self._deliver()

    async def evaluate(self, rules: list[Rule]) -> None:
        if not rules:
            return
        now = self.clock()
        bots = sorted({r.bot for r in rules})
        # A rule speaks only for a bot its account still manages (bots can change hands).
        owners = dict(
            await self.store.query(
                "SELECT id, account_id FROM bots FINAL WHERE id IN {ids:Array(String)} AND deleted = 0",
                {"ids": bots},
            )
        )
        rules = [r for r in rules if owners.get(r.bot) == r.account]
        if not rules:
            return
        rows = await self.store.query(
            "SELECT bot_id, toUnixTimestamp64Milli(max(last_ts)) FROM bot_latest "
            "WHERE bot_id IN {ids:Array(String)} GROUP BY bot_id",
            {"ids": bots},
        )
        ctx = Context(
            self.store, now, {r[0]: int(r[1]) for r in rows}, self.settings.heartbeat_window_s * 1000
        )
        verdicts: dict[str, Verdict | None] = {}
        for kind, condition in CONDITIONS.items():
            of_kind = [r for r in rules if r.kind == kind]
            if of_kind:
                verdicts.update(await condition(ctx, of_kind))
        async with self.redis.pipeline(transaction=False) as pipe:
            for rule in rules:
                pipe.hmget(state_key(rule.id), "status", "incident", "since")
            states = await pipe.execute()
        for rule, (status, incident, since) in zip(rules, states, strict=True):
            verdict = verdicts.get(rule.id)
            if verdict is None:
                continue
            firing = status == b"firing"
            # An offline incident ends with the first post after it began, even if the bot
            # fell silent again before this round (that is the next incident).
            came_back = rule.kind == "offline" and firing and verdict.since > int(since or 0)
            if not firing and verdict.firing:
                await self._open_incident(rule, verdict, now)
            elif firing and (not verdict.holding or came_back) and incident is not None:
                await self._close_incident(rule, verdict, incident.decode(), int(since or 0), now)

    def _jobs(self, rule: Rule, incident: str, event: str, since: int, until: int | None,
              detail: str, value: float | None, now: int) -> list[str]:  # fmt: skip
        args: list[str] = []
        for destination in rule.destinations:
            job = Job(
                id=f"{incident}.{event}.{destination}",
                rule=rule.id,
                destination=destination,
                incident=incident,
                event=event,  # type: ignore[arg-type]
                bot=rule.bot,
                since=since,
                until=until,
                detail=detail,
                value=value,
                created=now,
            )
            args += [job.id, msgspec.json.encode(job).decode()]
        return args

    async def _open_incident(self, rule: Rule, verdict: Verdict, now: int) -> None:
        incident = "inc_" + secrets.token_hex(8)
        jobs = self._jobs(rule, incident, "opened", verdict.since, None, verdict.detail, verdict.value, now)
        result = await self._open(
            keys=[state_key(rule.id), JOBS_KEY],
            args=[incident, now, verdict.since, verdict.detail, "0" if rule.muted_at(now) else "1",
                  int(rule.min_interval_minutes * 60_000), quiet_until(rule.quiet_hours, now), *jobs],
        )  # fmt: skip
        if result:
            log.info("incident opened", rule=rule.id, bot=rule.bot, incident=incident,
                     announced=result == 2, detail=verdict.detail)  # fmt: skip

    async def _close_incident(
        self, rule: Rule, verdict: Verdict, incident: str, since: int, now: int
    ) -> None:
        until = now
        if rule.kind == "offline":
            until = await self._first_post_after(rule.bot, since) or now
        detail = (
            f"posting again after {(until - since) // 60_000} min"
            if rule.kind == "offline"
            else verdict.detail
        )
        jobs = self._jobs(rule, incident, "resolved", since, until, detail, verdict.value, now)
        result = await self._close(
            keys=[state_key(rule.id), JOBS_KEY],
            args=[incident, now, detail, "0" if rule.muted_at(now) else "1",
                  quiet_until(rule.quiet_hours, now), *jobs],
        )  # fmt: skip
        if result:
            log.info(
                "incident resolved", rule=rule.id, bot=rule.bot, incident=incident, announced=result == 2
            )

    async def _first_post_after(self, bot_id: str, since: int) -> int | None:
        rows = await self.store.query(
            "SELECT toUnixTimestamp64Milli(ts) FROM bot_stats WHERE bot_id = {b:String} "
            "AND ts > fromUnixTimestamp64Milli({s:Int64}, 'UTC') ORDER BY ts LIMIT 1",
            {"b": bot_id, "s": since},
        )
        return int(rows[0][0]) if rows else None

    # --- running --------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Rounds until `stop()`: judging and delivering run side by side, so a slow receiver
        never delays the lease renewals or the next judgement. On stop the slots are given back
        so the others take over at once (a crash instead leaves them to expire)."""
        log.info(
            "alert evaluator started", instance=self.instance, interval_s=self.settings.alerts_interval_s
        )
        try:
            await asyncio.gather(self._every_round(self._judge), self._every_round(self._deliver))
        finally:
            with contextlib.suppress(Exception):
                await self.acquire(stopping=True)
            await self.deliverer.close()
            log.info("alert evaluator stopped", instance=self.instance)

    async def _judge(self) -> None:
        await self.acquire()
        rules = await self.rules()
        await self.evaluate([r for r in rules.values() if slot_of(r.bot) in self.slots])

    async def _deliver(self) -> None:
        rules = await self.rules()
        while await self.deliverer.run_due(rules) and not self._stopping.is_set():
            pass

    async def _every_round(self, step: Callable[[], Awaitable[None]]) -> None:
        failing = False
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                await step()
                if failing:
                    log.info("alert evaluator recovered", step=step.__name__)
                failing = False
            except Exception as exc:  # Redis or ClickHouse away: the next round tries again
                reraise_if_cancelled()
                if not failing:
                    log.warning("alert round failed; retrying next round", step=step.__name__,
                                error=str(exc)[:300])  # fmt: skip
                failing = True
            reraise_if_cancelled()  # a cancel swallowed anywhere in the round
            pause = max(0.0, self.settings.alerts_interval_s - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)
