"""What every botpulse service shares at run time: settings, logs, the ClickHouse store,
Redis connections and the stream contract, and the embedded servers of the dev default."""
