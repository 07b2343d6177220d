"""The OpenAPI 3.1 document: generated from the route specs and structs the services use, valid
against the OpenAPI 3.1 schema, committed current, covering every mounted route, and served by
each service for its own routes."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from aiohttp.test_utils import TestClient, TestServer
from alerts_fixtures import ADMIN, account, alert_settings, api_client, bot, destination, rule
from ingest_server import GatewayServer
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from botpulse import openapi_cli
from botpulse.ingest.spec import SPECS as GATEWAY
from botpulse.query.app import build_app as build_query
from botpulse.query.dashboard import pages
from botpulse.query.spec import SPECS as QUERY
from botpulse.registry import model, quotas
from botpulse.registry.catalog import create_account
from botpulse.runtime.clickhouse import Store
from botpulse.runtime.openapi import prefixed, undocumented
from botpulse.runtime.settings import Settings
from botpulse.schemas import account as bodies
from botpulse.schemas.http import StatsBody

OPERATOR_ROUTES = {"/metrics", "/openapi.json"}
# The dashboard's browser routes (HTML pages, their static files, SVG badges) are not JSON API
# routes: the document leaves them out by this one rule, the dashboard's own list of them. Its
# API-style route (the export) is described like every other.
BROWSER_ROUTES = {path for _, path, _ in pages.BROWSER_ROUTES}


def test_committed_document_and_page_are_current() -> None:
    stale = openapi_cli.stale()
    assert not stale, (
        f"{', '.join(map(str, stale))} differ from what the route specs generate: "
        f"run `{openapi_cli.REGENERATE}` (or `.venv/bin/botpulse openapi`) and commit the result"
    )


def test_combined_document_is_valid_openapi_31() -> None:
    doc = json.loads((openapi_cli.ROOT / openapi_cli.DOCUMENT).read_text())
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema


@pytest.mark.parametrize("specs", [GATEWAY, QUERY], ids=["gateway", "query"])
def test_each_service_document_is_valid_openapi_31(specs) -> None:  # type: ignore[no-untyped-def]
    validate(specs.document(version="1"))


def test_every_public_operation_is_in_the_combined_document() -> None:
    doc = openapi_cli.combined()
    described = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    for route in [*GATEWAY.routes, *QUERY.routes]:
        assert (route.method, route.path) in described
    ops = [op for item in doc["paths"].values() for op in item.values()]
    assert len({op["operationId"] for op in ops}) == len(ops)
    admin = [op for op in ops if "admin" in op["tags"]]
    assert admin and all(op["x-admin"] and op["security"] == [{"adminToken": []}] for op in admin)
    for op in ops:  # every refusal has the {message, field} shape (or a compatible one)
        for status, reply in op["responses"].items():
            if status.startswith("4") and "content" in reply:
                ref = reply["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
                assert "message" in doc["components"]["schemas"][ref]["properties"], (
                    op["operationId"],
                    status,
                )


def test_bodies_and_answers_come_from_the_structs() -> None:
    doc = openapi_cli.combined()
    schemas = doc["components"]["schemas"]
    stats = doc["paths"]["/v1/bot/{botId}"]["post"]["requestBody"]["content"]["application/json"]
    assert stats["schema"] == {"$ref": "#/components/schemas/StatsBody"}
    assert set(schemas["StatsBody"]["properties"]) == set(StatsBody.__struct_fields__)
    assert schemas["StatsBody"]["required"] == ["guilds"]
    assert schemas["ErrorBody"]["required"] == ["message"]
    assert set(schemas["ErrorBody"]["properties"]) == {"message", "field", "retryAfter", "reason"}


@pytest.mark.parametrize("prefix", ["", "/stats"])
def test_gateway_routes_are_all_documented(make_settings: Callable[..., Settings], prefix: str) -> None:
    from botpulse.ingest.app import build_app

    app = build_app(make_settings(gateway_prefix=prefix))
    ignore = {prefix + p for p in OPERATOR_ROUTES} | OPERATOR_ROUTES
    assert undocumented(app, prefixed(GATEWAY.routes, prefix), ignore=ignore) == []


@pytest.mark.parametrize("prefix", ["", "/stats"])
def test_query_routes_are_all_documented(
    make_settings: Callable[..., Settings], store: Store, prefix: str
) -> None:
    settings = make_settings(query_prefix=prefix)
    ignore = {prefix + p for p in OPERATOR_ROUTES | BROWSER_ROUTES} | OPERATOR_ROUTES
    assert undocumented(build_query(settings, store), prefixed(QUERY.routes, prefix), ignore=ignore) == []
    # The rule leaves out nothing the document describes, and every browser route is mounted.
    assert not BROWSER_ROUTES & {r.path for r in QUERY.routes}
    mounted = set(undocumented(build_query(settings, store), prefixed(QUERY.routes, prefix)))
    assert {f"{m} {prefix}{p}" for m, p, _ in pages.BROWSER_ROUTES} <= mounted


async def test_each_body_is_decoded_with_the_struct_the_document_shows(
    make_settings: Callable[..., Settings], store: Store, redis, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """One definition: for every documented query route with a body, the handler decodes it with
    the very struct the route's spec names (identity, not equal field names), so a field or bound
    changed in the struct changes the validation and the document together. Each route is sent a
    body no struct accepts (`[]`) with real credentials and ids; the one shared decoder
    (`registry.model.decode`) records the struct it is handed."""
    api = await api_client(alert_settings(make_settings), store)
    try:
        account_id, key = await account(api, "one definition")
        await bot(store, redis, account_id, "1")
        hook = await destination(api, key, "webhook", "http://127.0.0.1:9/hook")
        offline = {"name": "r", "bot": "1", "kind": "offline", "destinations": [hook["id"]]}
        made = await rule(api, key, offline)
        ids = {"botId": "1", "id": made["id"], "accountId": account_id}
        decoded: list[object] = []
        real = model.decode

        def recording(raw: bytes, struct: type) -> object:
            decoded.append(struct)
            return real(raw, struct)

        monkeypatch.setattr(model, "decode", recording)
        with_body = [r for r in QUERY.routes if r.body is not None]
        assert {r.body for r in with_body} == {
            bodies.BotCreate, bodies.BotPatch, bodies.WebhookPatch, bodies.KeyCreate,
            bodies.AccountCreate, bodies.AdminBotCreate, bodies.AdminBotPatch, bodies.LimitsPatch,
            bodies.RuleCreate, bodies.RuleChanges, bodies.DestinationCreate,
        }  # fmt: skip
        for route in with_body:
            decoded.clear()
            auth = f"Bearer {ADMIN}" if route.admin else key
            response = await api.request(
                route.method,
                route.path.format(**ids),
                data=b"[]",
                headers={"Authorization": auth, "Content-Type": "application/json"},
            )
            where = f"{route.method} {route.path}"
            assert response.status == 400, (where, await response.text())
            assert await response.json() == {"message": "Request body must be a JSON object"}, where
            assert len(decoded) == 1 and decoded[0] is route.body, (where, decoded, route.body)
    finally:
        await api.close()


def test_limit_bodies_have_the_limits_the_registry_stores() -> None:
    assert set(bodies.LimitsPatch.__struct_fields__) == set(quotas.FIELDS)


@pytest.mark.parametrize("prefix", ["", "/stats"])
async def test_gateway_serves_its_own_document(make_settings: Callable[..., Settings], prefix: str) -> None:
    async with TestClient(GatewayServer(make_settings(gateway_prefix=prefix))) as client:
        response = await client.get(f"{prefix}/openapi.json")
        assert response.status == 200
        doc = await response.json()
    assert {p for p in doc["paths"]} == {prefix + r.path for r in GATEWAY.routes}
    assert f"{prefix}/api/v1/bots/{{botId}}/stats" in doc["paths"]  # DBots' base, an alias
    assert "/v1/bots" not in doc["paths"]  # a query route
    validate(doc)


@pytest.mark.parametrize("prefix", ["", "/stats"])
async def test_query_serves_its_own_document_under_the_prefix(
    make_settings: Callable[..., Settings],
    store: Store,
    redis,
    prefix: str,  # type: ignore[no-untyped-def]
) -> None:
    settings = make_settings(query_prefix=prefix)
    async with TestClient(TestServer(build_query(settings, store))) as client:
        response = await client.get(f"{prefix}/openapi.json")
        assert response.status == 200
        doc = await response.json()
    assert set(doc["paths"]) == {prefix + r.path for r in QUERY.routes}
    validate(doc)


# --- regressions found by tests/test_schemathesis.py, with the exact input ------------------------
def answer_validator(status: int, method: str, path: str) -> Draft202012Validator:
    """The documented schema of an answer, resolvable against the whole document."""
    doc = openapi_cli.combined()
    schema = doc["paths"][path][method]["responses"][str(status)]["content"]["application/json"]["schema"]
    return Draft202012Validator({**schema, "components": doc["components"]})


async def test_registry_sync_answer_matches_its_schema(
    make_settings: Callable[..., Settings], store: Store, redis
) -> None:  # type: ignore[no-untyped-def]
    """schemathesis: `POST /v1/admin/registry/sync` (no body, the operator token) answered
    `{"bots": 1, "generation": "1796229531986:1796229532826"}`, and the document said `generation`
    was an integer. It is the `<accounts ms>:<bots ms>` text: the document now says so."""
    settings = make_settings(admin_token="t" * 32)
    await create_account(store, redis, "sync")
    async with TestClient(TestServer(build_query(settings, store))) as client:
        response = await client.post(
            "/v1/admin/registry/sync", headers={"Authorization": "Bearer " + "t" * 32}
        )
        assert response.status == 200
        body = await response.json()
    assert isinstance(body["generation"], str) and ":" in body["generation"]
    answer_validator(200, "post", "/v1/admin/registry/sync").validate(body)
