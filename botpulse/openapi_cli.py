"""`botpulse openapi`: the combined OpenAPI 3.1 document of the gateway and the query service
(`docs/api/openapi.json`) and its readable page (`docs/api/reference.md`), both generated from the
services' route specs (`ingest/spec.py`, `query/spec.py`). `--check` fails when a committed file
differs from what the code generates (tests/test_openapi.py runs the same check)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from botpulse.ingest.spec import SPECS as GATEWAY
from botpulse.query.spec import SPECS as QUERY
from botpulse.runtime.openapi import api_version, document
from botpulse.runtime.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = Path("docs/api/openapi.json")
PAGE = Path("docs/api/reference.md")
REGENERATE = "botpulse openapi"  # what the staleness test tells to run


def combined() -> dict[str, Any]:
    """Both services in one document; each operation names its service in `servers`. The health
    routes exist on both, so they are described once, with both servers."""
    defaults = Settings()
    gateway = {"url": f"http://127.0.0.1:{defaults.gateway_port}", "description": "gateway"}
    query = {"url": f"http://127.0.0.1:{defaults.query_port}", "description": "query service"}
    shared = {(r.method, r.path) for r in GATEWAY.routes} & {(r.method, r.path) for r in QUERY.routes}
    routes = [r for r in GATEWAY.routes if (r.method, r.path) not in shared] + QUERY.routes
    doc = document(
        "botpulse API",
        "Every public route of the botpulse gateway (posting) and query service (reading, Datagram, "
        "DBots, Statcord, accounts and keys, and the operator's admin API, marked `x-admin`). "
        "Generated from the msgspec structs the services use (`botpulse openapi`); each service "
        "also serves its own part at `/openapi.json`.",
        api_version(),
        routes,
    )
    gateway_ops = {(r.method.lower(), r.path) for r in GATEWAY.routes}
    query_ops = {(r.method.lower(), r.path) for r in QUERY.routes}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            servers = []
            if (method, path) in gateway_ops:
                servers.append(gateway)
            if (method, path) in query_ops:
                servers.append(query)
            op["servers"] = servers
    doc["servers"] = [gateway, query]
    return doc


def render_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _schema_text(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return f"`{schema['$ref'].rsplit('/', 1)[-1]}`"
    if "anyOf" in schema:
        return " or ".join(_schema_text(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    kind = schema.get("type", "any")
    bounds = [f"{k} {schema[k]}" for k in ("minimum", "maximum", "minLength", "maxLength") if k in schema]
    if kind == "array":
        kind = f"array of {_schema_text(schema.get('items', {}))}"
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def render_page(doc: dict[str, Any]) -> str:
    """The document as markdown: every operation, its parameters, body and answers."""
    schemes = doc["components"]["securitySchemes"].items()
    lines = [
        "# API reference",
        "",
        f"Generated from [openapi.json](openapi.json) (OpenAPI {doc['openapi']}) by `{REGENERATE}`;",
        "do not edit. Guides: [ingest.md](ingest.md), [query.md](query.md), [accounts.md](accounts.md).",
        "",
        "Authentication: " + "; ".join(f"`{name}` ({scheme['description']})" for name, scheme in schemes),
        "",
    ]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            service = ", ".join(s["description"] for s in op.get("servers", []))
            admin = " — operator only" if op.get("x-admin") else ""
            lines += [f"## `{method.upper()} {path}`", "", f"{op['summary']} ({service}){admin}.", ""]
            if op.get("description"):
                lines += [op["description"], ""]
            if op["security"]:
                lines += ["Auth: " + ", ".join(f"`{next(iter(s))}`" for s in op["security"]) + ".", ""]
            if op.get("parameters"):
                lines += ["| parameter | in | type | |", "| --- | --- | --- | --- |"]
                for p in op["parameters"]:
                    required = "required" if p.get("required") else ""
                    lines.append(f"| `{p['name']}` | {p['in']} | {_schema_text(p['schema'])} | {required} |")
                lines.append("")
            if "requestBody" in op:
                schema = op["requestBody"]["content"]["application/json"]["schema"]
                lines += [f"Body: {_schema_text(schema)}.", ""]
            lines += ["| status | answer | |", "| --- | --- | --- |"]
            for status, reply in op["responses"].items():
                content = reply.get("content", {})
                body = ", ".join(_answer_text(kind, c["schema"]) for kind, c in content.items()) or "no body"
                lines.append(f"| {status} | {body} | {reply['description']} |")
            lines.append("")
    lines += ["## Schemas", ""]
    for name, schema in doc["components"]["schemas"].items():
        lines += [f"### `{name}`", ""]
        if schema.get("description"):
            lines += [schema["description"], ""]
        props = schema.get("properties", {})
        if props:
            required = set(schema.get("required", []))
            lines += ["| field | type | |", "| --- | --- | --- |"]
            for field, sub in props.items():
                lines.append(
                    f"| `{field}` | {_schema_text(sub)} | {'required' if field in required else ''} |"
                )
            lines.append("")
    return "\n".join(lines).replace("|  |", "| |")


def outputs() -> dict[Path, str]:
    doc = combined()
    return {DOCUMENT: render_json(doc), PAGE: render_page(doc)}


def _answer_text(media: str, schema: dict[str, Any]) -> str:
    """An answer's body; its media type named when it is not JSON (a CSV file, JSON lines)."""
    text = _schema_text(schema)
    return text if media == "application/json" else f"{text} (`{media}`)"


def stale(root: Path = ROOT) -> list[Path]:
    """The committed files that differ from what the code generates."""
    return [path for path, text in outputs().items() if not (root / path).is_file()
            or (root / path).read_text() != text]  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("openapi", help="write docs/api/openapi.json and docs/api/reference.md from the code")
    p.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this checkout)")
    p.add_argument("--check", action="store_true", help="only fail (exit 1) when a file is stale")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.check:
        bad = stale(args.root)
        for path in bad:
            print(f"botpulse: {path} is stale: run `{REGENERATE}`", file=sys.stderr)
        return 1 if bad else 0
    for path, text in outputs().items():
        (args.root / path).write_text(text)
        print(f"wrote {path}")
    return 0
