"""The C firmware: its host test suite passes, its Cortex-M3 image fits the size goal and names
the server's stock profile, and it boots in QEMU and talks the link framing over the emulated
UART (status, capabilities, a whole OTA update, within its reserved stack). The default images
run TFLite Micro on a factory model (real inferences in their events); the image for the OTA
test vectors, whose models are synthetic, is built with the test-source runner.

In CI (``CI=true``) a missing toolchain fails these tests instead of skipping them.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from device_sdk.protocol import cose, link
from device_sdk.protocol.events import decode_batch
from device_sdk.protocol.manifest import Manifest
from device_sdk.protocol.ota_messages import (
    Chunk,
    DeploymentState,
    decode_chunk_request,
    decode_report,
    encode_chunk,
)
from device_sdk.protocol.status import decode_status
from fleet.devices.stock_profiles import STOCK_PROFILES
from tests.firmware.firmware_kit import (
    FIRMWARE,
    ROOT,
    Gateway,
    free_port,
    make,
    make_variable,
    require,
)

ELF = FIRMWARE / "build" / "qemu" / "fw.elf"
VECTORS = ROOT / "tests" / "vectors"

pytestmark = pytest.mark.slow


def elf_symbols(elf: Path) -> dict[str, int]:
    """Return symbol -> address of an ELF (arm-none-eabi-nm)."""
    out = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True,
                         check=True).stdout
    return {f[2]: int(f[0], 16) for f in (line.split() for line in out.splitlines())
            if len(f) == 3}


def test_make_test_runs_the_host_suite_and_builds_the_cortex_m_image() -> None:
    """`make -C firmware test` passes every host test and leaves a Cortex-M3 ELF.

    It also runs the posix port with TFLM (make test-tflm): real int8 models through the update
    chain and a power cut at every flash write and erase, each boot running its model in TFLM.
    """
    require("make", "cc", "arm-none-eabi-gcc")
    result = make("test")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    closing = re.findall(r"^(\d+) passed, (\d+) failed$", result.stdout, re.MULTILINE)
    assert closing, output[-2000:]
    assert len(closing) == 2, closing  # the host suite, then the posix port with TFLM
    for passed, failed in (tuple(map(int, c)) for c in closing):
        assert failed == 0 and passed > 400, closing
    assert "power cuts simulated:" in result.stdout
    cuts = re.search(r"^power cuts simulated with TFLM: (\d+)", result.stdout, re.MULTILINE)
    assert cuts and int(cuts.group(1)) >= 150, output[-2000:]
    assert ELF.exists()
    header = ELF.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and header[18] == 40  # e_machine EM_ARM


def test_default_image_names_the_servers_stock_profile() -> None:
    """Built without overrides, the image checks manifests against the stock QEMU profile."""
    require("make", "arm-none-eabi-gcc")
    profile = make_variable("HARDWARE_PROFILE")
    assert profile in {p["name"] for p in STOCK_PROFILES}
    assert "mps2-an385" in profile
    result = make("qemu")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert b"\0" + profile.encode() + b"\0" in ELF.read_bytes()


def test_make_size_splits_the_image_and_meets_the_size_goal() -> None:
    """`make size` attributes every byte to a part, and the image fits issue 7's goal.

    Goal: the image without TFLM (core, Monocypher, port, C library; the model runner's parts,
    TFLM runtime, kernels, adapter, arena, the port's model hooks and the C library only TFLM
    pulls in, are left out) within 24 KB of flash, and within 6 KB of static RAM besides the
    OTA buffer, KB read as 1,000 bytes.
    """
    require("make", "arm-none-eabi-gcc")
    result = make("size")
    out = result.stdout
    assert result.returncode == 0, (out + result.stderr)[-3000:]
    assert "RAM, static" in out, out

    def rows(text: str) -> dict[str, int]:
        return {label: int(value.replace(",", "")) for label, value in
                re.findall(r"^  (\S.*?)\s{2,}([\d,]+)(?:\s|$)", text, re.MULTILINE)}

    flash, ram = (rows(text) for text in out.split("RAM, static"))

    def figure(table: dict[str, int], start: str) -> int:
        found = [value for label, value in table.items() if label.startswith(start)]
        assert len(found) == 1, f"{start!r}:\n{out}"
        return found[0]

    sections = {f[0]: int(f[1]) for f in (line.split() for line in subprocess.run(
        ["arm-none-eabi-size", "-A", str(ELF)], capture_output=True, text=True,
        check=True).stdout.splitlines()) if len(f) == 3 and f[0].startswith(".")}
    total = figure(flash, "total image")
    assert total == sections[".text"] + sections[".ARM.exidx"] + sections[".data"]
    goal_parts = ("core", "Monocypher", "port: mps2", "C library (the port")
    runner_parts = ("TFLM adapter", "TFLM runtime", "TFLM kernels", "C library pulled in by TFLM",
                    "port: model hooks")
    for part in goal_parts + runner_parts:
        assert figure(flash, part) > 0
    summary = ("total", "without", "model runner (", "factory model")
    assert sum(v for k, v in flash.items() if not k.startswith(summary)) == total
    runner = sum(figure(flash, part) for part in runner_parts)
    assert figure(flash, "model runner (") == runner
    assert figure(flash, "without the runner") == total - runner
    assert figure(flash, "without the runner") <= 24_000
    assert figure(flash, "factory model") == sections[".factory_model"] > 0
    assert figure(ram, "tensor arena") >= int(make_variable("ARM_ARENA"))
    assert figure(ram, "static RAM besides the OTA buffer") <= 6_000
    print(f"\n{out}")


def ota_records() -> list[dict[str, str]]:
    """Read tests/vectors/ota.vec."""
    records = []
    for block in (VECTORS / "ota.vec").read_text().split("\n\n"):
        lines = [line for line in block.splitlines() if line and not line.startswith("#")]
        if lines:
            records.append(dict(line.split(": ", 1) for line in lines))
    return records


@pytest.fixture(scope="module")
def vector_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the image for the hardware profile the ota.vec offers name (the test vectors'
    own profile, not the stock one), into a build directory of its own."""
    require("make", "arm-none-eabi-gcc", "qemu-system-arm")
    offer = cose.parse_sign1(bytes.fromhex(ota_records()[0]["cose"]))
    profile = Manifest.decode(offer.payload).hardware_profile
    build = tmp_path_factory.mktemp("fw") / "build"
    built = make("qemu", f"BUILD={build}", f"HARDWARE_PROFILE={profile}", "ARM_RUNNER=test_source",
                 "-j2")
    assert built.returncode == 0, (built.stdout + built.stderr)[-3000:]
    return build / "qemu" / "fw.elf"


@pytest.fixture
def qemu_gateway(tmp_path: Path, vector_image: Path) -> Iterator[Gateway]:
    """Boot the Cortex-M3 image in QEMU with UART0 on a TCP socket and connect a gateway."""
    tcp = free_port()
    log = (tmp_path / "qemu.log").open("w")
    qemu = subprocess.Popen(
        ["qemu-system-arm", "-M", "mps2-an385", "-nographic", "-monitor", "none",
         "-kernel", str(vector_image),
         "-serial", f"tcp:127.0.0.1:{tcp},server=on,wait=on,nodelay=on",
         "-semihosting-config", "enable=on,target=native"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    port = None
    try:
        deadline = time.monotonic() + 15
        while port is None:
            try:
                port = serial.serial_for_url(f"socket://127.0.0.1:{tcp}", timeout=0.02)
            except serial.SerialException:
                if time.monotonic() > deadline or qemu.poll() is not None:
                    raise
                time.sleep(0.05)
        yield Gateway(port)
    finally:
        if port is not None:
            port.close()
        qemu.terminate()
        try:
            qemu.wait(timeout=10)
        except subprocess.TimeoutExpired:
            qemu.kill()
        log.close()


def test_qemu_image_boots_and_reports_status_and_capabilities(qemu_gateway: Gateway) -> None:
    """The emulated MCU says HELLO and sends an online status with its capabilities."""
    hello = link.decode_hello(qemu_gateway.wait_for(link.Kind.HELLO).payload)
    assert hello.link == link.LINK_VERSION and hello.uid and hello.mtu >= 512
    status = decode_status(qemu_gateway.wait_for(link.Kind.STATUS).payload)
    caps = status.capabilities
    assert caps is not None and caps.pointer_bits == 32
    assert "FULLY_CONNECTED" in caps.ops and caps.slot_bytes == 128 * 1024
    assert status.model is None  # a new device runs nothing until its first update
    qemu_gateway.send(link.Kind.STATUS_REQUEST)
    again = decode_status(qemu_gateway.wait_for(link.Kind.STATUS).payload)
    assert again.capabilities == caps


def test_qemu_image_installs_an_update_over_the_uart(qemu_gateway: Gateway,
                                                    vector_image: Path) -> None:
    """Offer, chunks, decode (raw, compressed, delta) into flash, trial and confirm or revert,
    all over the emulated UART; the stack's high-water mark (signature checks, decoders
    included) stays well inside its reservation."""
    gw = qemu_gateway
    gw.wait_for(link.Kind.STATUS)
    gw.send(link.Kind.TIME, link.encode_time(int(time.time() * 1000)))
    running = 0
    for record in ota_records():  # raw, compressed, delta (against the compressed), failing trial
        transfer = (VECTORS / record["transfer_file"]).read_bytes()
        gw.send(link.Kind.OFFER, bytes.fromhex(record["cose"]))
        states: list[DeploymentState] = []
        started, served = time.monotonic(), 0
        while not states or states[-1] not in (DeploymentState.CONFIRMED,
                                                DeploymentState.FAILED,
                                                DeploymentState.ROLLED_BACK):
            assert time.monotonic() - started < 60, states
            for frame in gw.pump():
                if frame.kind == link.Kind.CHUNK_REQUEST:
                    req = decode_chunk_request(frame.payload)
                    data = transfer[req.offset : req.offset + req.length]
                    gw.send(link.Kind.CHUNK, encode_chunk(Chunk(req.pkg, req.offset, data)))
                    served += len(data)
                elif frame.kind == link.Kind.REPORT:
                    states.append(decode_report(frame.payload).state)
        elapsed = time.monotonic() - started
        assert states[-1] == DeploymentState[record["state"]], states
        assert served == len(transfer)
        if states[-1] == DeploymentState.CONFIRMED:
            running = int(record["package_id"])
        print(f"\n{record['name']}: {len(transfer)} bytes in {elapsed:.2f} s "
              f"({len(transfer) / elapsed / 1024:.1f} KiB/s over the emulated UART)")
        status = decode_status(gw.wait_for(link.Kind.STATUS).payload)
        assert status.model == running  # a failed trial leaves the previous model running
        # free_ram = the unused part of the stack (painted at boot) + the RAM above it.
        symbols = elf_symbols(vector_image)
        reserved = symbols["__stack_top"] - symbols["__stack_bottom"]
        peak = symbols["__ram_end"] - symbols["__stack_bottom"] - status.free_ram
        print(f"stack high-water mark so far: {peak} of {reserved} bytes reserved")
        assert 0 < peak <= reserved * 3 // 4
    models = [decode_batch(gw.wait_for(link.Kind.EVENTS, timeout=20).payload).model
              for _ in range(2)]
    assert models[-1] == running, models  # events name the package that made them
