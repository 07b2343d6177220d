"""Delivering notifications: a queue of jobs in Redis, worked by every evaluator.

A job is written with the incident transition that caused it (one Lua script, see
`alerts.evaluator`), so an incident that opened always has its notifications queued. Any
evaluator claims due jobs (a per-job claim key with a TTL: a claimer that dies mid-delivery
loses it after `CLAIM_MS` and another retries), sends, and then either removes the job
(delivered, refused, or failed for good) or schedules its next attempt with exponential backoff
and jitter, until `BOTPULSE_ALERTS_RETRY_FOR_S` after its first attempt. Every attempt goes into
the rule's bounded delivery log. A retry carries the same message id (`webhook-id`,
`Idempotency-Key`), so a receiver that did get an attempt we could not confirm de-duplicates.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import msgspec
import redis.asyncio as aioredis

from botpulse.alerts import payloads
from botpulse.registry import alerts as rules_db
from botpulse.registry.catalog import get_bot
from botpulse.runtime.clickhouse import Store
from botpulse.runtime.egress import Answer, Egress, Refused
from botpulse.runtime.logs import get_logger
from botpulse.runtime.settings import Settings
from botpulse.schemas.alerts import (
    DELIVERY_LOG_MAX,
    JOBS_KEY,
    DeliveryEntry,
    Destination,
    Job,
    Rule,
    claim_key,
    job_key,
    log_key,
)

log = get_logger(__name__)

BACKOFF_BASE_MS = 2_000
BACKOFF_CAP_MS = 600_000
BATCH = 20

_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(due) do
  if redis.call('SET', ARGV[5] .. id, ARGV[4], 'NX', 'PX', tonumber(ARGV[3])) then
    table.insert(out, id)
  end
end
return out
"""

_job_decoder = msgspec.json.Decoder(Job)


def backoff_ms(attempt: int) -> int:
    """Exponential (2 s, 4 s, 8 s … capped at 10 min), with jitter: a half-to-full random share,
    so the receivers that failed together are not retried together."""
    cap = min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** min(attempt - 1, 20))
    return int(random.uniform(cap / 2, cap))


def retryable(answer: Answer) -> bool:
    if answer.status is None:
        return True  # timeouts, refused connections, resets
    return answer.status in (408, 425, 429) or answer.status >= 500


def _retry_after_ms(answer: Answer) -> int:
    """Discord's rate limit (and any 429/503) says when to come back."""
    raw = answer.headers.get("Retry-After") or answer.headers.get("retry-after")
    try:
        return int(float(raw) * 1000) if raw else 0
    except ValueError:
        return 0


class Deliverer:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        redis: aioredis.Redis,
        *,
        clock: Callable[[], int],
        instance: str,
        egress: Egress | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.redis = redis
        self.clock = clock
        self.instance = instance
        self.egress = egress or Egress(settings)
        self._claim = redis.register_script(_CLAIM)
        # A delivery that outlives this claim may be attempted once more elsewhere (same id).
        self.claim_ms = int(settings.alerts_timeout_s * 1000 * 3 + 5_000)

    async def run_due(self, rules: dict[str, Rule]) -> int:
        """Claim the due jobs and deliver them, side by side; returns how many were attempted."""
        ids = await self._claim(
            keys=[JOBS_KEY],
            args=[self.clock(), BATCH, self.claim_ms, self.instance, claim_key("")],
        )
        if not ids:
            return 0
        await asyncio.gather(*(self._attempt(i.decode(), rules) for i in ids))
        return len(ids)

    async def _attempt(self, job_id: str, rules: dict[str, Rule]) -> None:
        raw = await self.redis.hgetall(job_key(job_id))
        if not raw:  # finished elsewhere in the meantime
            await self.redis.zrem(JOBS_KEY, job_id)
            await self.redis.delete(claim_key(job_id))
            return
        job = _job_decoder.decode(raw[b"data"])
        attempt = int(raw.get(b"attempts", b"0")) + 1
        first = int(raw.get(b"first", b"0")) or self.clock()
        # A rule created since this instance last loaded them is read directly.
        rule = rules.get(job.rule) or await rules_db.rule_by_id(self.store, job.rule)
        found = await rules_db.list_destinations(self.store, ids=[job.destination])
        if rule is None or not found:
            # The rule or the destination was deleted since: nothing to tell anyone.
            await self._finish(job, None, "failed", attempt, None, "rule or destination deleted", None)
            return
        destination, secret = found[0]
        try:
            answer = await self._send(rule, job, destination, secret)
        except Refused as exc:
            log.warning("alert delivery refused", rule=rule.id, destination=destination.id, reason=str(exc))
            await self._finish(job, destination, "refused", attempt, None, f"refused: {exc}", None)
            return
        except Exception as exc:  # a bug must not wedge the queue: log, and retry like a failure
            log.exception("alert delivery crashed", rule=rule.id, destination=destination.id)
            answer = Answer(None, b"", 0, f"internal error: {type(exc).__name__}")
        if answer.status is not None and 200 <= answer.status < 300:
            await self._finish(job, destination, "delivered", attempt, answer.status, None, answer.latency_ms)
            return
        error = answer.error or f"HTTP {answer.status}: {answer.body[:200].decode('utf-8', 'replace')}"
        # A Discord URL holds its token; whatever an error quotes of it, the log shows it redacted.
        error = error.replace(destination.url, rules_db.redacted_url(destination))
        now = self.clock()
        delay = max(backoff_ms(attempt), _retry_after_ms(answer))
        within = now + delay - first <= self.settings.alerts_retry_for_s * 1000
        if not retryable(answer) or not within:
            await self._finish(job, destination, "failed", attempt, answer.status, error, answer.latency_ms)
            return
        entry = self._entry(job, destination, "retrying", attempt, answer.status, error, answer.latency_ms)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(job_key(job.id), mapping={"attempts": attempt, "first": first})
            pipe.zadd(JOBS_KEY, {job.id: now + delay})
            pipe.delete(claim_key(job.id))
            self._log(pipe, job.rule, entry)
            await pipe.execute()

    async def _send(self, rule: Rule, job: Job, destination: Destination, secret: str) -> Answer:
        bot = await self._bot(job.bot)
        if destination.type == "discord":
            body = msgspec.json.encode(payloads.discord_body(rule, job, bot))
            sep = "&" if "?" in destination.url else "?"
            # wait=true: Discord answers 200 once the message exists (204 otherwise says less).
            return await self.egress.post(
                destination.url + sep + "wait=true", body, {"Content-Type": "application/json"}
            )
        body = msgspec.json.encode(payloads.generic_body(rule, job, bot))
        msg_id = payloads.message_id(job)
        headers = payloads.webhook_headers(secret, msg_id, self.clock() // 1000, body)
        return await self.egress.post(destination.url, body, headers)

    async def _bot(self, bot_id: str) -> payloads.BotInfo:
        bot = await get_bot(self.store, bot_id)
        template = self.settings.alerts_bot_url or (
            f"http://{self.settings.query_listen}:{self.settings.query_port}"
            f"{self.settings.query_prefix}/v1/bot/{{bot}}"
        )
        url = template.replace("{bot}", bot_id)
        if bot is None:
            return payloads.BotInfo(bot_id, bot_id, None, url)
        return payloads.BotInfo(bot_id, bot.username, bot.avatar, url)

    def _entry(
        self,
        job: Job,
        destination: Destination | None,
        outcome: str,
        attempt: int,
        status: int | None,
        error: str | None,
        latency: int | None,
    ) -> DeliveryEntry:
        return DeliveryEntry(
            at=self.clock(),
            destination=job.destination,
            destination_type=destination.type if destination else "",
            incident=job.incident,
            event=job.event,
            attempt=attempt,
            outcome=outcome,  # type: ignore[arg-type]
            status=status,
            latency_ms=latency,
            error=error,
        )

    @staticmethod
    def _log(pipe: aioredis.client.Pipeline, rule_id: str, entry: DeliveryEntry) -> None:
        pipe.lpush(log_key(rule_id), msgspec.json.encode(entry))
        pipe.ltrim(log_key(rule_id), 0, DELIVERY_LOG_MAX - 1)

    async def _finish(
        self,
        job: Job,
        destination: Destination | None,
        outcome: str,
        attempt: int,
        status: int | None,
        error: str | None,
        latency: int | None,
    ) -> None:
        entry = self._entry(job, destination, outcome, attempt, status, error, latency)
        if outcome == "failed":
            log.warning("alert delivery failed", rule=job.rule, destination=job.destination, error=error)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(JOBS_KEY, job.id)
            pipe.delete(job_key(job.id), claim_key(job.id))
            self._log(pipe, job.rule, entry)
            await pipe.execute()

    async def close(self) -> None:
        await self.egress.close()
