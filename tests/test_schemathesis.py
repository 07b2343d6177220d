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
        self.statuses: dict[tuple[str, str], list[int]] = {}


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
    )
    with service(["query"], env, free()) as query, service(["gateway"], env, free()) as gateway:
        admin = {"Authorization": f"Bearer {token}"}
        status, account = call("POST", f"{query}/v1/admin/accounts", {"name": "schemathesis"}, admin)
        assert status == 201, account
        body = {"id": EXAMPLE_BOT, "account": account["id"], "username": "Example"}
        status, bot = call("POST", f"{query}/v1/admin/bots", body, admin)
        assert status == 201, bot
        yield Stack(gateway, query, token, account["key"], account["id"])


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


def _protect(case: Any) -> None:
    """The admin API may remove or move any bot: keep it off the one the other operations use."""
    if (
        case.operation.path.startswith("/v1/admin/")
        and (case.path_parameters or {}).get("botId") == EXAMPLE_BOT
    ):
        case.path_parameters["botId"] = "scratch-bot"


def _run(stack: Stack, base_url: str, case: Any) -> None:
    _protect(case)
    response = case.call(base_url=base_url, headers=_headers(stack, case))
    key = (case.operation.method.upper(), case.operation.path)
    stack.statuses.setdefault(key, []).append(response.status_code)
    case.validate_response(response, checks=CHECKS)
    if response.status_code == 200 and case.operation.path in (
        "/v1/account/key/regenerate",
        "/bots/{botId}/keys/regen",
    ):
        stack.key = response.json()["token"]  # the old key stopped working


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
    succeeded = {op for op, statuses in stack.statuses.items() if any(200 <= s < 300 for s in statuses)}
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
    assert len(succeeded) >= everything - 5, sorted(set(stack.statuses) - succeeded)
