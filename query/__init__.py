"""The query service: every read, from ClickHouse through the shared access layer."""
