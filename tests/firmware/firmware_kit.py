"""What the firmware tests share: the toolchain check, make in firmware/, a free loopback port
and a minimal serial gateway that speaks the link framing.

In CI (``CI=true``) a missing tool fails the tests instead of skipping them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import serial

from device_sdk.protocol import link

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"


def require(*tools: str) -> None:
    """Skip when a tool is missing, except in CI, where that is a failure."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        message = f"missing {', '.join(missing)} (scripts/bootstrap.sh installs them)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def make(*targets: str) -> subprocess.CompletedProcess[str]:
    """Run make in firmware/ (targets may include VAR=value overrides); return the process."""
    return subprocess.run(["make", "-C", str(FIRMWARE), *targets], capture_output=True,
                          text=True, timeout=1800, check=False)  # first build: TFLM x 2


def make_variable(name: str) -> str:
    """Return the value a Makefile variable has when nothing overrides it."""
    result = make("-s", f"--eval=print-var: ; @echo $({name})", "print-var")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def free_port() -> int:
    """Return a TCP port that is free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gateway:
    """A minimal serial gateway for tests: link endpoint, frame log, chunk service."""

    def __init__(self, port: serial.SerialBase) -> None:
        self.port = port
        self.endpoint = link.Endpoint()
        self.frames: list[link.Frame] = []

    def send(self, kind: link.Kind, payload: bytes = b"") -> None:
        """Queue a message to the device."""
        self.port.write(self.endpoint.send(kind, payload, time.monotonic()))

    def pump(self) -> list[link.Frame]:
        """Move bytes both ways once; return frames delivered now."""
        data = self.port.read(1)  # returns at the first byte (or after the 20 ms timeout)
        if data and self.port.in_waiting:
            data += self.port.read(self.port.in_waiting)
        delivered, out = self.endpoint.receive(data, time.monotonic())
        out += self.endpoint.poll(time.monotonic())
        if out:
            self.port.write(out)
        self.frames += delivered
        return delivered

    def wait_for(self, kind: link.Kind, timeout: float = 10.0) -> link.Frame:
        """Pump until the device sends a frame of ``kind``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for frame in self.pump():
                if frame.kind == kind:
                    return frame
        raise AssertionError(f"no {kind.name} frame within {timeout} s; got "
                             f"{[link.Kind(f.kind).name for f in self.frames]}")
