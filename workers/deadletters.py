"""The dead-letter stream of a partition: entries the workers gave up on, with the reason.

An entry moves there in the same MULTI as its XACK (never lost in between), keeping its original
bytes so `botpulse dead-letters replay` can put it back on the partition's stream unchanged.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import redis.asyncio as aioredis

from botpulse.schemas.stream import FIELD, dead_letter_key, decode_event, stream_key


class DeadLetter(msgspec.Struct, frozen=True):
    partition: int
    id: str  # id in the dead-letter stream
    original_id: str
    reason: str
    at_ms: int
    deliveries: int
    consumer: str
    data: bytes

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "partition": self.partition,
            "id": self.id,
            "original_id": self.original_id,
            "reason": self.reason,
            "at_ms": self.at_ms,
            "deliveries": self.deliveries,
            "consumer": self.consumer,
        }
        try:
            event = decode_event(self.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            out["event"] = None
            out["bytes"] = len(self.data)
        else:
            out["event"] = {"event_id": event.event_id, "bot_id": event.bot_id, "kind": event.kind}
        return out


def dead_letter_fields(
    entry_id: bytes, data: bytes, reason: str, deliveries: int, consumer: str
) -> dict[bytes, bytes]:
    return {
        FIELD: data,
        b"id": entry_id,
        b"reason": reason.encode()[:2000],
        b"at": str(int(time.time() * 1000)).encode(),
        b"deliveries": str(deliveries).encode(),
        b"consumer": consumer.encode(),
    }


def _parse(partition: int, entry_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    def text(name: bytes) -> str:
        return fields.get(name, b"").decode(errors="replace")

    def number(name: bytes) -> int:
        try:
            return int(fields.get(name, b"0"))
        except ValueError:
            return 0

    return DeadLetter(
        partition=partition,
        id=entry_id.decode(),
        original_id=text(b"id"),
        reason=text(b"reason"),
        at_ms=number(b"at"),
        deliveries=number(b"deliveries"),
        consumer=text(b"consumer"),
        data=fields.get(FIELD, b""),
    )


async def list_dead_letters(
    redis: aioredis.Redis, partitions: int, *, limit: int | None = None
) -> list[DeadLetter]:
    out: list[DeadLetter] = []
    for p in range(partitions):
        remaining = None if limit is None else limit - len(out)
        if remaining is not None and remaining <= 0:
            break
        for entry_id, fields in await redis.xrange(dead_letter_key(p), count=remaining):
            out.append(_parse(p, entry_id, fields))
    return out


async def replay(redis: aioredis.Redis, letters: list[DeadLetter]) -> list[str]:
    """Put each letter's original bytes back on its partition's stream and drop the letter, in
    one MULTI per letter; returns the new stream ids."""
    new_ids: list[str] = []
    for letter in letters:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.xadd(stream_key(letter.partition), {FIELD: letter.data})
            pipe.xdel(dead_letter_key(letter.partition), letter.id)
            new_id, _ = await pipe.execute()
        new_ids.append(new_id.decode() if isinstance(new_id, bytes) else str(new_id))
    return new_ids
