"""Stream workers: Redis stream partitions → ClickHouse in batches, acknowledged only after the
insert holds, exactly once in effect. docs/workers.md has the full argument.

The stages, in the order an entry meets them (`pipeline.Worker` chains them, one pass at a time):

1. **intake** (`intake.py`): one `XREADGROUP` over every partition; entries decoded into one
   `PartitionBuffer` per partition (undecodable ones held apart as poison), also while a batch
   is inserted (read ahead, never blocking). Memory: one buffer per partition (at most
   `BOTPULSE_BATCH_ROWS` entries) beside the batch being inserted and the one being committed.
2. **recovery** (`recovery.py`, records in `batchlog.py`, server features in `durability.py`):
   a due buffer becomes a batch once its write-ahead record (exact ids + dedup token) is written
   — only while this consumer owns every id (R1, one Lua script) — and confirmed durable
   (`WAITAOF`/`WAIT`): a record lost with Redis's last second cannot double rows. Entries left
   by a dead or restarted consumer (`XAUTOCLAIM` after `BOTPULSE_CLAIM_IDLE_MS`, own pending at
   start) are written as the batch of the record naming them (R3: same ids, same token), under
   the record's lease (one recovery at a time), or dead-lettered after too many deliveries.
3. **writer** (`writer.py`, rows in `rows.py`): batch → one column block per table → INSERT
   with `<token>:<table>` as dedup token (a repeat is stored once, roll-ups included). A block
   rejected for its data is split until the bad entries are isolated, the split recorded
   (append-only) before either half goes in; a block a materialized view refused after its
   table stored it is never split, only retried whole (an alert each time).
4. **commit** (`commit.py`): the last step, reached only after the writer returned, so "ack only
   after the write" holds by construction: one `MULTI` acknowledges the ids, deletes the record
   and its lease, adds the dead letters and the waiting poison entries' own records (R2), through
   an `allow-oom` script so a full Redis can still be drained. A batch's commit overlaps the
   next batch's insert (`pipeline.py`), never its own.

`lifecycle.py` is the one lifecycle (start, grace period, drain, close) of `botpulse worker` and
of the embedded worker; `context.py` what the stages share (settings, parts, consumer name, the
backoff and fault state: every Redis error is logged, backed off and retried, never fatal);
`upkeep.py` trimming and consumer clean-up; `deadletters.py` and `status.py` operator views.
"""
