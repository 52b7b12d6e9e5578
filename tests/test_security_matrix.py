"""SECURITY.md's attack matrix names the tests that pin each row: every one must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAMED = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def test_every_test_the_attack_matrix_names_exists() -> None:
    text = (ROOT / "SECURITY.md").read_text()
    named = NAMED.findall(text)
    assert len(named) >= 20
    missing = [f"{path}::{name}" for path, name in named
               if not (ROOT / path).exists()
               or not re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.MULTILINE)]
    assert not missing, missing
    rows = [line for line in text.splitlines() if line.startswith("| **")]
    assert len(rows) >= 9 and all(NAMED.search(row) for row in rows)
