"""The device SDK's import layers: it never imports the server, and production code never
imports the simulator (the simulator's fault injection stays in device_sdk/simulator/)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SDK = Path(__file__).resolve().parents[2] / "device_sdk"


def _imports(path: Path) -> set[str]:
    """Return every module ``path`` imports (absolute names; relative ones are not used)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


SOURCES = sorted(SDK.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SDK)))
def test_device_sdk_never_imports_the_server_or_the_test_kit(path: Path) -> None:
    """device_sdk stands alone: the server (fleet, ota) and testkit import it, not the reverse."""
    bad = {m for m in _imports(path) if m.split(".")[0] in {"fleet", "ota", "testkit", "tests"}}
    assert not bad, f"{path.relative_to(SDK)} imports {sorted(bad)}"


@pytest.mark.parametrize(
    "path",
    [p for p in SOURCES if p.relative_to(SDK).parts[0] not in {"simulator", "__main__.py"}],
    ids=lambda p: str(p.relative_to(SDK)),
)
def test_production_modules_never_import_the_simulator(path: Path) -> None:
    """Only the simulator package and the ``simulate`` command know the simulator."""
    bad = {m for m in _imports(path) if m.startswith("device_sdk.simulator")}
    assert not bad, f"{path.relative_to(SDK)} imports {sorted(bad)}"
