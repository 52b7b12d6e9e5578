"""Fixtures of the gateway tests: the gateway program as a subprocess."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``python -m device_sdk.gateway`` subprocesses; stop them at teardown."""
    made: list[subprocess.Popen[str]] = []
    logs: list[IO[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        logs.append((tmp_path / f"gateway-{len(made)}.log").open("w"))
        made.append(subprocess.Popen(
            [sys.executable, "-m", "device_sdk.gateway", *args], cwd=ROOT, text=True,
            stdout=logs[-1], stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        return made[-1]

    yield start
    for process in made:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    for log in logs:
        log.close()
