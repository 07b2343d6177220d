"""Delivering notifications: a queue of jobs in Redis, worked by every evaluator.

A job is written with the incident transition that caused it (one Lua script, see
`alerts.evaluator`), so an incident that opened always has its notifications queued. Any
evaluator claims due jobs (a per-job claim key with a TTL: a claimer that dies mid-delivery
loses it after `claim_ms` and another retries; meanwhile the job's due time is pushed past the
claim, so claimed jobs never crowd the head of the queue), sends, and then either removes the job
(delivered, refused, or failed for good) or schedules its next attempt with exponential backoff
and jitter, until `BOTPULSE_ALERTS_RETRY_FOR_S` after its first attempt. Every attempt goes into
the rule's bounded delivery log. A retry carries the same message id (`webhook-id`,
`Idempotency-Key`), so a receiver that did get an attempt we could not confirm de-duplicates.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import math
import random
from collections.abc import Callable, Mapping

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

# Claims up to ARGV[2] due jobs. A claimed job's due time moves on by the claim time, so jobs
# being worked (or held by a claimer that died) leave the head of the queue instead of filling
# every batch until their claims lapse; the claimer sets the real next due time when it is done.
# A due job claimed elsewhere (its claimer's clock runs behind ours) moves to when that claim
# lapses, and the scan goes on past it (up to 10 batches' worth of such jobs per call).
_CLAIM = """
local now, batch, claim = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local out, seen = {}, 0
while #out < batch and seen < batch * 10 do
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, batch - #out)
  if #due == 0 then break end
  for _, id in ipairs(due) do
    seen = seen + 1
    local key = ARGV[5] .. id
    if redis.call('SET', key, ARGV[4], 'NX', 'PX', claim) then
      table.insert(out, id)
      redis.call('ZADD', KEYS[1], 'XX', now + claim, id)
    else
      redis.call('ZADD', KEYS[1], 'XX', now + math.max(redis.call('PTTL', key), 1), id)
    end
  end
end
return out
"""

_job_decoder = msgspec.json.Decoder(Job)


def backoff_ms(attempt: int) -> int:
    """Exponential with jitter: a random time between half and all of 2 s * 2^(attempt-1),
    capped at 10 min (1-2 s, 2-4 s, 4-8 s … 5-10 min), so the receivers that failed together
    are not retried together."""
    cap = min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** min(attempt - 1, 20))
    return int(random.uniform(cap / 2, cap))


def retryable(answer: Answer) -> bool:
    if answer.status is None:
        return True  # timeouts, refused connections, resets, DNS failures
    return answer.status in (408, 425, 429) or answer.status >= 500


def _retry_after_ms(headers: Mapping[str, str], *, now_ms: int, cap_ms: int) -> int:
    """How long a 429/503 (Discord's rate limit, say) asks us to wait, from 0 to `cap_ms` (the
    retry bound: a later time would be past it anyway). `Retry-After` is seconds or an HTTP
    date; anything else (`inf`, `1e400`, `nan`, negative, words) is ignored: what a receiver
    answers must never break the delivery loop."""
    raw = next((v for k, v in headers.items() if k.lower() == "retry-after"), "").strip()
    if not raw:
        return 0
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError, OverflowError):
            return 0
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = when.timestamp() - now_ms / 1000
        if seconds < 0:
            return 0
    if not math.isfinite(seconds) or seconds < 0:
        return 0
    return int(min(seconds * 1000, cap_ms))


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
        results = await asyncio.gather(
            *(self._attempt(i.decode(), rules) for i in ids), return_exceptions=True
        )
        for job_id, result in zip(ids, results, strict=True):
            # Only Redis itself failing gets here (`_attempt` records everything else): the
            # claim lapses and the job is tried again. The other jobs of the batch went on.
            if isinstance(result, Exception):
                log.warning("alert delivery not recorded", job=job_id.decode(), error=str(result)[:300])
        return len(ids)

    async def _attempt(self, job_id: str, rules: dict[str, Rule]) -> None:
        raw = await self.redis.hgetall(job_key(job_id))
        if not raw:  # finished elsewhere in the meantime
            await self.redis.zrem(JOBS_KEY, job_id)
            await self.redis.delete(claim_key(job_id))
            return
        try:
            job = _job_decoder.decode(raw[b"data"])
            attempt = int(raw.get(b"attempts", b"0")) + 1
            first = int(raw.get(b"first", b"0")) or self.clock()
        except (KeyError, ValueError, msgspec.DecodeError):
            log.error("alert job unreadable; dropped", job=job_id)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(JOBS_KEY, job_id)
                pipe.delete(job_key(job_id), claim_key(job_id))
                await pipe.execute()
            return
        try:
            await self._deliver_job(job, attempt, first, rules)
        except Exception as exc:
            # Whatever went wrong (a bug, an answer we did not foresee, the store away), the
            # attempt counts: recorded, retried with backoff, and bounded like any failure.
            # Left unrecorded, the job would be sent again at every claim lapse, for ever.
            log.exception("alert delivery crashed", rule=job.rule, destination=job.destination)
            error = f"internal error: {type(exc).__name__}"
            await self._retry_or_fail(job, None, attempt, first, None, error, None)

    async def _deliver_job(self, job: Job, attempt: int, first: int, rules: dict[str, Rule]) -> None:
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
            # The account sees the refusal; only the operator's log names the address.
            log.warning("alert delivery refused", rule=rule.id, destination=destination.id, reason=exc.detail)
            await self._finish(job, destination, "refused", attempt, None, f"refused: {exc}", None)
            return
        if answer.status is not None and 200 <= answer.status < 300:
            await self._finish(job, destination, "delivered", attempt, answer.status, None, answer.latency_ms)
            return
        error = answer.error or f"HTTP {answer.status}: {answer.body[:200].decode('utf-8', 'replace')}"
        # A Discord URL holds its token: whatever an error quotes of it, the log shows it redacted.
        error = rules_db.scrub(destination, error)
        wait = _retry_after_ms(answer.headers, now_ms=self.clock(), cap_ms=self._retry_for_ms)
        await self._retry_or_fail(
            job, destination, attempt, first, answer.status, error, answer.latency_ms,
            at_least_ms=wait, can_retry=retryable(answer),
        )  # fmt: skip

    @property
    def _retry_for_ms(self) -> int:
        return self.settings.alerts_retry_for_s * 1000

    async def _retry_or_fail(
        self,
        job: Job,
        destination: Destination | None,
        attempt: int,
        first: int,
        status: int | None,
        error: str,
        latency: int | None,
        *,
        at_least_ms: int = 0,
        can_retry: bool = True,
    ) -> None:
        """The next attempt after backoff (and no sooner than `at_least_ms`), or `failed` when
        it may not be retried or would fall past the retry bound."""
        now = self.clock()
        delay = max(backoff_ms(attempt), at_least_ms)
        if not can_retry or now + delay - first > self._retry_for_ms:
            await self._finish(job, destination, "failed", attempt, status, error, latency)
            return
        entry = self._entry(job, destination, "retrying", attempt, status, error, latency)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(job_key(job.id), mapping={"attempts": attempt, "first": first})
            pipe.zadd(JOBS_KEY, {job.id: now + delay})
            pipe.delete(claim_key(job.id))
            self._log(pipe, job.rule, entry)
            await pipe.execute()

    async def _send(self, rule: Rule, job: Job, destination: Destination, secret: str) -> Answer:
        """The attempt's answer; `Refused` when the URL may not be contacted (nothing sent).
        A failure to send at all (connection, DNS, timeout) is an answer without a status."""
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
