"""The registry on real parts: ClickHouse as the system of record, the Redis index, the
per-process cache, the audit log, key regeneration and index rebuilds."""

from __future__ import annotations

import asyncio
import hashlib
import time

import msgspec
import pytest

from botpulse.registry import audit, catalog, index, model
from botpulse.registry.index import RegistryCache
from botpulse.registry.keys import hash_key
from botpulse.registry.model import BotFields

WAIT_S = 5.0  # bound on waiting for a poller; never a speed assertion


async def _until(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {WAIT_S}s: {what}")


async def _bot(store, redis, bot_id: str, account: str, **values):  # type: ignore[no-untyped-def]
    fields = BotFields(username=values.pop("username", f"bot {bot_id}"), **values)
    return await catalog.create_bot(
        store, redis, bot_id, fields, account_id=account, default_slots=10, by=account
    )


async def test_account_key_is_shown_once_and_only_its_hash_is_stored(store, redis):
    account, key = await catalog.create_account(store, redis, "alpha")
    assert key.startswith("DS-") and len(key) >= 3 + 32
    assert account.key_prefix == key[:7] + "…"
    rows = await store.query(
        "SELECT key_hash, key_prefix FROM accounts FINAL WHERE id = {id:String}", {"id": account.id}
    )
    assert rows == [(hashlib.sha256(key.encode()).hexdigest(), account.key_prefix)]
    dump = await store.query("SELECT * FROM accounts")
    assert key not in repr(dump)
    cache = RegistryCache(redis)
    assert await cache.account_for_key(key) == account.id
    assert await cache.account_for_key(key + "x") is None


async def test_create_update_remove_bot_is_audited_and_indexed(store, redis):
    account, _ = await catalog.create_account(store, redis, "alpha")
    bot = await _bot(store, redis, "111", account.id, avatar="https://cdn.example/a.png")
    assert bot.custom_slots == 10 and bot.private is False
    indexed = await RegistryCache(redis).bot("111")
    assert indexed is not None and indexed.account_id == account.id and indexed.username == "bot 111"

    with pytest.raises(model.Conflict):
        await _bot(store, redis, "111", account.id)

    updated = await catalog.update_bot(
        store, redis, "111", BotFields(username="renamed", private=True), by=account.id, owner=account.id
    )
    assert (updated.username, updated.private, updated.avatar) == (
        "renamed",
        True,
        "https://cdn.example/a.png",
    )
    assert (await catalog.get_bot(store, "111")) == updated
    indexed = await RegistryCache(redis).bot("111")
    assert indexed is not None and indexed.private is True and indexed.username == "renamed"

    other, _ = await catalog.create_account(store, redis, "beta")
    with pytest.raises(model.NotManageable):
        await catalog.update_bot(store, redis, "111", BotFields(username="x"), by=other.id, owner=other.id)
    assert (await catalog.get_bot(store, "111")).username == "renamed"  # type: ignore[union-attr]

    await catalog.remove_bot(store, redis, "111", by=model.OPERATOR)
    assert await catalog.get_bot(store, "111") is None
    assert await RegistryCache(redis).bot("111") is None
    with pytest.raises(model.NotFound):
        await catalog.remove_bot(store, redis, "111", by=model.OPERATOR)

    log, total = await audit.bot_log(store, "111", account.id, bot.created_at, limit=10, offset=0)
    assert total == 3
    removed, changed, created = log
    assert removed.by == model.OPERATOR and removed.changes == {
        "old": {"deleted": False},
        "new": {"deleted": True},
    }
    assert changed.by == account.id
    assert changed.changes == {
        "old": {"username": "bot 111", "private": False},
        "new": {"username": "renamed", "private": True},
    }
    assert created.changes["old"] == {}
    assert created.changes["new"]["id"] == "111"
    assert created.changes["new"]["avatar"] == "https://cdn.example/a.png"
    assert created.changes["new"]["voteWebhookURL"] is None
    assert created.at.endswith("Z") and created.at < changed.at < removed.at


async def test_removed_bot_id_cannot_be_taken_by_another_account(store, redis):
    # The removed bot's stats and audit log stay stored under its id: another account that could
    # re-register the id would read them.
    owner, _ = await catalog.create_account(store, redis, "owner")
    other, _ = await catalog.create_account(store, redis, "other")
    await _bot(store, redis, "777", owner.id, private=True, vote_webhook_url="https://hooks.example/secret")
    await catalog.remove_bot(store, redis, "777", by=model.OPERATOR)

    with pytest.raises(model.Conflict) as info:
        await _bot(store, redis, "777", other.id)
    assert info.value.field == "id"
    assert await catalog.get_bot(store, "777") is None

    again = await _bot(store, redis, "777", owner.id)  # its own account may bring it back
    assert again.account_id == owner.id


async def test_unchanged_update_writes_nothing(store, redis):
    account, _ = await catalog.create_account(store, redis, "alpha")
    bot = await _bot(store, redis, "7", account.id, username="same")
    await catalog.update_bot(store, redis, "7", BotFields(username="same"), by=account.id, owner=account.id)
    rows = await store.query("SELECT count() FROM bots WHERE id = '7'")
    assert rows == [(1,)]
    _, total = await audit.bot_log(store, "7", account.id, bot.created_at, limit=10, offset=0)
    assert total == 1


async def test_bot_for_unknown_account_is_refused(store, redis):
    with pytest.raises(model.Invalid) as exc:
        await _bot(store, redis, "9", "acc_missing")
    assert exc.value.field == "account"


async def test_regenerated_key_is_refused_by_every_cache_and_never_logged(store, redis):
    account, old_key = await catalog.create_account(store, redis, "alpha")
    bot = await _bot(store, redis, "222", account.id)
    caches = [RegistryCache(redis, refresh_ms=100), RegistryCache(redis, refresh_ms=100)]
    for cache in caches:
        await cache.start()
    try:
        for cache in caches:
            assert await cache.account_for_key(old_key) == account.id  # now cached in-process
        regenerated, new_key = await catalog.regenerate_key(store, redis, account.id, by=account.id)
        assert new_key != old_key and new_key.startswith("DS-")
        assert regenerated.key_prefix == new_key[:7] + "…"

        async def all_switched() -> bool:
            for cache in caches:
                if await cache.account_for_key(old_key) is not None:
                    return False
                if await cache.account_for_key(new_key) != account.id:
                    return False
            return True

        await _until(all_switched, "both caches refuse the old key and accept the new one")
    finally:
        for cache in caches:
            await cache.stop()

    rows = await store.query("SELECT * FROM audit_log")
    assert old_key not in repr(rows) and new_key not in repr(rows)
    assert old_key[3:] not in repr(rows) and new_key[3:] not in repr(rows)
    log, _ = await audit.bot_log(store, bot.id, account.id, bot.created_at, limit=10, offset=0)
    assert log[0].changes == {"old": {"key": old_key[:7] + "…"}, "new": {"key": new_key[:7] + "…"}}
    assert log[0].by == account.id


async def test_lookup_racing_an_invalidation_does_not_refill_the_cache(store, redis):
    account, key = await catalog.create_account(store, redis, "alpha")
    cache = RegistryCache(redis)
    lookup = asyncio.create_task(cache.account_for_key(key))
    await asyncio.sleep(0)  # the lookup is now waiting for Redis
    cache.invalidate()  # as the poller does when the version moves
    assert await lookup == account.id
    assert hash_key(key) not in cache._keys


async def test_flushall_loses_nothing(store, redis, settings):
    account, key = await catalog.create_account(store, redis, "alpha")
    await _bot(store, redis, "333", account.id, private=True)
    other, other_key = await catalog.create_account(store, redis, "beta")
    await _bot(store, redis, "444", other.id)
    await catalog.remove_bot(store, redis, "444", by=model.OPERATOR)
    await catalog.ensure_index(store, redis, settings.stream_partitions)
    version_before = await redis.get(index.VERSION_KEY)

    await redis.flushall()
    assert not await index.is_ready(redis)
    assert await catalog.ensure_index(store, redis, settings.stream_partitions) is True
    assert await index.is_ready(redis)
    assert await redis.get(index.VERSION_KEY) != version_before

    cache = RegistryCache(redis)
    assert await cache.account_for_key(key) == account.id
    assert await cache.account_for_key(other_key) == other.id
    bot = await cache.bot("333")
    assert bot is not None and bot.account_id == account.id and bot.private is True
    assert await cache.bot("444") is None
    assert await catalog.ensure_index(store, redis, settings.stream_partitions) is False


async def test_index_restored_from_an_old_snapshot_is_rebuilt(store, redis, settings):
    """Redis restored from an old AOF still holds a regenerated key: the generation stamp
    shows the index is behind ClickHouse and `ensure_index` rebuilds it."""
    account, old_key = await catalog.create_account(store, redis, "alpha")
    await catalog.ensure_index(store, redis, settings.stream_partitions)
    snapshot = {k: await redis.dump(k) async for k in redis.scan_iter(match="bp:reg:*")}
    _, new_key = await catalog.regenerate_key(store, redis, account.id)
    await _bot(store, redis, "555", account.id)

    await redis.flushall()
    for k, v in snapshot.items():
        await redis.restore(k, 0, v)
    cache = RegistryCache(redis)
    assert await cache.account_for_key(old_key) == account.id  # the stale index, as restored

    assert await catalog.ensure_index(store, redis, settings.stream_partitions) is True
    cache = RegistryCache(redis)
    assert await cache.account_for_key(old_key) is None
    assert await cache.account_for_key(new_key) == account.id
    assert await cache.bot("555") is not None


async def test_rebuild_drops_entries_clickhouse_does_not_have(store, redis, settings):
    account, _ = await catalog.create_account(store, redis, "alpha")
    await redis.set(index.key_entry(hash_key("DS-forged")), account.id)
    await catalog.rebuild_index(store, redis, settings.stream_partitions)
    assert await RegistryCache(redis).account_for_key("DS-forged") is None


async def test_writes_without_redis_are_picked_up_by_the_next_start(store, redis, settings):
    """The operator CLI may write ClickHouse alone (embedded store, Redis not running)."""
    account, key = await catalog.create_account(store, redis, "alpha")
    await catalog.ensure_index(store, redis, settings.stream_partitions)
    await _bot(store, None, "666", account.id)
    _, new_key = await catalog.regenerate_key(store, None, account.id)
    assert await catalog.ensure_index(store, redis, settings.stream_partitions) is True
    cache = RegistryCache(redis)
    assert await cache.bot("666") is not None
    assert await cache.account_for_key(key) is None
    assert await cache.account_for_key(new_key) == account.id


async def test_registry_lock_is_exclusive_and_bounded(store, redis):
    async with catalog.registry_lock(redis):
        with pytest.raises(model.Busy):
            async with catalog.registry_lock(redis, wait_s=0.1):
                pass
    async with catalog.registry_lock(redis, wait_s=0.1):
        pass  # released


async def test_list_accounts_counts_live_bots(store, redis):
    a, _ = await catalog.create_account(store, redis, "alpha")
    b, _ = await catalog.create_account(store, redis, "beta")
    await _bot(store, redis, "1", a.id)
    await _bot(store, redis, "2", a.id)
    await _bot(store, redis, "3", a.id)
    await catalog.remove_bot(store, redis, "3", by=model.OPERATOR)
    listed = await catalog.list_accounts(store)
    assert [(acc.id, acc.name, n) for acc, n in listed] == [(a.id, "alpha", 2), (b.id, "beta", 0)]
    assert [bot.id for bot in await catalog.list_bots(store, a.id)] == ["1", "2"]


async def test_write_bots_in_bulk_is_audited_and_idempotent(store, redis):
    account, _ = await catalog.create_account(store, redis, "fleet")
    fleet = [
        catalog.Bot(f"f{i}", account.id, f"Fleet {i}", None, False, 10, None, catalog.now())
        for i in range(50)
    ]
    assert await catalog.write_bots(store, redis, fleet) == 50
    assert await catalog.write_bots(store, redis, fleet) == 0
    fleet[3] = msgspec.structs.replace(fleet[3], username="changed")
    assert await catalog.write_bots(store, redis, fleet) == 1
    cache = RegistryCache(redis)
    assert (await cache.bot("f3")).username == "changed"  # type: ignore[union-attr]
    assert (await cache.bot("f49")) is not None
    rows = await store.query("SELECT count(), uniqExact(bot_id) FROM audit_log WHERE field = 'id'")
    assert rows == [(50, 50)]


async def test_a_miss_while_the_index_is_missing_is_not_remembered(store, redis, settings):
    account, key = await catalog.create_account(store, redis, "alpha")
    await catalog.ensure_index(store, redis, settings.stream_partitions)
    cache = RegistryCache(redis)
    await cache._poll_once()
    assert cache.ready
    await redis.flushall()
    assert await cache.account_for_key(key) is None
    assert cache.ready is False  # flipped by the lookup itself: callers answer 503, not 401
    await catalog.ensure_index(store, redis, settings.stream_partitions)
    assert await cache.account_for_key(key) == account.id  # no poll in between: the miss was not cached


async def test_cache_of_unknown_keys_and_bots_is_bounded(store, redis, monkeypatch):
    await catalog.rebuild_index(store, redis, 1)
    account, key = await catalog.create_account(store, redis, "alpha")
    monkeypatch.setattr(index, "MAX_CACHED", 5)
    cache = RegistryCache(redis)
    for i in range(20):
        assert await cache.account_for_key(f"DS-unknown-{i}") is None
        assert await cache.bot(f"nobot-{i}") is None
    assert len(cache._keys) <= 5 and len(cache._bots) <= 5
    assert await cache.account_for_key(key) == account.id  # still answers after starting over
