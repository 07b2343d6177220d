"""deploy/'s monitoring stays true to the code (read, like tests/test_deploy.py; nothing runs):
the scrape configs reach the ports the services' settings open, every PromQL expression parses
and names only metrics the code exports, the alert rules are the four the operations guide
explains (the same in the Prometheus and the Prometheus Operator form), and the HPA scales the
workers on lag."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY
from test_deploy import _env_dict, _interpolate, dockerfile_env

import botpulse.ingest.metrics
import botpulse.query.metrics
import botpulse.workers.metrics  # noqa: F401 - the metric objects register on import
from botpulse.runtime.clickhouse import _timer
from botpulse.runtime.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MONITORING = DEPLOY / "kubernetes" / "monitoring"
ROLE_PORT = {
    "gateway": "gateway_metrics_port",
    "query": "query_metrics_port",
    "worker": "worker_metrics_port",
}


def _exported() -> set[str]:
    _timer("query")  # the ClickHouse histogram exists once a Store has run
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
    return {n for n in names if n.startswith("botpulse_")}


def _check_promql(where: str, expr: str, exported: set[str]) -> None:
    text = expr.replace("$__rate_interval", "5m")
    try:
        promql_parser.parse(text)
    except ValueError as exc:
        pytest.fail(f"{where}: {expr!r} is not PromQL: {exc}")
    used = set(re.findall(r"\bbotpulse_[a-z0-9_]+", text))
    assert used, f"{where}: {expr!r} uses no botpulse metric"
    unknown = used - exported
    assert not unknown, f"{where}: {expr!r} uses metrics the code does not export: {sorted(unknown)}"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _interpolate(yaml.safe_load((DEPLOY / "docker-compose.yml").read_text()))


@pytest.fixture(scope="module")
def alerts() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())


def test_compose_scrape_config_reaches_every_service_on_its_metrics_port(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for role, field in ROLE_PORT.items():
        svc = compose["services"][role]
        settings = load_settings({**dockerfile_env(), **_env_dict(svc["environment"])})
        port = getattr(settings, field)
        assert port, (
            f"{role}: no metrics port set in compose: it would serve none (worker) or on the API port"
        )
        assert settings.metrics_listen == "0.0.0.0", f"{role}: the metrics listener must be reachable"
        job = jobs[f"botpulse-{role}"]
        assert job["metrics_path"] == settings.metrics_path
        (sd,) = job["dns_sd_configs"]
        assert sd["names"] == [role] and sd["port"] == port
        published = [str(p).split(":")[-1] for p in svc.get("ports", [])]
        assert str(port) not in published, f"{role}: the metrics port is published to the host"
    prometheus = compose["services"]["prometheus"]
    mounts = {v.split(":")[1] for v in prometheus["volumes"] if v.startswith("./")}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/alerts.yml"} <= mounts
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_alert_rules_are_the_four_the_guide_explains(alerts: dict[str, Any]) -> None:
    rules = {r["alert"]: r for g in alerts["groups"] for r in g["rules"]}
    assert set(rules) == {
        "BotpulseWorkerLagHigh",
        "BotpulseDeadLettersGrowing",
        "BotpulseGateway5xxRate",
        "BotpulseNoInsert",
    }
    lag = rules["BotpulseWorkerLagHigh"]
    assert "botpulse_stream_lag_seconds" in lag["expr"] and lag["for"] == "5m"
    assert re.search(r">\s*\d+", lag["expr"])
    assert "botpulse_stream_dead_lettered_total" in rules["BotpulseDeadLettersGrowing"]["expr"]
    assert 'status_class="5xx"' in rules["BotpulseGateway5xxRate"]["expr"]
    assert re.search(
        r"botpulse_stream_last_insert_timestamp_seconds\)\s*>\s*120", rules["BotpulseNoInsert"]["expr"]
    )
    guide = (ROOT / "docs" / "operations.md").read_text()
    for name, rule in rules.items():
        assert name in guide, f"docs/operations.md does not explain {name}"
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_every_promql_expression_parses_and_uses_exported_metrics(alerts: dict[str, Any]) -> None:
    exported = _exported()
    for group in alerts["groups"]:
        for rule in group["rules"]:
            _check_promql(f"alerts.yml {rule['alert']}", rule["expr"], exported)
    dashboard = json.loads((DEPLOY / "grafana" / "botpulse-dashboard.json").read_text())
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            _check_promql(f"dashboard panel {panel['title']!r}", target["expr"], exported)
    adapter = yaml.safe_load((MONITORING / "prometheus-adapter-rules.yaml").read_text())
    for rule in yaml.safe_load(adapter["data"]["config.yaml"])["externalRules"]:
        _check_promql("prometheus-adapter rule", rule["metricsQuery"], exported)


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "botpulse-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "botpulse_gateway_posts_appended_total",  # ingest rate
        "botpulse_gateway_refusals_total",  # refusals
        "botpulse_stream_lag_seconds",  # lag
        "botpulse_worker_rows_inserted_total",  # insert rate
        "botpulse_query_request_duration_seconds_bucket",  # query latency
    ):
        assert metric in exprs, metric
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_prometheus_operator_rules_are_the_same_rules(alerts: dict[str, Any]) -> None:
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == alerts


def test_monitoring_kustomization_and_service_monitor_match_the_services() -> None:
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {p.name for p in MONITORING.glob("*.yaml")} - {
        "kustomization.yaml"
    }
    monitor = yaml.safe_load((MONITORING / "servicemonitors.yaml").read_text())
    (endpoint,) = monitor["spec"]["endpoints"]
    components = next(
        e["values"] for e in monitor["spec"]["selector"]["matchExpressions"] if e["key"].endswith("component")
    )
    assert set(components) == set(ROLE_PORT)
    config = yaml.safe_load((DEPLOY / "kubernetes" / "configmap.yaml").read_text())["data"]
    settings = load_settings({**dockerfile_env(), **config})
    assert endpoint["path"] == settings.metrics_path
    services = {}
    pods = {}
    for name in ("gateway", "query", "worker"):
        for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / f"{name}.yaml").read_text()):
            if doc and doc["kind"] == "Service":
                services[name] = doc
            if doc and doc["kind"] == "Deployment":
                pods[name] = doc["spec"]["template"]
    for role, field in ROLE_PORT.items():
        port = getattr(settings, field)
        assert port, f"{role}: no metrics port in the ConfigMap"
        ports = {p["name"]: p for p in services[role]["spec"]["ports"]}
        assert ports[endpoint["port"]]["port"] == port, role
        (container,) = pods[role]["spec"]["containers"]
        assert {"name": "metrics", "containerPort": port} in container["ports"], role
        annotations = pods[role]["metadata"]["annotations"]
        assert (
            annotations["prometheus.io/port"] == str(port)
            and annotations["prometheus.io/path"] == settings.metrics_path
        )


def test_worker_hpa_scales_on_lag() -> None:
    hpa = yaml.safe_load((DEPLOY / "kubernetes" / "worker-hpa.yaml").read_text())
    assert hpa["spec"]["scaleTargetRef"]["name"] == "botpulse-worker"
    external = [m["external"] for m in hpa["spec"]["metrics"] if m["type"] == "External"]
    assert external and external[0]["metric"]["name"] == "botpulse_stream_lag_seconds"
    threshold = float(external[0]["target"]["value"])
    alert = next(
        r for g in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
        for r in g["rules"] if r["alert"] == "BotpulseWorkerLagHigh"
    )  # fmt: skip
    assert threshold < float(re.search(r">\s*(\d+)", alert["expr"]).group(1))  # scale before paging
    adapter = yaml.safe_load((MONITORING / "prometheus-adapter-rules.yaml").read_text())
    names = [r["name"]["as"] for r in yaml.safe_load(adapter["data"]["config.yaml"])["externalRules"]]
    assert "botpulse_stream_lag_seconds" in names


def test_every_exported_metric_is_in_the_operations_reference() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    table = set(re.findall(r"^\| `(botpulse_[a-z0-9_]+)` \|", guide, re.M))
    families = set()
    for family in REGISTRY.collect():
        if family.name.startswith("botpulse_"):
            families.add(family.name + ("_total" if family.type == "counter" else ""))
    _timer("query")
    assert families - table == set(), "metrics missing from docs/operations.md#metrics"
    assert table - families == set(), "docs/operations.md#metrics lists metrics the code does not export"
