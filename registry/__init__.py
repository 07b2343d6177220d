"""Accounts, bots and API keys: ClickHouse is the system of record (`records`), Redis holds the
live index that every gateway and query process authenticates from (`index`)."""
