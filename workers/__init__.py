"""Stream workers: Redis stream -> ClickHouse in batches, acknowledged only after the insert."""
