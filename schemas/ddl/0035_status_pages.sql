-- Public status pages (the dashboard's opt-in page per account): the slug the owner picked, a
-- title, the bots shown (in order; private ones are left out when the page is served) and
-- whether the page is on. One row per version, the newest (by updated_at) wins, read with FINAL.
CREATE TABLE IF NOT EXISTS ${LOCAL:status_pages}${ON_CLUSTER}
(
    account_id  String,
    slug        String,
    title       String,
    bot_ids     Array(String),
    enabled     UInt8,
    updated_at  DateTime64(3, 'UTC')
)
ENGINE = ${REPLICATED}ReplacingMergeTree(updated_at)
ORDER BY account_id;
-- distribute: status_pages cityHash64(account_id)
