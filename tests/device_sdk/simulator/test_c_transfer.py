"""The firmware's C transfer decoder as the simulator loads it (device_sdk/simulator/c_transfer.py,
``make -C firmware libtransfer``): it decodes the shared vectors exactly as the Python decoder
does (same model bytes, same refusal reasons), refuses what the Python decoder refuses (bounded
output, bad digests, the wrong base), and the simulated devices' updaters use it.

In CI (``CI=true``) a missing C compiler fails these tests instead of skipping them.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from device_sdk.ota.slots import SlotStore
from device_sdk.ota.updater import Download, OtaUpdater
from device_sdk.protocol.manifest import Encoding, Manifest
from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.transfer import TransferDecoder, encode_transfer
from device_sdk.simulator import c_transfer
from device_sdk.simulator.c_transfer import CTransferDecoder, decoder_factory, load_library
from tests.device_sdk.protocol.test_transfer import fine_tuned, manifest_for, sha, synthetic_model

ROOT = Path(__file__).resolve().parents[3]
VECTORS = ROOT / "tests" / "vectors"


@pytest.fixture(scope="module")
def lib() -> Any:
    """Build the library (make libtransfer) and load it."""
    if shutil.which("cc") is None or shutil.which("make") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("no C compiler")
        pytest.skip("no C compiler")
    subprocess.run(["make", "-C", str(ROOT / "firmware"), "libtransfer"], check=True,
                   capture_output=True, timeout=300)
    loaded = load_library(c_transfer.DEFAULT_LIBRARY)
    assert loaded is not None
    return loaded


def read_vectors(path: Path) -> list[dict[str, str]]:
    """Parse a .vec file: blank-line separated records of ``key: value`` lines."""
    records: list[dict[str, str]] = []
    for block in path.read_text().split("\n\n"):
        fields = dict(line.split(": ", 1) if ": " in line else (line.rstrip(":"), "")
                      for line in block.splitlines() if line and not line.startswith("#"))
        if fields:
            records.append(fields)
    return records


def run(decoder_of: Any, manifest: Manifest, transfer: bytes, base: bytes | None,
        chunk: int) -> tuple[int, bytes]:
    """Feed ``transfer`` in chunks; return (reason, model bytes produced until it)."""
    out = bytearray()
    try:
        decoder = decoder_of(manifest, base)
        for i in range(0, len(transfer), chunk):
            out += decoder.feed(transfer[i:i + chunk])
        out += decoder.finish()
    except ProtocolError as exc:
        return int(exc.reason), bytes(out)
    return 0, bytes(out)


def test_shared_vectors_decode_identically(lib: Any) -> None:
    """Every transfers.vec case: the C path gives the vector's reason and the Python path's
    bytes (every chunking: 1, 97, 512 bytes)."""
    cases = read_vectors(VECTORS / "transfers.vec")
    assert len(cases) == 48
    for case in cases:
        transfer = (VECTORS / case["transfer_file"]).read_bytes()
        base = (VECTORS / case["base_file"]).read_bytes() if case["base_file"] else None
        manifest = Manifest(
            sequence=1, model_name="m", model_version="1", hardware_profile="hw",
            model_sha256=bytes.fromhex(case["model_sha256"]),
            model_size=int(case["model_size"]), encoding=Encoding(int(case["encoding"])),
            transfer_sha256=bytes.fromhex(case["transfer_sha256"]),
            transfer_size=int(case["transfer_size"]), arena_bytes=0, expires_at=2**40,
            package_id=1, base_sha256=bytes.fromhex(case["base_sha256"]) or None)
        chunk = int(case["chunk"])
        c_reason, c_out = run(decoder_factory(c_transfer.DEFAULT_LIBRARY), manifest, transfer,
                              base, chunk)
        py_reason, py_out = run(TransferDecoder, manifest, transfer, base, chunk)
        assert c_reason == int(case["reason"]), case["name"]
        assert (c_reason, c_out) == (py_reason, py_out), case["name"]


@pytest.fixture(scope="module")
def models() -> tuple[bytes, bytes]:
    """A ~100 KB model the device runs and its head-fine-tuned successor."""
    base = synthetic_model(100_000, seed=3)
    return base, fine_tuned(base, seed=4)


@pytest.mark.parametrize("encoding", list(Encoding))
def test_round_trip_in_random_chunks(lib: Any, models: tuple[bytes, bytes],
                                     encoding: Encoding) -> None:
    base, model = models
    transfer = encode_transfer(model, encoding, base)
    manifest = manifest_for(model, transfer, encoding, base if encoding == Encoding.DELTA else None)
    decoder = CTransferDecoder(lib, manifest, base)
    rng = random.Random(int(encoding))
    out, i = bytearray(), 0
    while i < len(transfer):
        n = rng.randint(1, 9000)
        out += decoder.feed(transfer[i:i + n])
        i += n
    out += decoder.finish()
    assert bytes(out) == model


def refusal(lib: Any, manifest: Manifest, transfer: bytes, base: bytes | None = None
            ) -> tuple[Reason, Reason]:
    """Return the reasons (C, Python) streaming ``transfer`` is refused with."""
    reasons = []
    for make in (lambda: CTransferDecoder(lib, manifest, base),
                 lambda: TransferDecoder(manifest, base)):
        with pytest.raises(ProtocolError) as info:
            decoder = make()
            for i in range(0, len(transfer), 1000):
                decoder.feed(transfer[i:i + 1000])
            decoder.finish()
        reasons.append(info.value.reason)
    return reasons[0], reasons[1]


def test_output_beyond_the_signed_model_size_is_refused(lib: Any, models: tuple[bytes, bytes]
                                                        ) -> None:
    """A signed stream that decodes to more than the manifest's model size (a decompression
    bomb as far as the device can tell) never writes past the model-sized buffer."""
    _, model = models
    bomb = encode_transfer(bytes(400_000), Encoding.COMPRESSED)  # 400 KB of zeros: tiny stream
    manifest = manifest_for(model, bomb, Encoding.COMPRESSED)  # says 100 KB
    assert refusal(lib, manifest, bomb) == (Reason.TRANSFER_OVERFLOW, Reason.TRANSFER_OVERFLOW)
    # Raw: one byte more than the signed size.
    manifest = manifest_for(model, model, Encoding.RAW)
    assert refusal(lib, manifest, model + b"\x00") == (Reason.TRANSFER_OVERFLOW,) * 2


def test_sha256_matches_hashlib_on_the_cpus_instructions(lib: Any) -> None:
    """The library's SHA-256 (on the CPU's SHA instructions where it has them: the build's
    TML_SHA256_X86) gives hashlib's digests at every padding boundary and past a few blocks."""
    import ctypes
    import hashlib
    import platform

    lib.tml_lib_sha256_accelerated.restype = ctypes.c_int
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if platform.machine() == "x86_64" and " sha_ni" in flags:
        assert lib.tml_lib_sha256_accelerated() == 1  # the fast path is what ran below
    rng = random.Random(5)
    out = ctypes.create_string_buffer(32)
    for size in [*range(200), 1000, 4095, 4096, 65537]:
        data = rng.randbytes(size)
        lib.tml_lib_sha256(data, ctypes.c_size_t(size), out)
        assert out.raw == hashlib.sha256(data).digest(), size


def test_bad_digests_are_refused(lib: Any, models: tuple[bytes, bytes]) -> None:
    base, model = models
    for encoding in Encoding:
        transfer = encode_transfer(model, encoding, base)
        delta_base = base if encoding == Encoding.DELTA else None
        tampered = transfer[:-1] + bytes([transfer[-1] ^ 1])
        manifest = manifest_for(model, transfer, encoding, delta_base)
        assert refusal(lib, manifest, tampered, base) == (Reason.TRANSFER_DIGEST_MISMATCH,) * 2
        if encoding == Encoding.RAW:
            continue  # a raw manifest's two digests are one (Manifest checks it)
        other = manifest_for(model[:-1] + b"\xff", transfer, encoding, delta_base)
        assert refusal(lib, other, transfer, base) == (Reason.MODEL_DIGEST_MISMATCH,) * 2


def test_delta_needs_its_own_base(lib: Any, models: tuple[bytes, bytes]) -> None:
    base, model = models
    transfer = encode_transfer(model, Encoding.DELTA, base)
    manifest = manifest_for(model, transfer, Encoding.DELTA, base)
    wrong = synthetic_model(len(base), seed=99)
    assert refusal(lib, manifest, transfer, wrong) == (Reason.DELTA_BASE_MISMATCH,) * 2
    assert refusal(lib, manifest, transfer, base[:1000]) == (Reason.DELTA_BASE_MISMATCH,) * 2
    assert refusal(lib, manifest, transfer, None) == (Reason.DELTA_BASE_MISMATCH,) * 2


def test_a_refusal_sticks(lib: Any, models: tuple[bytes, bytes]) -> None:
    _, model = models
    transfer = encode_transfer(model, Encoding.COMPRESSED)
    corrupt = transfer[:500] + bytes([transfer[500] ^ 0x40]) + transfer[501:]
    decoder = CTransferDecoder(lib, manifest_for(model, corrupt, Encoding.COMPRESSED))
    with pytest.raises(ProtocolError) as first:
        decoder.feed(corrupt)
    assert first.value.reason == Reason.DECODE_ERROR
    with pytest.raises(ProtocolError) as again:
        decoder.feed(b"")
    assert again.value.reason == Reason.DECODE_ERROR
    with pytest.raises(ProtocolError):
        decoder.finish()


def test_updater_installs_through_the_c_decoder(lib: Any, models: tuple[bytes, bytes],
                                                tmp_path: Path) -> None:
    """OtaUpdater with the simulator's decoder factory writes the decoded model into the
    inactive slot (the decoder made is the C one)."""
    _, model = models
    made: list[Any] = []
    factory = decoder_factory(c_transfer.DEFAULT_LIBRARY)

    def recording(manifest: Manifest, base_bytes: bytes | None) -> Any:
        made.append(factory(manifest, base_bytes))
        return made[-1]

    store = SlotStore(tmp_path)
    updater = OtaUpdater(store, hardware="hw", decoder=recording)
    transfer = encode_transfer(model, Encoding.COMPRESSED)
    part = tmp_path / "download.part"
    part.write_bytes(transfer)
    download = Download(manifest_for(model, transfer, Encoding.COMPRESSED), part,
                        [[0, len(transfer)]])
    updater._decode(download)
    assert download.done
    assert [type(d) for d in made] == [CTransferDecoder]
    updater.download = download
    updater.install()
    assert store.read_active() == model
    assert sha(store.read_active()) == sha(model)


def test_without_the_library_the_python_decoder_is_used(tmp_path: Path) -> None:
    assert decoder_factory(tmp_path / "missing.so") is TransferDecoder
    assert decoder_factory("none") is TransferDecoder
