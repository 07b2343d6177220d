"""schemathesis against a running gateway and query service, from the document each serves at
`/openapi.json`: positive and negative examples per operation (bounded, so the whole file runs in
about a minute), authenticated operations with a real account key (and the operator token for
the admin API). Checked: no 5xx, every status documented, every body and header as documented,
the documented content type. A finding becomes a fix and a regression test in
tests/test_openapi.py with the exact input."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from services import base_env, call, free, service

from botpulse.ingest.spec import EXAMPLE_BOT
from botpulse.ingest.spec import SPECS as GATEWAY
from botpulse.query.spec import SPECS as QUERY

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
EXAMPLES = 12  # per operation and generation mode (positive, negative)


class Stack:
    def __init__(self, gateway: str, query: str, admin_token: str, key: str, account: str) -> None:
        self.gateway = gateway
        self.query = query
        self.admin_token = admin_token
        self.key = key
        self.account = account
        self.statuses: dict[tuple[str, str, str], list[int]] = {}
        # Ids of the fixture's objects the generated path ids are pointed at, by operation:
        # spare ones for the deleting operations, so the others keep theirs.
        self.ids: dict[tuple[str, str], str] = {}
        self.destination = ""


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir: Path = tmp_path_factory.mktemp("schemathesis")
    token = secrets.token_urlsafe(24)
    env = base_env(
        redis_url,
        data_dir,
        BOTPULSE_ADMIN_TOKEN=token,
        BOTPULSE_STATS_RATE_BURST="100000",  # posts get stored, not mostly 429
        BOTPULSE_CUSTOM_RATE_PER_MIN="100000",
        BOTPULSE_REGISTRY_WRITES_PER_MIN="100000",
        # Alert destinations on loopback (nothing listens there: no delivery is asserted here).
        BOTPULSE_ALERTS_ALLOW_HTTP="1",
        BOTPULSE_ALERTS_ALLOW_NETWORKS="127.0.0.0/8",
    )
    with service(["query"], env, free()) as query, service(["gateway"], env, free()) as gateway:
        admin = {"Authorization": f"Bearer {token}"}
        status, account = call("POST", f"{query}/v1/admin/accounts", {"name": "schemathesis"}, admin)
        assert status == 201, account
        body = {"id": EXAMPLE_BOT, "account": account["id"], "username": "Example"}
        status, bot = call("POST", f"{query}/v1/admin/bots", body, admin)
        assert status == 201, bot
        stack = Stack(gateway, query, token, account["key"], account["id"])
        owner = {"Authorization": stack.key}

        def create(path: str, body: dict[str, Any]) -> str:
            status, made = call("POST", f"{query}{path}", body, owner)
            assert status == 201, made
            return str(made["id"])

        for route in ("/v1/account/keys/{keyId}", "/v1/admin/accounts/{accountId}/keys/{keyId}"):
            stack.ids[("DELETE", route)] = create("/v1/account/keys", {"name": "spare", "scope": "read"})
        stack.destination = f"http://127.0.0.1:{free()}/hook"
        hook = {"name": "ops", "type": "webhook", "url": stack.destination}
        kept, spare = create("/v1/alerts/destinations", hook), create("/v1/alerts/destinations", hook)
        stack.ids[("DELETE", "/v1/alerts/destinations/{id}")] = spare
        rule = {"name": "down", "bot": EXAMPLE_BOT, "kind": "offline", "minutes": 5, "destinations": [kept]}
        kept_rule, spare_rule = create("/v1/alerts/rules", rule), create("/v1/alerts/rules", rule)
        for method, path in (
            ("GET", "/v1/alerts/rules/{id}"),
            ("PATCH", "/v1/alerts/rules/{id}"),
            ("GET", "/v1/alerts/rules/{id}/deliveries"),
        ):
            stack.ids[(method, path)] = kept_rule
        stack.ids[("DELETE", "/v1/alerts/rules/{id}")] = spare_rule
        stack.ids[("POST", "/v1/alerts/rules")] = kept  # its body's destination
        yield stack


def _schema(url: str) -> Any:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    # No generated credentials: every request carries the real key or the operator token (`_headers`).
    schema.config.generation.update(max_examples=EXAMPLES, with_security_parameters=False)
    return schema


@pytest.fixture(scope="module")
def gateway_schema(stack: Stack) -> Any:
    return _schema(stack.gateway)


@pytest.fixture(scope="module")
def query_schema(stack: Stack) -> Any:
    return _schema(stack.query)


def _headers(stack: Stack, case: Any) -> dict[str, str]:
    security = case.operation.definition.raw.get("security") or []
    names = {next(iter(s)) for s in security}
    if "adminToken" in names:
        return {"Authorization": f"Bearer {stack.admin_token}"}
    if names:
        return {"Authorization": stack.key}
    return {}


def _aim(stack: Stack, case: Any) -> None:
    """Point generated ids at the fixture's objects, so the success paths run and not only the
    404s: the account, spare keys, rules and destinations, the real key in Statcord's body, a
    destination URL the guard allows. The admin API may remove or move any bot: keep it off the
    one the other operations use."""
    method, path = case.operation.method.upper(), case.operation.path
    params = case.path_parameters or {}
    body = case.body if isinstance(case.body, dict) else {}
    if path.startswith("/v1/admin/"):
        if params.get("botId") == EXAMPLE_BOT:
            params["botId"] = "scratch-bot"
        if body.get("id") == EXAMPLE_BOT:
            body["id"] = "scratch-bot"
        if isinstance(body.get("account"), str):
            body["account"] = stack.account
    if "accountId" in params:
        params["accountId"] = stack.account
    for name in ("keyId", "id"):
        if name in params and (method, path) in stack.ids:
            params[name] = stack.ids[(method, path)]
    if path == "/v3/stats" and isinstance(body.get("key"), str):
        body["key"] = stack.key
        body["id"] = EXAMPLE_BOT
    if path == "/v1/alerts/destinations" and isinstance(body.get("url"), str):
        body["url"] = stack.destination
    if path == "/v1/alerts/rules" and method == "POST":
        if isinstance(body.get("destinations"), list):
            body["destinations"] = [stack.ids[(method, path)]]
        if isinstance(body.get("bot"), str):
            body["bot"] = EXAMPLE_BOT


def _run(stack: Stack, base_url: str, case: Any) -> None:
    _aim(stack, case)
    response = case.call(base_url=base_url, headers=_headers(stack, case))
    # By service too: both serve /healthz and /readyz.
    key = (base_url, case.operation.method.upper(), case.operation.path)
    stack.statuses.setdefault(key, []).append(response.status_code)
    case.validate_response(response, checks=CHECKS)
    if response.status_code == 200 and case.operation.path in (
        "/v1/account/key/regenerate",
        "/v1/admin/accounts/{accountId}/key/regenerate",
    ):
        stack.key = response.json()["token"]  # the old account key stopped working


_settings = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
    derandomize=True,  # the same examples every run: a finding is reproducible
)


def _fuzz(stack: Stack, base_url: str, schema: Any, method: str, path: str) -> None:
    """schemathesis's pytest plugin does not run on this pytest (9); its strategies do, through
    hypothesis directly: positive and negative examples of the one operation."""
    operation = schema[path][method]
    # The document's own examples first: they name the fixture's bot, so the 2xx paths run too.
    for strategy in schema.get_strategies_from_examples(operation):

        @settings(_settings, max_examples=3)
        @given(case=strategy)
        def example(case: Any) -> None:
            _run(stack, base_url, case)

        example()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @_settings
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            _run(stack, base_url, case)

        try:
            run()
        except Unsatisfiable:
            # Nothing to make invalid: no parameter and no body (the health routes, registry sync).
            assert mode is GenerationMode.NEGATIVE and not operation.definition.raw.get("parameters")


@pytest.mark.parametrize(("method", "path"), [(r.method, r.path) for r in GATEWAY.routes])
def test_gateway(stack: Stack, gateway_schema: Any, method: str, path: str) -> None:
    _fuzz(stack, stack.gateway, gateway_schema, method, path)


@pytest.mark.parametrize(("method", "path"), [(r.method, r.path) for r in QUERY.routes])
def test_query(stack: Stack, query_schema: Any, method: str, path: str) -> None:
    _fuzz(stack, stack.query, query_schema, method, path)


def test_zz_the_real_key_and_token_reached_the_handlers(stack: Stack) -> None:
    """Runs after the operations above (file order): the fixture's credentials worked, so the
    success paths were exercised, not only refusals."""
    everything = len(GATEWAY.routes) + len(QUERY.routes)
    if len(stack.statuses) < everything:
        pytest.skip("only part of the operations ran (-k)")
    succeeded = {
        (method, path)
        for (_, method, path), statuses in stack.statuses.items()
        if any(200 <= s < 300 for s in statuses)
    }
    must = [
        ("POST", "/v1/bot/{botId}"),
        ("GET", "/v1/account"),
        ("GET", "/api/v1/uptime"),
        ("GET", "/v1/admin/accounts"),
        ("PATCH", "/v1/bot/{botId}"),
        ("GET", "/v1/bot/{botId}/uptime"),
    ]
    for op in must:
        assert op in succeeded, op
    failed_everywhere = sorted(
        (base, method, path)
        for (base, method, path), statuses in stack.statuses.items()
        if not any(200 <= s < 300 for s in statuses)
    )
    # Generated bodies may miss by chance (an admin PATCH naming a field no bot has); the
    # refusal-only routes (GET /bots/{botId}/keys/regen: 405) have no success to reach.
    refusal_only = {
        (r.method, r.path)
        for r in (*GATEWAY.routes, *QUERY.routes)
        if not any(200 <= code < 300 for code in r.replies)
    }
    missed = [op for op in failed_everywhere if op[1:] not in refusal_only]
    assert len(missed) <= 2, "\n".join(map(str, missed))
