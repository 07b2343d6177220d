"""Operator commands: `botpulse accounts create|list|limits`, `botpulse bots add|set|remove|list`,
`botpulse keys regenerate|list|revoke`, `botpulse registry sync`.

Where a command runs (one rule, checked in this order):
1. `BOTPULSE_ADMIN_URL` is set: over that query service's admin API, with `BOTPULSE_ADMIN_TOKEN`.
2. A `botpulse dev` stack runs under `BOTPULSE_DATA_DIR`: over its admin API, with its token
   (the stack's process holds the embedded chDB engine, which allows one process only).
3. Otherwise directly: the command opens ClickHouse (`CLICKHOUSE_URL`, applying migrations) and
   Redis (`REDIS_URL`). Without `REDIS_URL` only ClickHouse is written; the index is rebuilt from
   it when the query service next starts (its generation no longer matches).
Both ways run the same operations (`registry.admin.OPERATIONS`), so they answer the same.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import msgspec

from botpulse.registry import admin
from botpulse.runtime.redact import redact
from botpulse.runtime.settings import Settings, load_settings
from botpulse.stack import read_stack

Request = tuple[str, dict[str, str], dict[str, Any]]
HTTP_TIMEOUT_S = 30.0


class Failure(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("message", f"HTTP {status}"))
        self.status = status
        self.body = body


# --- where commands run -------------------------------------------------------------------------
class HttpBackend:
    def __init__(self, base_url: str, token: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    def describe(self) -> str:
        return f"admin API at {self.base_url}"

    def call(self, name: str, params: dict[str, str], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if not self.token:
            raise Failure(0, {"message": "BOTPULSE_ADMIN_TOKEN is not set (needed for the admin API)"})
        op = admin.OPERATIONS[name]
        path_names = {n for n in params if "{" + n + "}" in op.path}
        path = op.path.format(**{n: urllib.parse.quote(params[n], safe="") for n in path_names})
        query = {k: v for k, v in params.items() if k not in path_names}
        url = self.base_url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = msgspec.json.encode(body) if op.method in ("POST", "PATCH") else None
        request = urllib.request.Request(url, data=data, method=op.method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                return response.status, msgspec.json.decode(response.read())
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                payload = {"message": raw.decode(errors="replace") or f"HTTP {exc.code}"}
            return exc.code, payload if isinstance(payload, dict) else {"message": str(payload)}
        except OSError as exc:
            raise Failure(0, {"message": redact(f"cannot reach {self.base_url}: {exc}")}) from None


class DirectBackend:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def describe(self) -> str:
        return f"ClickHouse at {redact(self.settings.clickhouse_url)}"

    def call(self, name: str, params: dict[str, str], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return asyncio.run(self._call(name, params, body))

    async def _call(
        self, name: str, params: dict[str, str], body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        from redis.exceptions import RedisError

        from botpulse.registry.model import RegistryError
        from botpulse.runtime.clickhouse import Store
        from botpulse.runtime.migrations import migrate
        from botpulse.runtime.redis import connect

        store = Store(self.settings, threads=1)
        redis = connect(self.settings) if self.settings.redis_url else None
        try:
            migrate(store)
            if redis is None and name != "accounts.list" and name != "bots.list":
                print(
                    "botpulse: REDIS_URL is not set: writing ClickHouse only; the registry index is "
                    "rebuilt from it when the query service starts",
                    file=sys.stderr,
                )
            try:
                # The same decoding as over HTTP: the body as JSON, into the operation's struct.
                return await admin.OPERATIONS[name].call(
                    admin.Context(self.settings, store, redis), params, msgspec.json.encode(body)
                )
            except RegistryError as exc:
                return exc.status, exc.body()
            except (RedisError, OSError) as exc:
                message = redact(f"Redis at {self.settings.redis_url} is unreachable: {exc}")
                raise Failure(0, {"message": message}) from None
        finally:
            if redis is not None:
                await redis.aclose()
            store.close()


Backend = HttpBackend | DirectBackend


def backend_for(settings: Settings) -> Backend:
    if settings.admin_url:
        return HttpBackend(settings.admin_url, settings.admin_token)
    stack = read_stack(settings)
    if stack is not None:
        return HttpBackend(stack.query_url, stack.admin_token)
    return DirectBackend(settings)


# --- commands -----------------------------------------------------------------------------------
def _bot_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if getattr(args, "account", None) is not None:
        body["account"] = args.account
    if args.username is not None:
        body["username"] = args.username
    if args.avatar is not None:
        body["avatar"] = args.avatar or None
    if args.private is not None:
        body["private"] = args.private
    if args.vote_webhook is not None:
        body["voteWebhookURL"] = args.vote_webhook or None
    if args.slots is not None:
        body["customSlots"] = args.slots
    return body


def _accounts_create(args: argparse.Namespace) -> Request:
    return "accounts.create", {}, {"name": args.name}


def _accounts_list(args: argparse.Namespace) -> Request:
    return "accounts.list", {}, {}


def _bots_add(args: argparse.Namespace) -> Request:
    return "bots.add", {}, {"id": args.bot_id} | _bot_body(args)


def _bots_set(args: argparse.Namespace) -> Request:
    return "bots.set", {"botId": args.bot_id}, _bot_body(args)


def _bots_remove(args: argparse.Namespace) -> Request:
    return "bots.remove", {"botId": args.bot_id}, {}


def _bots_list(args: argparse.Namespace) -> Request:
    return "bots.list", ({"account": args.account} if args.account else {}), {}


def _keys_regenerate(args: argparse.Namespace) -> Request:
    return "keys.regenerate", {"accountId": args.account}, {}


def _keys_list(args: argparse.Namespace) -> Request:
    return "keys.list", {"accountId": args.account}, {}


def _keys_revoke(args: argparse.Namespace) -> Request:
    return "keys.revoke", {"accountId": args.account, "keyId": args.key_id}, {}


_LIMIT_OPTIONS = {
    "bots": "bots",
    "keys": "keys",
    "event_types": "customEventTypes",
    "writes_per_min": "registryWritesPerMin",
    "posts_per_min": "postsPerMin",
}


def _limit_value(text: str) -> int | None:
    return None if text == "default" else int(text)


def _accounts_limits(args: argparse.Namespace) -> Request:
    changes = {api: getattr(args, opt) for opt, api in _LIMIT_OPTIONS.items() if hasattr(args, opt)}
    if not changes:
        return "limits.get", {"accountId": args.account}, {}
    return "limits.set", {"accountId": args.account}, changes


def _registry_sync(args: argparse.Namespace) -> Request:
    return "registry.sync", {}, {}


def _show_bot(b: dict[str, Any]) -> str:
    return (
        f"{b['id']}  {b['username']!r}  account={b['account']}  private={str(b['private']).lower()}  "
        f"avatar={b['avatar'] or '-'}  voteWebhookURL={b['voteWebhookURL'] or '-'}  "
        f"customSlots={b['customSlots']}"
    )


def _print(name: str, result: dict[str, Any]) -> None:
    if name == "accounts.create":
        print(f"account {result['id']} ({result['name']}) created")
        print(f"API key (shown once, store it now): {result['key']}")
    elif name == "accounts.list":
        for a in result["accounts"]:
            print(f"{a['id']}  {a['name']!r}  bots={a['bots']}  key={a['keyPrefix']}")
        if not result["accounts"]:
            print("no accounts")
    elif name in ("bots.add", "bots.set"):
        print(_show_bot(result))
    elif name == "bots.remove":
        print(f"bot {result['id']} removed")
    elif name == "bots.list":
        for b in result["bots"]:
            print(_show_bot(b))
        if not result["bots"]:
            print("no bots")
    elif name == "keys.regenerate":
        print(f"new API key for {result['account']} (the old key is refused from now on):")
        print(result["token"])
    elif name == "keys.list":
        for k in result["keys"]:
            bots = ",".join(k["bots"]) or "all"
            print(f"{k['id']}  {k['name']!r}  scope={k['scope']}  bots={bots}  key={k['keyPrefix']}")
    elif name == "keys.revoke":
        print(f"key {result['id']} revoked")
    elif name in ("limits.get", "limits.set"):
        limits = result["limits"]
        own = set(limits["overridden"])
        for field, value in limits.items():
            if field != "overridden":
                print(f"{field}={value}{' (account override)' if field in own else ''}")
    elif name == "registry.sync":
        print(f"registry index rebuilt from ClickHouse: {result['bots']} bots")


def _runner(build: Callable[[argparse.Namespace], Request]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from botpulse.runtime.logs import configure_logging

        settings = load_settings()
        configure_logging(settings)
        name, params, body = build(args)
        backend = backend_for(settings)
        try:
            status, result = backend.call(name, params, body)
        except Failure as exc:
            status, result = exc.status, exc.body
        if not 200 <= status < 300:
            field = f" (field: {result['field']})" if result.get("field") else ""
            message = redact(f"botpulse: {result.get('message', 'failed')}{field} [{backend.describe()}]")
            print(message, file=sys.stderr)
            return 1
        if args.json:
            print(msgspec.json.encode(result).decode())
        else:
            _print(name, result)
        return 0

    return run


def _common(p: argparse.ArgumentParser, build: Callable[[argparse.Namespace], Request]) -> None:
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(func=_runner(build))


def _bot_options(p: argparse.ArgumentParser, *, creating: bool) -> None:
    p.add_argument("--username", required=creating, help="the bot's display name")
    p.add_argument("--avatar", help="avatar URL (http/https); '' clears it")
    privacy = p.add_mutually_exclusive_group()
    privacy.add_argument(
        "--private", dest="private", action="store_const", const=True, help="hide from others"
    )
    privacy.add_argument(
        "--public", dest="private", action="store_const", const=False, help="show to everyone"
    )
    p.add_argument("--vote-webhook", help="voteWebhookURL (http/https); '' clears it")
    p.add_argument("--slots", type=int, help="custom-graph slots (default BOTPULSE_DEFAULT_CUSTOM_SLOTS)")


def register(sub: argparse._SubParsersAction) -> None:
    accounts = sub.add_parser("accounts", help="create and list accounts")
    asub = accounts.add_subparsers(dest="accounts_command", required=True, metavar="ACTION")
    p = asub.add_parser("create", help="create an account and print its API key (shown once)")
    p.add_argument("--name", required=True)
    _common(p, _accounts_create)
    _common(asub.add_parser("list", help="list accounts with their number of bots"), _accounts_list)
    p = asub.add_parser("limits", help="show an account's limits, or override them ('default' resets)")
    p.add_argument("account", metavar="ACCOUNT")
    for option in _LIMIT_OPTIONS:
        p.add_argument(
            "--" + option.replace("_", "-"), type=_limit_value, default=argparse.SUPPRESS, metavar="N"
        )
    _common(p, _accounts_limits)

    bots = sub.add_parser("bots", help="add, change, remove and list bots")
    bsub = bots.add_subparsers(dest="bots_command", required=True, metavar="ACTION")
    p = bsub.add_parser("add", help="register a bot for an account")
    p.add_argument("bot_id", metavar="ID")
    p.add_argument("--account", required=True, help="owner account id")
    _bot_options(p, creating=True)
    _common(p, _bots_add)
    p = bsub.add_parser("set", help="change a bot")
    p.add_argument("bot_id", metavar="ID")
    p.add_argument("--account", help="move the bot to this account")
    _bot_options(p, creating=False)
    _common(p, _bots_set)
    p = bsub.add_parser("remove", help="remove a bot (its key no longer posts for it)")
    p.add_argument("bot_id", metavar="ID")
    _common(p, _bots_remove)
    p = bsub.add_parser("list", help="list bots")
    p.add_argument("--account", help="only this account's bots")
    _common(p, _bots_list)

    keys = sub.add_parser("keys", help="API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = ksub.add_parser("regenerate", help="replace an account's API key (prints the new one)")
    p.add_argument("account", metavar="ACCOUNT")
    _common(p, _keys_regenerate)
    p = ksub.add_parser("list", help="an account's keys (prefixes only, never a key)")
    p.add_argument("account", metavar="ACCOUNT")
    _common(p, _keys_list)
    p = ksub.add_parser("revoke", help="revoke one key of an account; the others keep working")
    p.add_argument("account", metavar="ACCOUNT")
    p.add_argument("key_id", metavar="KEY_ID")
    _common(p, _keys_revoke)

    registry = sub.add_parser("registry", help="the registry index in Redis")
    rsub = registry.add_subparsers(dest="registry_command", required=True, metavar="ACTION")
    _common(rsub.add_parser("sync", help="rebuild the Redis index from ClickHouse"), _registry_sync)
