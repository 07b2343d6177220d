"""What a msgspec validation error says to the client: the message and the field at fault,
for every request body (the gateway's posts and the account API's bodies alike). The wording
comes from the struct where msgspec's own is a regex or a bare type: a pattern's description,
an enum's choices, the fields an object takes."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import msgspec.inspect as mi

# msgspec's errors: "<problem> - at `$.<path>`", the suffix absent for the body itself.
_AT = re.compile(r"^(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def explain(
    exc: msgspec.ValidationError, struct: Any, rename: dict[str, str] | None = None
) -> tuple[str, str | None]:
    """The message and the field at fault for a body that did not fit `struct`. `rename` maps a
    field's struct name to the name the client sent it under (an alias), for the message."""
    text = str(exc)
    match = _AT.match(text)
    problem, path = (match["problem"], (match["path"] or "").removeprefix(".")) if match else (text, "")
    named = re.search(r"`([^`]*)`", problem)
    if problem.startswith("Object missing required field") and named:
        field = f"{path}.{named[1]}" if path else named[1]
        return f"`{_shown(field, rename)}` is required", _shown(field, rename)
    if problem.startswith("Object contains unknown field") and named:
        field = f"{path}.{named[1]}" if path else named[1]
        known = ", ".join(f.encode_name for f in _struct_at(struct, path))
        return f"Unknown field `{named[1]}`; expected one of: {known}", _shown(field, rename)
    if not path:
        return "Request body must be a JSON object", None
    shown = _shown(path, rename)
    expected = _description(struct, path) if "matching regex" in problem else None
    if expected:  # the pattern's own words rather than the regex
        return f"Invalid `{shown}`: expected {expected[0].lower()}{expected[1:].rstrip('.')}", shown
    choices = _choices(struct, path) if problem.startswith("Invalid enum value") else ()
    if choices:
        return f"Invalid `{shown}`: expected one of {', '.join(map(str, choices))}", shown
    return f"Invalid `{shown}`: {problem[0].lower()}{problem[1:]}", shown


def _shown(path: str, rename: dict[str, str] | None) -> str:
    head = re.split(r"[.\[]", path, maxsplit=1)[0]
    if rename and head in rename:
        return rename[head] + path[len(head) :]
    return path


def _members(t: mi.Type) -> list[mi.Type]:
    """`t` and, through Annotated metadata and unions, the types it is made of."""
    found = [t]
    if isinstance(t, mi.Metadata):
        found += _members(t.type)
    elif isinstance(t, mi.UnionType):
        for member in t.types:
            found += _members(member)
    return found


def _type_at(struct: type, path: str) -> mi.Type | None:
    """The declared type at an error's path (`quietHours.start`, `bots[0]`), if it resolves."""
    t: mi.Type | None = mi.type_info(struct)
    for part in re.findall(r"[^.\[\]]+", path):
        step = None
        for member in _members(t) if t is not None else []:
            if isinstance(member, mi.StructType):
                step = next((f.type for f in member.fields if f.encode_name == part), None)
            elif isinstance(member, mi.ListType) and part.isdigit():
                step = member.item_type
            if step is not None:
                break
        t = step
    return t


def _struct_at(struct: type, path: str) -> tuple[mi.Field, ...]:
    t = _type_at(struct, path)
    found = [m for m in _members(t) if isinstance(m, mi.StructType)] if t is not None else []
    return found[0].fields if found else ()


def _description(struct: type, path: str) -> str | None:
    t = _type_at(struct, path)
    for member in _members(t) if t is not None else []:
        if isinstance(member, mi.Metadata) and (member.extra_json_schema or {}).get("description"):
            return str(member.extra_json_schema["description"])  # type: ignore[index]
    return None


def _choices(struct: type, path: str) -> tuple[Any, ...]:
    t = _type_at(struct, path)
    for member in _members(t) if t is not None else []:
        if isinstance(member, mi.LiteralType):
            return member.values
    return ()
