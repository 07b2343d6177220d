"""The one settings loader: typed values from the environment, one clear line for a bad one."""

from __future__ import annotations

import pytest

from botpulse.runtime.settings import Settings, SettingsError, env_name, load_settings


def test_defaults_need_no_environment(tmp_path):
    settings = load_settings({"BOTPULSE_DATA_DIR": str(tmp_path)})
    assert settings.batch_rows == 50_000
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


@pytest.mark.parametrize(
    "token",
    [
        "CHANGE-ME-to-a-long-random-token",  # deploy/kubernetes/secret.yaml's placeholder
        "changeme",
        "short-but-random-Xq9",
        "a" * 40,
        "abababababababababababababababababab",
    ],
)
def test_placeholder_short_or_repetitive_admin_token_is_refused_without_printing_it(token):
    with pytest.raises(SettingsError) as info:
        load_settings({"BOTPULSE_ADMIN_TOKEN": token})
    message = str(info.value)
    assert "BOTPULSE_ADMIN_TOKEN" in message and "secrets.token_urlsafe" in message
    assert token not in message and "\n" not in message


def test_a_random_admin_token_is_accepted():
    import secrets

    token = secrets.token_urlsafe(32)
    assert load_settings({"BOTPULSE_ADMIN_TOKEN": token}).admin_token == token


def test_kubernetes_placeholder_is_refused():
    from pathlib import Path

    text = (Path(__file__).parent.parent / "deploy" / "kubernetes" / "secret.yaml").read_text()
    line = next(x for x in text.splitlines() if "BOTPULSE_ADMIN_TOKEN:" in x)
    placeholder = line.split(":", 1)[1].strip().strip('"')
    with pytest.raises(SettingsError):
        load_settings({"BOTPULSE_ADMIN_TOKEN": placeholder})


@pytest.mark.parametrize(
    "env",
    [
        {"CLICKHOUSE_URL": "tcp://default:hunter2secret@ch:9000"},
        {"REDIS_URL": "localhost://:hunter2secret@r:6379"},
        {"REDIS_URL": "redis://u:hunter2secret@r:6379/0", "BOTPULSE_BATCH_ROWS": "x"},
        {"CLICKHOUSE_URL": "ftp://ch/?password=hunter2secret"},
    ],
)
def test_bad_url_setting_never_shows_its_password(env):
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    assert "hunter2secret" not in str(info.value)


def test_database_name_with_a_trailing_newline_is_refused():
    with pytest.raises(SettingsError):
        load_settings({"BOTPULSE_CLICKHOUSE_DATABASE": "botpulse\n"})


def test_cli_and_log_lines_redact_url_credentials(monkeypatch, capsys, caplog):
    import logging

    import structlog

    from botpulse.cli import main
    from botpulse.runtime.logs import configure_logging, get_logger
    from botpulse.runtime.redact import redact

    assert redact("redis://:hunter2secret@h:6379/0") == "redis://***@h:6379/0"
    assert redact("http://user:hunter2secret@ch:8123/?x=1") == "http://***@ch:8123/?x=1"
    assert redact("chdb:///var/lib/botpulse") == "chdb:///var/lib/botpulse"

    monkeypatch.setenv("CLICKHOUSE_URL", "tcp://default:hunter2secret@ch:9000")
    assert main(["migrate"]) == 2
    assert "hunter2secret" not in capsys.readouterr().err

    configure_logging(load_settings({"BOTPULSE_LOG_FORMAT": "json"}))
    try:
        get_logger("t").warning("redis down", error="Error connecting to redis://:hunter2secret@r:6379")
        get_logger("t").warning("failed", exc=ConnectionError("http://u:hunter2secret@ch:8123 refused"))
        logging.getLogger("clickhouse_connect").warning("retry %s", "http://u:hunter2secret@ch:8123")
        err = capsys.readouterr().err + caplog.text
        assert "redis down" in err and "retry http://***@ch:8123" in err and "refused" in err
        assert "hunter2secret" not in err
    finally:
        structlog.reset_defaults()


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


def test_query_and_insert_timeouts_are_separate_settings():
    settings = load_settings({"BOTPULSE_INSERT_TIMEOUT_S": "7", "BOTPULSE_QUERY_TIMEOUT_S": "2.5"})
    assert (settings.insert_timeout_s, settings.query_timeout_s) == (7.0, 2.5)
    defaults = load_settings({})
    assert defaults.query_timeout_s == defaults.insert_timeout_s == 10.0  # as before the split
    with pytest.raises(SettingsError) as info:
        load_settings({"BOTPULSE_QUERY_TIMEOUT_S": "0"})
    assert "BOTPULSE_QUERY_TIMEOUT_S='0' is invalid: expected a number (> 0" in str(info.value)


def test_heartbeat_window_in_ms_comes_from_the_settings():
    assert load_settings({"BOTPULSE_HEARTBEAT_WINDOW_S": "90"}).heartbeat_window_ms == 90_000


@pytest.mark.parametrize("role", ["gateway", "worker", "query", "alerts"])
def test_a_service_without_redis_url_is_refused_by_the_loader(role):
    with pytest.raises(SettingsError) as info:
        load_settings({}, roles=(role,))
    message = str(info.value)
    assert message.startswith(f"REDIS_URL is not set: `botpulse {role}` needs it")
    assert "\n" not in message
    assert load_settings({"REDIS_URL": "redis://r:6379/0"}, roles=(role,)).redis_url == "redis://r:6379/0"


def test_commands_that_bring_their_own_redis_need_no_redis_url():
    assert load_settings({}).redis_url is None
    assert load_settings({}, roles=("dev",)).redis_url is None


def test_dev_refuses_one_port_for_both_services():
    same = {"BOTPULSE_GATEWAY_PORT": "9000", "BOTPULSE_QUERY_PORT": "9000"}
    with pytest.raises(SettingsError) as info:
        load_settings(same, roles=("dev",))
    assert "BOTPULSE_GATEWAY_PORT and BOTPULSE_QUERY_PORT are both 9000" in str(info.value)
    # Separate processes (compose, Kubernetes) may use one port each on their own address.
    assert load_settings(same, roles=("query",), redis_url="redis://r:6379/0").query_port == 9000
    assert load_settings({**same, "BOTPULSE_QUERY_LISTEN": "0.0.0.0"}, roles=("dev",)).gateway_port == 9000


def _run_botpulse(tmp_path, *argv, **env_vars):  # type: ignore[no-untyped-def]
    import os
    import subprocess
    import sys

    from botpulse.runtime.settings import env_name as name

    names = {name(f) for f in Settings.__struct_fields__}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(BOTPULSE_DATA_DIR=str(tmp_path / "data"), **env_vars)
    return subprocess.run(
        [sys.executable, "-m", "botpulse", *argv], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("command", [["gateway"], ["worker"], ["query"], ["query", "--with-worker"]])
def test_service_started_without_redis_url_prints_one_line_and_exits_2(tmp_path, command):
    result = _run_botpulse(tmp_path, *command)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"botpulse: REDIS_URL is not set: `botpulse {command[0]}` needs it")
    # Refused before anything opened: no embedded ClickHouse was created.
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("command", "env", "fragment"),
    [
        (["gateway"], {"BOTPULSE_GATEWAY_PORT": "http"}, "BOTPULSE_GATEWAY_PORT='http' is invalid"),
        (["query"], {"BOTPULSE_QUERY_TIMEOUT_S": "-1"}, "BOTPULSE_QUERY_TIMEOUT_S='-1' is invalid"),
        (["worker"], {"REDIS_URL": "127.0.0.1:6379"}, "REDIS_URL='127.0.0.1:6379' is invalid"),
    ],
)
def test_service_started_with_a_bad_setting_prints_one_line_and_exits_2(tmp_path, command, env, fragment):
    result = _run_botpulse(tmp_path, *command, **env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("botpulse: ") and fragment in line


def test_gateway_on_a_taken_port_prints_one_line_naming_the_variables(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_botpulse(
            tmp_path, "gateway", REDIS_URL="redis://127.0.0.1:1/0", BOTPULSE_GATEWAY_PORT=str(port)
        )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"botpulse: BOTPULSE_GATEWAY_LISTEN='127.0.0.1' BOTPULSE_GATEWAY_PORT={port}: ")
    assert "cannot listen there" in line and "in use" in line


def test_query_on_an_unknown_listen_host_prints_one_line_naming_the_variables(tmp_path):
    from botpulse.runtime.embedded import EmbeddedRedis

    # Its own Redis: the service writes the registry index before it binds.
    with EmbeddedRedis(tmp_path / "redis") as server:
        result = _run_botpulse(
            tmp_path, "query", REDIS_URL=server.url, BOTPULSE_QUERY_LISTEN="no-such-host.invalid"
        )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    expected = "botpulse: BOTPULSE_QUERY_LISTEN='no-such-host.invalid' BOTPULSE_QUERY_PORT=8081"
    assert last_line.startswith(f"{expected}: cannot listen there")
