"""The committed test vectors are exactly what the Python codecs produce today.

The C firmware tests read ``tests/vectors``; if a codec changed and nobody re-ran
``python tests/vectors/generate.py``, the firmware would be tested against stale bytes.
"""

from __future__ import annotations

import filecmp
import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent


def generated_files(root: Path) -> set[Path]:
    """Return the generator's outputs below ``root`` (relative paths)."""
    skip = {"generate.py", "test_vectors_fresh.py", "__init__.py", "README.md"}
    return {p.relative_to(root) for p in root.rglob("*")
            if p.is_file() and p.name not in skip and "__pycache__" not in p.parts}


def test_committed_vectors_match_a_fresh_generation(tmp_path: Path) -> None:
    """Regenerating into a temporary folder gives byte-identical files, none missing or extra."""
    spec = importlib.util.spec_from_file_location("tml_vectors_generate", HERE / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    generate.generate(tmp_path)
    fresh, committed = generated_files(tmp_path), generated_files(HERE)
    assert fresh == committed, {"missing": sorted(map(str, fresh - committed)),
                                "extra": sorted(map(str, committed - fresh))}
    stale = [str(p) for p in sorted(fresh)
             if not filecmp.cmp(tmp_path / p, HERE / p, shallow=False)]
    assert not stale, f"stale vectors, run tests/vectors/generate.py: {stale}"
