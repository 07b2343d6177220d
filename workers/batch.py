"""What flows between the stages: an entry (event id, bytes, decoded event), a batch (entries
under one write-ahead record), and what the writer and the settling of poison entries decide.

The worker's unit is one event. A stream entry holds one event or several (schemas/stream.py);
each event of a multi-event entry becomes an `Entry` of its own, named `<entry id>#<index>`
(`batchlog.part_id`), so each is stored, rejected, retried and dead-lettered on its own while the
stream entry is acknowledged once, when all of its events are settled."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgspec

from botpulse.schemas.stream import FIELD, StreamEvent, decode_event, decode_events, is_several, split_entry
from botpulse.workers import batchlog as rec

# (event id, bytes, reason): an event that cannot be stored (undecodable, or rejected by
# ClickHouse for its data). The id is the entry's when the whole entry is undecodable.
Poison = tuple[bytes, bytes, str]


class Entry(msgspec.Struct, gc=False):  # untracked by the GC, like StreamEvent: never in a cycle
    id: bytes  # the event id: the stream entry id, or `<entry id>#<index>` (module docstring)
    # The event's own encoded bytes; for an event decoded with its entry-mates (`index` ≥ 0), the
    # whole entry's value, which they share: split out (`data`) only when an event's own bytes are
    # asked for (poison, dead letters), never for the events that are stored.
    value: bytes
    event: StreamEvent
    index: int = -1

    @property
    def data(self) -> bytes:
        """The event's own encoded bytes."""
        if self.index < 0:
            return self.value
        parts = split_entry(self.value)
        assert parts is not None
        return parts[self.index]


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


def decode_entry(entry_id: bytes, data: bytes) -> Entry | Poison | list[Entry | Poison]:
    """The entry's event, or (id, bytes, reason) when this reader cannot decode it (another
    reader version may: it is poison, not garbage); for an entry of several events, each of
    them so (one undecodable event does not take its entry-mates with it)."""
    if not is_several(data):
        try:
            return Entry(entry_id, data, decode_event(data))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return (entry_id, data, f"undecodable: {exc}")
    try:
        # The whole entry in one decode (the common case); only an entry with poison in it is
        # split, to tell its events apart.
        events = decode_events(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _decode_parts(entry_id, data)
    if not events:  # never written by a gateway; nothing in it to settle the entry by
        return (entry_id, data, "undecodable: an entry of no events")
    part = rec.part_id
    return [Entry(part(entry_id, i), data, event, i) for i, event in enumerate(events)]


def decode_into(
    replies: Iterable[Sequence[object]], entries: list[Entry], poison: list[Poison], ids: list[bytes]
) -> None:
    """`decode_entry` for every (id, fields) of a read, straight into the lists of a buffer:
    its events, its poison, its stream entry ids (each once, in order). The common entries (the
    one field the gateway writes, decoding whole) take no call per entry beyond the decode."""
    append, extend, add_id, part = entries.append, entries.extend, ids.append, rec.part_id
    one, several, has_several = decode_event, decode_events, is_several
    for entry_id, fields in replies:
        add_id(entry_id)  # type: ignore[arg-type]
        if type(fields) is list and len(fields) == 2 and fields[0] == FIELD:
            data = fields[1]
        else:
            data = payload(fields)
        try:
            if not has_several(data):  # type: ignore[arg-type]
                append(Entry(entry_id, data, one(data)))  # type: ignore[arg-type]
            else:
                events = several(data)
                if events:
                    extend([Entry(part(entry_id, i), data, e, i) for i, e in enumerate(events)])  # type: ignore[arg-type]
                else:
                    poison.append((entry_id, data, "undecodable: an entry of no events"))  # type: ignore[arg-type]
            continue
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
        sort_decoded(decode_entry(entry_id, data), entries, poison)  # type: ignore[arg-type]


def _decode_parts(entry_id: bytes, data: bytes) -> Poison | list[Entry | Poison]:
    """An entry of several events that does not decode whole: each event on its own."""
    try:
        parts = split_entry(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return (entry_id, data, f"undecodable: {exc}")
    assert parts is not None
    if not parts:
        return (entry_id, data, "undecodable: an entry of no events")
    out: list[Entry | Poison] = []
    for index, part in enumerate(parts):
        event_id = rec.part_id(entry_id, index)
        try:
            out.append(Entry(event_id, part, decode_event(part)))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            out.append((event_id, part, f"undecodable: {exc}"))
    return out


def event_id(decoded: Entry | Poison) -> bytes:
    return decoded.id if type(decoded) is Entry else decoded[0]  # type: ignore[union-attr,index]


def sort_decoded(
    decoded: Entry | Poison | list[Entry | Poison], entries: list[Entry], poison: list[Poison]
) -> None:
    """`decode_entry`'s answer into the events to store and the poison."""
    if type(decoded) is Entry:
        entries.append(decoded)
    elif type(decoded) is list:
        for one in decoded:
            if type(one) is Entry:
                entries.append(one)
            else:
                poison.append(one)  # type: ignore[arg-type]
    else:
        poison.append(decoded)  # type: ignore[arg-type]


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
    # The distinct stream entry ids of `entries` and `poison`, when the batch was opened from a
    # buffer that kept them as it read (None: the commit derives them from the event ids).
    entry_ids: list[bytes] | None = None
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
