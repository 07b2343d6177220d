-- Alerts (docs/alerts.md): the rules and destinations accounts manage through the account API.
-- The evaluator reads when each bot last posted from bot_latest (0033), not a table of its own.

-- Rules and destinations are versions like the registry's rows: the newest (by updated_at) wins,
-- read with FINAL. `spec` holds the rule or destination as validated JSON (schemas/alerts.py);
-- the columns beside it are what lookups filter on.
CREATE TABLE IF NOT EXISTS ${LOCAL:alert_rules}${ON_CLUSTER}
(
    id          String,
    account_id  String,
    bot_id      String,
    spec        String,
    created_at  DateTime64(3, 'UTC'),
    updated_at  DateTime64(3, 'UTC'),
    deleted     UInt8 DEFAULT 0
)
ENGINE = ${REPLICATED}ReplacingMergeTree(updated_at)
ORDER BY id;
-- distribute: alert_rules cityHash64(id)

-- A destination's signing secret is kept as it is (a signature cannot be made from a hash of
-- the key); it is shown once, at creation, and never in a listing, log or error.
CREATE TABLE IF NOT EXISTS ${LOCAL:alert_destinations}${ON_CLUSTER}
(
    id          String,
    account_id  String,
    spec        String,
    secret      String,
    created_at  DateTime64(3, 'UTC'),
    updated_at  DateTime64(3, 'UTC'),
    deleted     UInt8 DEFAULT 0
)
ENGINE = ${REPLICATED}ReplacingMergeTree(updated_at)
ORDER BY id;
-- distribute: alert_destinations cityHash64(id)
