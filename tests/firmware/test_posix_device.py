"""The posix device (firmware/build/host/tml-device) runs TFLite Micro like the QEMU images: a
factory model installed at first boot, real inferences on the port's synthetic sensor whose
events equal what the host TFLM (the tflite-micro wheel) computes, its capabilities those of
the TFLM runner. The test-source runner is not in the binary (it is the unit tests' fake)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import serial

from device_sdk.protocol import link
from device_sdk.protocol.events import decode_batch
from device_sdk.protocol.status import decode_status
from tests.firmware.firmware_kit import FIRMWARE, Gateway, free_port, make, require
from tests.firmware.host_tflm import HostOutputs

pytestmark = pytest.mark.slow

DEVICE = FIRMWARE / "build" / "host" / "tml-device"
DEMO_MODEL = FIRMWARE / "build" / "demo_model.tflite"
FACTORY_PACKAGE = 7


@pytest.fixture(scope="module")
def device_binary() -> Path:
    """Build the posix device (TFLM's host build, the adapter) and the demo model."""
    require("make", "cc", "g++")
    built = make("build/host/tml-device", "build/demo_model.tflite", "-j2")
    assert built.returncode == 0, (built.stdout + built.stderr)[-3000:]
    return DEVICE


class PosixDevice:
    """One tml-device process with its UART on a loopback TCP port, and a gateway on it."""

    def __init__(self, binary: Path, flash: Path, *extra: str) -> None:
        tcp = free_port()
        self.log = flash.with_suffix(".log").open("ab")
        self.process = subprocess.Popen(
            [str(binary), "--flash", str(flash), "--listen", str(tcp), "--uid", "posix-1",
             "--profile", "host-posix", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.port = serial.serial_for_url(f"socket://127.0.0.1:{tcp}", timeout=0.02)
                break
            except serial.SerialException:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.05)
        self.gateway = Gateway(self.port)

    def close(self) -> None:
        self.port.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture
def boot(device_binary: Path, tmp_path: Path) -> Iterator[Callable[..., PosixDevice]]:
    """Return a function booting the device on one flash image (one process at a time)."""
    running: list[PosixDevice] = []

    def start(*extra: str) -> PosixDevice:
        for old in running:
            old.close()
        running.clear()
        running.append(PosixDevice(device_binary, tmp_path / "flash.bin", *extra))
        return running[-1]

    yield start
    for device in running:
        device.close()


def test_the_binary_links_the_tflm_runner_not_the_test_source(device_binary: Path) -> None:
    symbols = subprocess.run(["nm", "-C", str(device_binary)], capture_output=True, text=True,
                             check=True).stdout
    assert "tml_runner_tflm" in symbols and "tflite::MicroInterpreter::Invoke" in symbols
    assert "tml_runner_test_source" not in symbols


def test_posix_device_runs_its_factory_model_in_tflm(boot: Callable[..., PosixDevice]) -> None:
    """First boot installs the factory model; the status names its package and the TFLM
    runner's capabilities; the events are the host TFLM's outputs on the same sensor, in
    order; a reboot keeps the model (the flash image holds it) without --factory."""
    device = boot("--factory", str(DEMO_MODEL), "--factory-package", str(FACTORY_PACKAGE))
    gw = device.gateway
    hello = link.decode_hello(gw.wait_for(link.Kind.HELLO).payload)
    assert hello.uid == "posix-1"
    status = decode_status(gw.wait_for(link.Kind.STATUS).payload)
    caps = status.capabilities
    assert status.model == FACTORY_PACKAGE and status.slot == 0
    assert caps is not None and caps.pointer_bits == 64
    assert caps.tflm_version.startswith("tflite-micro@"), caps  # the test source says otherwise
    assert "CONV_2D" in caps.ops and caps.slot_bytes == 64 * 1024
    gw.send(link.Kind.TIME, link.encode_time(int(time.time() * 1000)))
    batch = decode_batch(gw.wait_for(link.Kind.EVENTS, timeout=30).payload)
    assert batch.model == FACTORY_PACKAGE and len(batch.events) >= 3
    pairs = [(e.label, e.score) for e in batch.events]
    host = HostOutputs(DEMO_MODEL.read_bytes())
    start = host.find_run(pairs)
    assert start < 60, start  # inferences counted from this boot
    assert len(set(pairs)) > 1  # real outputs of a changing input, not a constant

    again = boot()  # no --factory: the model is in the flash image
    status = decode_status(again.gateway.wait_for(link.Kind.STATUS).payload)
    assert status.model == FACTORY_PACKAGE and status.slot == 0


def test_a_factory_model_that_does_not_fit_a_slot_is_refused(device_binary: Path,
                                                              tmp_path: Path) -> None:
    """A model larger than a slot (64 KB here) stops the boot with a message and exit 2."""
    big = tmp_path / "big.tflite"
    big.write_bytes(DEMO_MODEL.read_bytes() * 16)
    done = subprocess.run([str(device_binary), "--flash", str(tmp_path / "flash.bin"),
                           "--factory", str(big)], capture_output=True, text=True, timeout=10,
                          stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 2 and "cannot install factory model" in done.stderr
