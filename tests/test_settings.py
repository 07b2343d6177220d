"""The one settings loader: typed values from the environment, one clear line for a bad one."""

from __future__ import annotations

import pytest

from botpulse.runtime.settings import Settings, SettingsError, env_name, load_settings


def test_defaults_need_no_environment(tmp_path):
    settings = load_settings({"BOTPULSE_DATA_DIR": str(tmp_path)})
    assert settings.batch_rows == 10_000
    assert settings.batch_ms == 500
    assert settings.stream_partitions == 1
    assert settings.clickhouse_url == f"chdb://{tmp_path}/clickhouse"
    assert settings.embedded_clickhouse


def test_values_are_converted_from_strings():
    settings = load_settings(
        {
            "BOTPULSE_BATCH_ROWS": "250",
            "BOTPULSE_INSERT_TIMEOUT_S": "2.5",
            "CLICKHOUSE_URL": "http://ch:8123",
            "REDIS_URL": "redis://r:6379/0",
            "BOTPULSE_ENV": "dev",
            "BOTPULSE_CLICKHOUSE_CLUSTER": "main",
        }
    )
    assert settings.batch_rows == 250
    assert settings.insert_timeout_s == 2.5
    assert settings.env == "dev"
    assert settings.clickhouse_cluster == "main"
    assert not settings.embedded_clickhouse


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"BOTPULSE_BATCH_ROWS": "many"}, "BOTPULSE_BATCH_ROWS='many' is invalid: expected an integer"),
        ({"BOTPULSE_BATCH_ROWS": "0"}, "BOTPULSE_BATCH_ROWS='0' is invalid: expected an integer (>= 1"),
        ({"BOTPULSE_GATEWAY_PORT": "70000"}, "BOTPULSE_GATEWAY_PORT='70000' is invalid"),
        ({"BOTPULSE_ENV": "staging"}, "BOTPULSE_ENV='staging' is invalid: expected one of 'dev'"),
        ({"BOTPULSE_QUERY_PREFIX": "stats"}, "BOTPULSE_QUERY_PREFIX='stats' is invalid: expected a str"),
        ({"CLICKHOUSE_URL": "tcp://x:9000"}, "CLICKHOUSE_URL='tcp://x:9000' is invalid"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL='localhost:6379' is invalid"),
    ],
)
def test_bad_value_names_the_variable_in_one_line(env, fragment):
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_every_setting_has_an_environment_name():
    names = {env_name(f) for f in Settings.__struct_fields__}
    assert "CLICKHOUSE_URL" in names and "REDIS_URL" in names
    assert all(n.startswith("BOTPULSE_") for n in names - {"CLICKHOUSE_URL", "REDIS_URL"})


def test_cli_reports_bad_setting_and_exits_2(monkeypatch, capsys):
    from botpulse.cli import main

    monkeypatch.setenv("BOTPULSE_BATCH_MS", "soon")
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert "BOTPULSE_BATCH_MS='soon' is invalid" in err


def test_unreachable_clickhouse_at_start_is_one_line_naming_it(tmp_path):
    import os
    import subprocess
    import sys

    from botpulse.runtime.processes import free_port

    env = dict(
        os.environ,
        CLICKHOUSE_URL=f"http://127.0.0.1:{free_port()}",
        BOTPULSE_INSERT_TIMEOUT_S="2",
        BOTPULSE_DATA_DIR=str(tmp_path),
    )
    result = subprocess.run(
        [sys.executable, "-m", "botpulse", "migrate"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "botpulse: cannot reach ClickHouse (CLICKHOUSE_URL)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["gateway"], ["query", "--with-worker"], ["worker"], ["migrate"]])
def test_cross_field_rule_stops_every_process_at_start(command, monkeypatch, capsys, tmp_path):
    """BOTPULSE_CLAIM_IDLE_MS below 2 x (batch ms + insert timeout) is refused by the settings
    loader itself: every process exits 2 with one line before opening anything (embedded, it
    used to show only when the background worker started)."""
    from botpulse.cli import main

    monkeypatch.setenv("BOTPULSE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BOTPULSE_CLAIM_IDLE_MS", "1000")
    monkeypatch.setenv("BOTPULSE_INSERT_TIMEOUT_S", "10")
    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert "BOTPULSE_CLAIM_IDLE_MS=1000 is too small" in err and "\n" not in err
    assert not (tmp_path / "clickhouse").exists()


def test_worker_redis_timeout_is_a_setting():
    settings = load_settings({"BOTPULSE_WORKER_REDIS_TIMEOUT_MS": "7000"})
    assert settings.worker_redis_timeout_ms == 7000
    assert load_settings({}).worker_redis_timeout_ms == 5000
    with pytest.raises(SettingsError, match="BOTPULSE_WORKER_REDIS_TIMEOUT_MS='50' is invalid"):
        load_settings({"BOTPULSE_WORKER_REDIS_TIMEOUT_MS": "50"})
