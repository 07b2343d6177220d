"""The installed distribution is one namespace: `botpulse` is its only top-level import name,
while the repository keeps ingest/, workers/, query/, schemas/ at the top."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_has_one_top_level_name(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=300,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("botpulse-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"botpulse"}, sorted(top)
    # Every service package and the DDL files are in the wheel, under the one namespace.
    for package in ("ingest", "workers", "query", "schemas", "registry", "runtime", "bench"):
        assert f"botpulse/{package}/__init__.py" in names, package
    assert any(n.startswith("botpulse/schemas/ddl/") and n.endswith(".sql") for n in names)
    # The dashboard's templates and static files (package data) install with it: every one the
    # repository holds, so a new template or asset cannot be left out of the wheel.
    dashboard = ROOT / "query" / "dashboard"
    for folder in ("templates", "static"):
        files = [p for p in (dashboard / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        assert files, folder
        for path in files:
            assert f"botpulse/query/dashboard/{path.relative_to(dashboard).as_posix()}" in names, path
