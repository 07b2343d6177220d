"""The registry index entries in Redis: what the gateway and query service authenticate from."""

from __future__ import annotations

import re

import msgspec

# What a bot id may be (Discord ids are digit strings): the one rule every service checks.
BOT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


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
