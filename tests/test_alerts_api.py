"""The alerts routes of the account API: rules and destinations per account, validation with
the field named, cross-account refusals, secrets shown once, tokens redacted."""

from __future__ import annotations

import msgspec
import pytest
from alerts_fixtures import account, alert_settings, api_client, bot, destination
from jsonschema import Draft202012Validator

from botpulse import openapi_cli
from botpulse.query import shapes
from botpulse.schemas import account as bodies
from botpulse.schemas.alerts import DeliveryEntry, Rule, log_key

BOT = "200000000000000001"


@pytest.fixture
async def env(make_settings, store, redis):
    settings = alert_settings(make_settings)
    api = await api_client(settings, store)
    acc, key = await account(api, "one")
    other_acc, other_key = await account(api, "two")
    await bot(store, redis, acc, BOT)
    await bot(store, redis, other_acc, "999")
    hook = await destination(api, key, "webhook", "http://127.0.0.1:9/hook")
    yield {"api": api, "key": key, "other": other_key, "hook": hook}
    await api.close()


def _h(key: str) -> dict[str, str]:
    return {"Authorization": key}


async def test_rule_lifecycle(env):
    api, key = env["api"], env["key"]
    body = {"name": "down", "bot": BOT, "kind": "offline", "destinations": [env["hook"]["id"]]}
    resp = await api.post("/v1/alerts/rules", json=body, headers=_h(key))
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert created["minutes"] == 3  # the heartbeat window, 180 s
    assert created["state"] == {"status": "ok", "incident": None, "since": None, "detail": None}
    assert "account" not in created
    rid = created["id"]

    resp = await api.patch(
        f"/v1/alerts/rules/{rid}", json={"name": "renamed", "mutedUntil": 5}, headers=_h(key)
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["name"] == "renamed"
    listed = (await (await api.get(f"/v1/alerts/rules?bot={BOT}", headers=_h(key))).json())["rules"]
    assert [(r["id"], r["name"], r["mutedUntil"]) for r in listed] == [(rid, "renamed", 5)]
    assert (await (await api.get("/v1/alerts/rules", headers=_h(env["other"]))).json())["rules"] == []

    deliveries = await api.get(f"/v1/alerts/rules/{rid}/deliveries", headers=_h(key))
    assert deliveries.status == 200 and (await deliveries.json())["deliveries"] == []

    resp = await api.delete(f"/v1/alerts/destinations/{env['hook']['id']}", headers=_h(key))
    assert resp.status == 409  # still used
    assert (await api.delete(f"/v1/alerts/rules/{rid}", headers=_h(key))).status == 204
    assert (await api.get(f"/v1/alerts/rules/{rid}", headers=_h(key))).status == 404
    assert (await api.delete(f"/v1/alerts/destinations/{env['hook']['id']}", headers=_h(key))).status == 204


BAD_RULES = [
    ({"bot": BOT, "kind": "offline"}, "name"),
    ({"name": "x", "bot": BOT, "kind": "sometimes"}, "kind"),
    ({"name": "x", "bot": BOT, "kind": "offline", "minutes": 0}, "minutes"),
    ({"name": "x", "bot": BOT, "kind": "offline", "metric": "guilds"}, "metric"),
    ({"name": "x", "bot": BOT, "kind": "threshold", "op": "above", "value": 1}, "metric"),
    (
        {"name": "x", "bot": BOT, "kind": "threshold", "metric": "ping", "op": "above", "value": 1},
        "metric",
    ),
    ({"name": "x", "bot": BOT, "kind": "threshold", "metric": "apiPing", "op": "drop", "value": 1}, "op"),
    (
        {"name": "x", "bot": BOT, "kind": "threshold", "metric": "custom.a b", "op": "above", "value": 1},
        "metric",
    ),
    ({"name": "x", "bot": BOT, "kind": "change", "metric": "guilds", "op": "drop"}, "percent"),
    (
        {"name": "x", "bot": BOT, "kind": "change", "metric": "guilds", "op": "drop", "percent": 500},
        "percent",
    ),
    (
        {"name": "x", "bot": BOT, "kind": "offline", "quietHours": {"start": "25:00", "end": "07:00"}},
        "quietHours.start",
    ),
    (
        {
            "name": "x",
            "bot": BOT,
            "kind": "offline",
            "quietHours": {"start": "22:00", "end": "07:00", "timezone": "Mars/Olympus"},
        },
        "quietHours.timezone",
    ),
    ({"name": "x", "bot": BOT, "kind": "offline", "muted": "yes"}, "muted"),
    ({"name": "x", "bot": BOT, "kind": "offline", "mutedUntil": 10**20}, "mutedUntil"),
    (
        {
            "name": "x",
            "bot": BOT,
            "kind": "threshold",
            "metric": "apiPing",
            "op": "above",
            "value": 1,
            "minutes": 2000,
        },
        "minutes",
    ),
    ({"name": "x", "bot": BOT, "kind": "shards_down"}, "count"),
    ({"name": "x", "bot": BOT, "kind": "shards_down", "count": 0}, "count"),
    ({"name": "x", "bot": BOT, "kind": "shards_down", "count": 100_001}, "count"),
    ({"name": "x", "bot": BOT, "kind": "shards_down", "count": 1.5}, "count"),
    ({"name": "x", "bot": BOT, "kind": "shards_down", "count": 2, "minutes": 5}, "minutes"),
    ({"name": "x", "bot": BOT, "kind": "offline", "count": 2}, "count"),
    ({"name": "x", "bot": BOT, "kind": "offline", "surprise": 1}, "surprise"),
    ({"name": "x", "bot": "bad id!", "kind": "offline"}, "bot"),
]


async def test_bad_rules_are_400_naming_the_field(env):
    for body, field in BAD_RULES:
        resp = await env["api"].post(
            "/v1/alerts/rules", json={"destinations": [env["hook"]["id"]]} | body, headers=_h(env["key"])
        )
        assert resp.status == 400, (body, await resp.text())
        assert (await resp.json())["field"] == field, body
    listed = await env["api"].get("/v1/alerts/rules", headers=_h(env["key"]))
    assert (await listed.json())["rules"] == []


async def test_refusals_across_accounts(env):
    api, key, other = env["api"], env["key"], env["other"]
    # A bot the account does not manage, a destination it does not own.
    resp = await api.post(
        "/v1/alerts/rules",
        json={"name": "x", "bot": "999", "kind": "offline", "destinations": [env["hook"]["id"]]},
        headers=_h(key),
    )
    assert resp.status == 400 and (await resp.json())["field"] == "bot"
    resp = await api.post(
        "/v1/alerts/rules",
        json={"name": "x", "bot": "999", "kind": "offline", "destinations": [env["hook"]["id"]]},
        headers=_h(other),
    )
    assert resp.status == 400 and (await resp.json())["field"] == "destinations[0]"
    rid = (
        await (
            await api.post(
                "/v1/alerts/rules",
                json={"name": "x", "bot": BOT, "kind": "offline", "destinations": [env["hook"]["id"]]},
                headers=_h(key),
            )
        ).json()
    )["id"]
    for method, path in (
        ("GET", f"/v1/alerts/rules/{rid}"),
        ("PATCH", f"/v1/alerts/rules/{rid}"),
        ("DELETE", f"/v1/alerts/rules/{rid}"),
        ("GET", f"/v1/alerts/rules/{rid}/deliveries"),
        ("DELETE", f"/v1/alerts/destinations/{env['hook']['id']}"),
    ):
        resp = await api.request(method, path, json={"name": "stolen"}, headers=_h(other))
        assert resp.status == 404, (method, path)
    for method, path in (
        ("GET", "/v1/alerts/rules"),
        ("POST", "/v1/alerts/rules"),
        ("GET", "/v1/alerts/destinations"),
        ("POST", "/v1/alerts/destinations"),
    ):
        assert (await api.request(method, path, json={})).status == 401
        assert (await api.request(method, path, json={}, headers=_h("DS-wrong"))).status == 401


async def test_secrets_shown_once_and_discord_tokens_redacted(env):
    api, key = env["api"], env["key"]
    assert env["hook"]["secret"].startswith("whsec_")
    discord = await destination(api, key, "discord", "http://127.0.0.1:9/api/webhooks/42/very-secret-token")
    assert "secret" not in discord
    listed = (await (await api.get("/v1/alerts/destinations", headers=_h(key))).json())["destinations"]
    assert {d["id"] for d in listed} == {env["hook"]["id"], discord["id"]}
    text = str(listed)
    assert "whsec_" not in text and "very-secret-token" not in text
    assert next(d for d in listed if d["type"] == "discord")["url"] == "http://127.0.0.1:9/api/webhooks/42/…"
    resp = await api.post(
        "/v1/alerts/destinations",
        json={"name": "d", "type": "discord", "url": "http://127.0.0.1:9/not-a-webhook"},
        headers=_h(key),
    )
    assert resp.status == 400 and (await resp.json())["field"] == "url"


# --- the bodies hold what a stored rule holds ------------------------------------------------------
def test_rule_bodies_have_the_fields_of_a_stored_rule() -> None:
    """A body field `Rule` lacked would be accepted and silently dropped (`Rule` takes unknown
    fields): the body structs carry every stored field but the ones the service sets, and a
    change keeps `bot` and `kind`."""
    stored = {f.encode_name for f in msgspec.structs.fields(Rule)}
    stored -= {"id", "account", "createdAt", "updatedAt"}
    assert set(bodies.RuleCreate.__struct_fields__) == stored
    assert set(bodies.RuleChanges.__struct_fields__) == stored - {"bot", "kind"}


def test_rule_view_struct_has_every_field_of_a_stored_rule_but_its_account() -> None:
    stored = {msgspec.structs.fields(Rule)[i].encode_name for i in range(len(Rule.__struct_fields__))}
    assert set(shapes.RuleView.__struct_fields__) == stored - {"account"}


def _validator(status: int, method: str, path: str) -> Draft202012Validator:
    doc = openapi_cli.combined()
    schema = doc["paths"][path][method]["responses"][str(status)]["content"]["application/json"]["schema"]
    return Draft202012Validator({**schema, "components": doc["components"]})


async def test_every_alerts_answer_is_the_documented_shape(env, redis):
    """Each success answer validated against docs/api/openapi.json, with every optional part a
    rule may carry present, and a delivery log entry the evaluator wrote."""
    api, key = env["api"], env["key"]
    hook = env["hook"]
    _validator(201, "post", "/v1/alerts/destinations").validate(hook)
    assert "secret" in hook
    rule_body = {
        "name": "ram",
        "bot": BOT,
        "kind": "threshold",
        "metric": "ramUsage",
        "ofMetric": "ramTotal",
        "op": "above",
        "value": 90,
        "minutes": 10,
        "muted": True,
        "mutedUntil": 1_900_000_000_000,
        "quietHours": {"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"},
        "minIntervalMinutes": 30,
        "destinations": [hook["id"]],
    }
    resp = await api.post("/v1/alerts/rules", json=rule_body, headers=_h(key))
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    _validator(201, "post", "/v1/alerts/rules").validate(created)
    assert {k: created[k] for k in rule_body} == rule_body
    rid = created["id"]
    entry = DeliveryEntry(
        at=1, destination=hook["id"], destination_type="webhook", incident="inc_1", event="opened",
        attempt=1, outcome="delivered", status=200, latency_ms=12, error=None,
    )  # fmt: skip
    await redis.lpush(log_key(rid), msgspec.json.encode(entry))
    for method, path, status, doc_path, body in (
        ("GET", f"/v1/alerts/rules/{rid}", 200, "/v1/alerts/rules/{id}", None),
        ("PATCH", f"/v1/alerts/rules/{rid}", 200, "/v1/alerts/rules/{id}", {"quietHours": None}),
        ("GET", "/v1/alerts/rules", 200, "/v1/alerts/rules", None),
        ("GET", f"/v1/alerts/rules/{rid}/deliveries", 200, "/v1/alerts/rules/{id}/deliveries", None),
        ("GET", "/v1/alerts/destinations", 200, "/v1/alerts/destinations", None),
    ):
        resp = await api.request(method, path, json=body, headers=_h(key))
        assert resp.status == status, (method, path, await resp.text())
        answer = await resp.json()
        _validator(status, method.lower(), doc_path).validate(answer)
    assert answer["destinations"][0].keys() == {"id", "name", "type", "url", "createdAt"}
    log = await (await api.get(f"/v1/alerts/rules/{rid}/deliveries", headers=_h(key))).json()
    assert log["deliveries"] == [msgspec.to_builtins(entry)]


async def test_a_bad_bot_filter_is_400_naming_it(env):
    resp = await env["api"].get("/v1/alerts/rules", params={"bot": "no such id!"}, headers=_h(env["key"]))
    assert resp.status == 400 and (await resp.json())["field"] == "bot"


async def test_alert_changes_count_against_the_accounts_registry_writes(make_settings, store, redis):
    """Each rule or destination write is a ClickHouse row: like bot and key changes, they are
    bounded by BOTPULSE_REGISTRY_WRITES_PER_MIN (429 with Retry-After beyond it); reads are not."""
    api = await api_client(alert_settings(make_settings, registry_writes_per_min=3), store)
    try:
        acc, key = await account(api, "busy")
        await bot(store, redis, acc, BOT)
        hook = await destination(api, key, "webhook", "http://127.0.0.1:9/hook")  # write 1
        body = {"name": "down", "bot": BOT, "kind": "offline", "destinations": [hook["id"]]}
        rid = (await (await api.post("/v1/alerts/rules", json=body, headers=_h(key))).json())["id"]  # 2
        resp = await api.patch(f"/v1/alerts/rules/{rid}", json={"muted": True}, headers=_h(key))  # 3
        assert resp.status == 200
        resp = await api.patch(f"/v1/alerts/rules/{rid}", json={"muted": False}, headers=_h(key))
        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
        resp = await api.get(f"/v1/alerts/rules/{rid}", headers=_h(key))
        assert resp.status == 200 and (await resp.json())["muted"] is True  # the refused change did not land
    finally:
        await api.close()
