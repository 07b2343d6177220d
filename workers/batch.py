"""What flows between the stages: an entry (stream id, bytes, decoded event), a batch (entries
under one write-ahead record), and what the writer and the settling of poison entries decide."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import msgspec

from botpulse.schemas.stream import FIELD, StreamEvent, decode_event
from botpulse.workers import batchlog as rec

# (stream id, bytes, reason): an entry that cannot be stored (undecodable, or rejected by
# ClickHouse for its data).
Poison = tuple[bytes, bytes, str]


class Entry(msgspec.Struct, gc=False):  # untracked by the GC, like StreamEvent: never in a cycle
    id: bytes
    data: bytes
    event: StreamEvent


def payload(fields: object) -> bytes:
    """The event bytes of one entry's fields, as a raw reply (flat list) or as a dict."""
    if isinstance(fields, dict):
        return fields.get(FIELD, b"")
    if isinstance(fields, list):
        # The gateway writes exactly one field: check it first, search only otherwise.
        if len(fields) == 2 and fields[0] == FIELD:
            return fields[1]
        for i in range(0, len(fields) - 1, 2):
            if fields[i] == FIELD:
                return fields[i + 1]
    return b""


def decode_entry(entry_id: bytes, data: bytes) -> Entry | Poison:
    """The entry, or (id, bytes, reason) when this reader cannot decode it (another reader
    version may: it is poison, not garbage)."""
    try:
        return Entry(entry_id, data, decode_event(data))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return (entry_id, data, f"undecodable: {exc}")


@dataclass
class Batch:
    partition: int
    record: rec.BatchRecord
    entries: list[Entry]
    recovered: bool = False
    # Entries the record names that are no longer in the stream (should never happen).
    lost: list[bytes] = field(default_factory=list)
    # Entries of the record that cannot be decoded: poison, like entries ClickHouse rejects.
    poison: list[Poison] = field(default_factory=list)
    # True while this worker holds the record's lease (workers/batchlog.py): a recovery from
    # taking it, a fresh batch's writer from its first split.
    leased: bool = False
    # The writer's insert of this batch, when it was started ahead, while the batch before it
    # was being committed (workers/pipeline.py); awaited (and cleared) by `Worker.process`.
    write: asyncio.Task[dict[bytes, str]] | None = field(default=None, repr=False, compare=False)


@dataclass
class Settlement:
    """What the commit does with a batch's poison entries (decided by their delivery counts)."""

    dead: list[Poison] = field(default_factory=list)
    deliveries: dict[bytes, int] = field(default_factory=dict)
    # Poison entries that stay pending, each under a record of its own.
    waiting: list[rec.BatchRecord] = field(default_factory=list)
    # Poison entries another consumer took over meanwhile: theirs to settle.
    unowned: list[bytes] = field(default_factory=list)
