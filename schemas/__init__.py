"""Contracts shared by every service: the stream message, HTTP bodies and the ClickHouse DDL."""
