"""The embedded Redis is a real server with the durability settings the pipeline relies on."""

from __future__ import annotations

import redis

from botpulse.runtime.embedded import EmbeddedRedis


def test_embedded_redis_has_aof_noeviction_and_keeps_data_across_restart(tmp_path):
    server = EmbeddedRedis(tmp_path / "r").start()
    try:
        client = redis.Redis.from_url(server.url)
        config = client.config_get("*")
        assert config["appendonly"] == "yes"
        assert config["appendfsync"] == "everysec"
        assert config["maxmemory-policy"] == "noeviction"
        assert config["bind"].startswith("127.0.0.1")
        info = client.info("server")
        major = int(str(info.get("valkey_version") or info["redis_version"]).split(".")[0])
        assert major >= 7  # streams, consumer groups, XAUTOCLAIM with deleted ids
        client.xadd("s", {"k": "v"})
        client.close()
    finally:
        server.stop()
    again = EmbeddedRedis(tmp_path / "r").start()
    try:
        client = redis.Redis.from_url(again.url)
        assert client.xlen("s") == 1
        client.close()
    finally:
        again.stop()
    assert again.proc is None
