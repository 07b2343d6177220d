"""The ingest gateway: authenticate, validate, append to the Redis stream. Never ClickHouse."""
