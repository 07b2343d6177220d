"""The one Redis stream contract: key names, partitioning, the consumer group.

Streams are partitioned by bot id. Every key that belongs to a partition carries the hash tag
`{p<N>}` so a partition's stream, its dead letters, its batch records, its rate-limit hash and
its bots' custom-slot sets live in one Redis Cluster slot (one Lua script can touch them
together) while partitions spread over the cluster.
"""

from __future__ import annotations

import zlib

GROUP = "botpulse-workers"


def partition_of(bot_id: str, partitions: int) -> int:
    return zlib.crc32(bot_id.encode()) % partitions


def tag(partition: int) -> str:
    return f"{{p{partition}}}"


def stream_key(partition: int) -> str:
    return f"bp:{tag(partition)}:events"


def dead_letter_key(partition: int) -> str:
    return f"bp:{tag(partition)}:dead"


def batches_key(partition: int) -> str:
    """Write-ahead records of the batches a worker is inserting (see workers/)."""
    return f"bp:{tag(partition)}:batches"


def rate_key(partition: int) -> str:
    """Hash of the rate-limit state (GCRA theoretical arrival time, Unix ms) of the partition's
    bots: field `s:<botId>` for stats posts, `c:<botId>` for custom ones (see ingest/append.py)."""
    return f"bp:{tag(partition)}:rl"


def custom_slots_key(partition: int, bot_id: str) -> str:
    """Set of custom metric names holding one of the bot's custom-graph slots."""
    return f"bp:{tag(partition)}:slots:{bot_id}"


def worker_stats_key(partition: int) -> str:
    """Hash of last insert time and recent rows/s, for `botpulse status`."""
    return f"bp:{tag(partition)}:workerstats"
