"""The README and the operator docs stay true to the code: the configuration table lists every
setting with its real default, the commands they show exist in the CLI (or say "(planned)"),
the variables they name are settings, their links lead somewhere, and CI runs the README's
test command."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import msgspec
import pytest

from botpulse.cli import build_parser
from botpulse.runtime.settings import Settings, env_name

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
OWN_DOCS = [
    README,
    ROOT / "docs" / "architecture.md",
    ROOT / "docs" / "operations.md",
    ROOT / "docs" / "api" / "README.md",
    ROOT / "docs" / "dashboard.md",
    ROOT / "deploy" / "CLUSTER.md",
    ROOT / "deploy" / "kubernetes" / "README.md",
]

SETTING_ENV = {env_name(f) for f in Settings.__struct_fields__}


def _default_text(value: object) -> str:
    return "unset" if value is None or value == "" else str(value)


def _config_rows() -> dict[str, list[str]]:
    """Rows of the README's configuration table, by the variable in their first cell."""
    text = README.read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        match = re.match(r"^\|\s*`([A-Z_]+)`\s*\|(.*)\|\s*$", line)
        if match:
            assert match.group(1) not in rows, f"{match.group(1)} listed twice"
            rows[match.group(1)] = [c.strip() for c in match.group(2).split("|")]
    return rows


def test_readme_table_lists_every_setting_with_its_default() -> None:
    rows = _config_rows()
    assert set(rows) == SETTING_ENV, {
        "missing from the README table": sorted(SETTING_ENV - set(rows)),
        "in the table but not settings": sorted(set(rows) - SETTING_ENV),
    }
    for field in msgspec.structs.fields(Settings):
        default, meaning = rows[env_name(field.name)][0], rows[env_name(field.name)][1]
        assert default.replace("`", "") == _default_text(field.default), env_name(field.name)
        assert len(meaning) > 10, f"{env_name(field.name)}: say what it means"


def test_readme_commands_exist_and_ci_runs_the_test_command() -> None:
    text = README.read_text()
    assert "make dev" in text and "make test" in text
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    assert {"dev", "test"} <= targets
    ci = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert "make test" in ci


# --- every doc I own ---------------------------------------------------------------------------


def _code_snippets(text: str) -> list[tuple[str, str]]:
    """(code, context) pairs: each line of a fenced block with itself as context, and each inline
    code span with its paragraph as context."""
    snippets: list[tuple[str, str]] = []
    prose: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            prose.append("")
            continue
        if fenced:
            snippets.append((line, line))
        else:
            prose.append(line)
    for paragraph in re.split(r"\n\s*\n", "\n".join(prose)):
        for span in re.findall(r"`([^`]+)`", paragraph):
            snippets.append((" ".join(span.split()), paragraph))
    return snippets


def _subcommand_error(words: list[str]) -> str | None:
    parser: argparse.ArgumentParser = build_parser()
    for word in words:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers:
            return None
        if word not in subparsers[0].choices:
            return word
        parser = subparsers[0].choices[word]
    return None


@pytest.mark.parametrize("path", OWN_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_commands_exist_or_are_marked_planned(path: Path) -> None:
    bad = []
    for code, context in _code_snippets(path.read_text()):
        for match in re.finditer(r"(?:^|[\s(])(?:[\w./-]*/)?botpulse((?: [a-z][\w-]*)+)", code):
            unknown = _subcommand_error(match.group(1).split())
            if unknown is not None and "(planned)" not in context:
                bad.append(f"`botpulse{match.group(1)}`: no subcommand {unknown!r}")
    assert not bad, bad


@pytest.mark.parametrize("path", OWN_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_variables_are_settings(path: Path) -> None:
    test_vars = set(re.findall(r"BOTPULSE_TEST_\w+", (ROOT / "tests" / "conftest.py").read_text()))
    named = set(re.findall(r"\b(BOTPULSE_[A-Z0-9_]*[A-Z0-9]|CLICKHOUSE_URL|REDIS_URL)\b", path.read_text()))
    assert not named - SETTING_ENV - test_vars, sorted(named - SETTING_ENV - test_vars)


def _anchors(path: Path) -> set[str]:
    slugs = set()
    for heading in re.findall(r"^#+ (.+)$", path.read_text(), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        slugs.add(slug)
    return slugs


@pytest.mark.parametrize("path", OWN_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_links_resolve(path: Path) -> None:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue  # an external URL
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists() or (
            anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved)
        ):
            broken.append(target)
    assert not broken, broken
