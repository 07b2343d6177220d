"""Account API for alerts (docs/alerts.md): destinations (Discord or signed webhooks) and rules
per bot, with each rule's current state and delivery log. Authenticated like the rest of the
account API (`accounts_api.caller`): reading takes a read or manage key, every change a manage
key (and counts against the account's registry writes per minute, as bot and key changes do;
a destination the SSRF rules refuse counts too);
an ingest key is refused everywhere. An account sees only its own rules and destinations (another
account's are 404, like unknown ones), and a rule can only watch a bot the account manages.
Bodies decode into the structs of `schemas/account.py` and answers are the structs of
`query/shapes.py`: the OpenAPI document is generated from both. Each change is one function
(`add_destination`, `add_rule`, …) that the dashboard's Alerts page calls too."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from botpulse.query import shapes
from botpulse.query.accounts_api import caller, charge, guarded
from botpulse.query.resources import REDIS, SETTINGS, STORE
from botpulse.query.responses import json_response
from botpulse.registry import alerts as rules_db
from botpulse.registry import catalog, model
from botpulse.runtime.egress import Refused, Unresolved, check_destination
from botpulse.schemas.account import DestinationCreate, RuleChanges, RuleCreate
from botpulse.schemas.alerts import DELIVERY_LOG_MAX, Rule, state_key
from botpulse.schemas.registry import BOT_ID, READ


def _answer(status: int, shape: type[Any], view: dict[str, Any]) -> web.Response:
    """`view` as the documented `shape` (a field the document does not list fails here, in
    the tests, rather than in a client)."""
    return json_response(msgspec.convert(view, shape), status=status)


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "")
    if raw == "":
        return 50
    if not raw.isdigit() or not 1 <= int(raw) <= DELIVERY_LOG_MAX:
        raise model.Invalid(f"limit must be an integer from 1 to {DELIVERY_LOG_MAX}", "limit")
    return int(raw)


# --- destinations -------------------------------------------------------------------------------
# Each change is one function the API's handler and the dashboard's form both call (the body
# decoded by the caller into the struct of `schemas/account.py`), so the two cannot disagree.
async def add_destination(request: web.Request, account: str, body: DestinationCreate) -> dict[str, Any]:
    """The new destination's view, with its signing `secret` for a webhook (shown that once)."""
    app = request.app
    destination = rules_db.destination_from_body(
        body, account=account, discord_hosts=rules_db.extra_discord_hosts(app[SETTINGS])
    )
    if (
        len(await rules_db.list_destinations(app[STORE], account=account))
        >= rules_db.MAX_DESTINATIONS_PER_ACCOUNT
    ):
        raise model.Conflict(f"An account has at most {rules_db.MAX_DESTINATIONS_PER_ACCOUNT} destinations")
    # Charged before the check: each check is a DNS lookup from inside the operator's network,
    # and refused ones must not come for free.
    await charge(request, account)
    try:
        await check_destination(destination.url, app[SETTINGS])
    except (Refused, Unresolved) as exc:
        raise model.Invalid(f"url: {exc}", "url") from None
    secret = rules_db.new_secret() if destination.type == "webhook" else ""
    await rules_db.save_destination(app[STORE], app[REDIS], destination, secret)
    view = rules_db.destination_view(destination)
    if secret:
        view["secret"] = secret  # shown this once
    return view


async def remove_destination(request: web.Request, account: str, destination_id: str) -> None:
    """404 for another account's (or an unknown) destination, 409 while a rule uses it."""
    store = request.app[STORE]
    destination, secret = await rules_db.get_destination(store, destination_id, account)
    users = [
        r.id for r in await rules_db.list_rules(store, account=account) if destination.id in r.destinations
    ]
    if users:
        raise model.Conflict(f"Destination is used by rules {', '.join(users)}; change or delete them first")
    await charge(request, account)
    await rules_db.save_destination(store, request.app[REDIS], destination, secret, deleted=True)


@guarded
async def create_destination(request: web.Request) -> web.Response:
    account = await caller(request)
    body = model.decode(await request.read(), DestinationCreate)
    return _answer(201, shapes.CreatedDestination, await add_destination(request, account, body))


@guarded
async def list_destinations(request: web.Request) -> web.Response:
    account = await caller(request, READ)
    found = await rules_db.list_destinations(request.app[STORE], account=account)
    return _answer(
        200, shapes.DestinationList, {"destinations": [rules_db.destination_view(d) for d, _ in found]}
    )


@guarded
async def delete_destination(request: web.Request) -> web.Response:
    account = await caller(request)
    await remove_destination(request, account, request.match_info["id"])
    return web.Response(status=204)


# --- rules --------------------------------------------------------------------------------------
def _rule(rule: Rule, state: dict[str, Any]) -> web.Response:
    return _answer(200, shapes.RuleWithState, rules_db.rule_view(rule) | {"state": state})


async def rule_state(request: web.Request, rule_id: str) -> dict[str, Any]:
    """The rule's current state as the API shows it (the evaluator's entry in Redis)."""
    raw = await request.app[REDIS].hgetall(state_key(rule_id))
    state = {k.decode(): v.decode() for k, v in raw.items()}
    firing = state.get("status") == "firing"
    return {
        "status": "firing" if firing else "ok",
        "incident": state.get("incident") if firing else None,
        "since": int(state["since"]) if firing and state.get("since") else None,
        "detail": state.get("detail"),
    }


async def _checked(request: web.Request, rule: Rule, account: str) -> None:
    store = request.app[STORE]
    try:
        await catalog.managed_bot(store, rule.bot, account)
    except (model.NotFound, model.NotManageable):
        # One answer for both: which bot ids exist (in other accounts) is not this account's to learn.
        raise model.Invalid("bot must be a bot this account manages", "bot") from None
    await rules_db.check_destinations_owned(store, account, rule.destinations)


async def add_rule(request: web.Request, account: str, body: RuleCreate) -> Rule:
    app = request.app
    rule = rules_db.rule_from_body(body, account=account, heartbeat_window_s=app[SETTINGS].heartbeat_window_s)
    await _checked(request, rule, account)
    if len(await rules_db.list_rules(app[STORE], account=account)) >= rules_db.MAX_RULES_PER_ACCOUNT:
        raise model.Conflict(f"An account has at most {rules_db.MAX_RULES_PER_ACCOUNT} rules")
    await charge(request, account)
    await rules_db.save_rule(app[STORE], app[REDIS], rule)
    return rule


async def change_rule(request: web.Request, account: str, current: Rule, body: RuleChanges) -> Rule:
    """`current` (the account's, from `rules_db.get_rule`) with the changes of `body`."""
    app = request.app
    rule = rules_db.rule_from_body(
        body, account=account, heartbeat_window_s=app[SETTINGS].heartbeat_window_s, current=current
    )
    await _checked(request, rule, account)
    await charge(request, account)
    await rules_db.save_rule(app[STORE], app[REDIS], rule)
    return rule


async def remove_rule(request: web.Request, account: str, rule_id: str) -> None:
    """404 for another account's (or an unknown) rule."""
    app = request.app
    rule = await rules_db.get_rule(app[STORE], rule_id, account)
    await charge(request, account)
    await rules_db.save_rule(app[STORE], app[REDIS], rule, deleted=True)
    await app[REDIS].delete(state_key(rule.id))


@guarded
async def create_rule(request: web.Request) -> web.Response:
    account = await caller(request)
    rule = await add_rule(request, account, model.decode(await request.read(), RuleCreate))
    view = rules_db.rule_view(rule) | {"state": await rule_state(request, rule.id)}
    return _answer(201, shapes.RuleWithState, view)


@guarded
async def list_rules(request: web.Request) -> web.Response:
    account = await caller(request, READ)
    bot = request.query.get("bot") or None
    if bot is not None and not BOT_ID.match(bot):
        raise model.Invalid("bot must be a bot id (1-64 characters of A-Z a-z 0-9 _ . : -)", "bot")
    rules = await rules_db.list_rules(request.app[STORE], account=account, bot=bot)
    return _answer(200, shapes.RuleList, {"rules": [rules_db.rule_view(r) for r in rules]})


@guarded
async def get_rule(request: web.Request) -> web.Response:
    account = await caller(request, READ)
    rule = await rules_db.get_rule(request.app[STORE], request.match_info["id"], account)
    return _rule(rule, await rule_state(request, rule.id))


@guarded
async def patch_rule(request: web.Request) -> web.Response:
    account = await caller(request)
    # The rule is looked up before the body is read: another account's rule is 404 whatever is sent.
    current = await rules_db.get_rule(request.app[STORE], request.match_info["id"], account)
    body = model.decode(await request.read(), RuleChanges)
    rule = await change_rule(request, account, current, body)
    return _rule(rule, await rule_state(request, rule.id))


@guarded
async def delete_rule(request: web.Request) -> web.Response:
    account = await caller(request)
    await remove_rule(request, account, request.match_info["id"])
    return web.Response(status=204)


@guarded
async def rule_deliveries(request: web.Request) -> web.Response:
    account = await caller(request, READ)
    rule = await rules_db.get_rule(request.app[STORE], request.match_info["id"], account)
    entries = await rules_db.delivery_log(request.app[REDIS], rule.id, _limit(request))
    return json_response(shapes.DeliveryLog(rule.id, entries))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/alerts/destinations", create_destination)
    app.router.add_get("/v1/alerts/destinations", list_destinations)
    app.router.add_delete("/v1/alerts/destinations/{id}", delete_destination)
    app.router.add_post("/v1/alerts/rules", create_rule)
    app.router.add_get("/v1/alerts/rules", list_rules)
    app.router.add_get("/v1/alerts/rules/{id}", get_rule)
    app.router.add_patch("/v1/alerts/rules/{id}", patch_rule)
    app.router.add_delete("/v1/alerts/rules/{id}", delete_rule)
    app.router.add_get("/v1/alerts/rules/{id}/deliveries", rule_deliveries)
