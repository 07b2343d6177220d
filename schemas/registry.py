"""The registry index entries in Redis: what the gateway and query service authenticate from."""

from __future__ import annotations

import re

import msgspec

# What a bot id may be (Discord ids are digit strings): the one rule every service checks, and the
# pattern request bodies declare (schemas/account.py) and the OpenAPI document shows. `$(?!\n)`,
# not `$`: Python's `$` also matches before a trailing newline, and "123\n" would pass as a
# look-alike of 123; JSON Schema's `$` (ECMA-262) means the end already, and `\Z` is not ECMA-262.
BOT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$(?!\n)"
BOT_ID = re.compile(BOT_ID_PATTERN)


class IndexedBot(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    id: str
    account_id: str
    username: str
    private: bool = False
    custom_slots: int = 10


_bot_encoder = msgspec.msgpack.Encoder()
_bot_decoder = msgspec.msgpack.Decoder(IndexedBot)


def encode_bot(bot: IndexedBot) -> bytes:
    return _bot_encoder.encode(bot)


def decode_bot(data: bytes) -> IndexedBot:
    return _bot_decoder.decode(data)


# What a key may do. The account key (in `accounts`) is MANAGE; named keys take one at creation.
INGEST, READ, MANAGE = "ingest", "read", "manage"
SCOPES = (INGEST, READ, MANAGE)


class IndexedKey(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """What `bp:reg:key:<sha256>` holds: whose key it is and what it may do. `bots` (ingest keys
    only) limits the bots it may post for; empty means every bot of the account."""

    account_id: str
    key_id: str
    scope: str = MANAGE
    bots: tuple[str, ...] = ()

    def may_post(self, bot_id: str) -> bool:
        return self.scope != READ and (not self.bots or bot_id in self.bots)

    @property
    def usage_id(self) -> str:
        """Under what its last use is kept: the key id, or the account id for the account key."""
        return self.account_id if self.key_id == ACCOUNT_KEY_ID else self.key_id


class IndexedAccount(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """What `bp:reg:acct:<id>` holds: the account's overrides the gateway needs (None: default)."""

    posts_per_min: int | None = None
    custom_event_types: int | None = None


# The account key's id in listings and last-used times.
ACCOUNT_KEY_ID = "account"

_key_encoder = msgspec.msgpack.Encoder()
_key_decoder = msgspec.msgpack.Decoder(IndexedKey)
_account_decoder = msgspec.msgpack.Decoder(IndexedAccount)


def encode_key(key: IndexedKey) -> bytes:
    return _key_encoder.encode(key)


def decode_key(data: bytes) -> IndexedKey:
    """An index key entry; an entry written before scoped keys holds only the account id (the
    account key, which manages everything)."""
    try:
        return _key_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return IndexedKey(account_id=data.decode(), key_id=ACCOUNT_KEY_ID)


def encode_account(account: IndexedAccount) -> bytes:
    return _key_encoder.encode(account)


def decode_account(data: bytes) -> IndexedAccount:
    return _account_decoder.decode(data)
