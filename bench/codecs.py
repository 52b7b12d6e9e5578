"""Measure our transfer codecs against heatshrink (compression) and detools (delta).

Both competitors ship C decoders for microcontrollers. The model pairs are bench/delta.py's
(real int8 .tflite files): the first install (the full model, no base), a head-only fine-tune
and a full retrain (each against the first model as base). For each, in bytes on the wire:

- ours: encoding 1 (TZ: LZ77 + range coder, 2 KB window) for the first install, encoding 2
  (TD delta inside TZ) for the updates; what ``choose_encoding`` would send;
- heatshrink (LZSS) at window 2^8, 2^10 and 2^11 with a 16-byte lookahead: the full model
  (heatshrink has no delta);
- detools sequential patches (bsdiff), compressed with heatshrink at the window its C library
  is built with (2^8, lookahead 2^7: ``c/heatshrink/heatshrink_config.h``), with CRLE, and with
  LZMA (the smallest, but its decoder's dictionary alone is larger than a device's RAM budget).

Decoder RAM: ours from ``TransferDecoder.state_bytes()`` (TRANSFER.md: 4 KB budget); heatshrink
from its parameters (window 2^W + input buffer + 16 bytes of registers, the static decoder
of ``heatshrink_decoder.h``); detools from ``sizeof(struct detools_apply_patch_t)`` built for
Cortex-M4 with arm-none-eabi-gcc (``DETOOLS_C_DIR``: a checkout's ``c/`` folder; else the
figure measured that way for detools 0.53.0, see ``DETOOLS_STATE_BYTES``).

Decode cost on a Cortex-M4: each C decoder (ours: firmware/src/lz.c and delta.c; heatshrink's
and detools' own C sources) decodes the transfer in QEMU's mps2-an386 under the firmware's
instruction-counting plugin (bench/codecs_m4/): instructions per model byte (QEMU models no
cycles). Needs arm-none-eabi-gcc, qemu-system-arm and ``DETOOLS_C_DIR`` (a detools checkout's
``c/``, which also holds the heatshrink decoder); without them those figures are skipped with
a note on stderr. Host decode speed is printed too, and labelled as such: ours there is the
pure-Python reference decoder, heatshrink and detools their C code through Python bindings.
Every transfer is decoded and compared with the model before a figure is printed.

Prints JSON lines ``{"metric", "value", "unit", "baseline", "ratio"}``; the baseline of a byte
figure is ours (ratio > 1: theirs is larger).

Run: ``.venv/bin/python bench/codecs.py [--quick]`` (needs ``pip install heatshrink2 detools``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from delta import figure, install, make_models  # bench/delta.py

from device_sdk.protocol.manifest import Encoding
from device_sdk.protocol.transfer import choose_encoding, encode_transfer

HEATSHRINK_WINDOWS = (8, 10, 11)
HEATSHRINK_LOOKAHEAD = 4
HEATSHRINK_INPUT_BUFFER = 64  # bytes; the decoder may take input in pieces this small
HEATSHRINK_REGISTERS = 16  # the static decoder's counters, indexes and state
# sizeof(struct detools_apply_patch_t) for Cortex-M4 (arm-none-eabi-gcc 12.2, -mcpu=cortex-m4
# -Os), detools 0.53.0's C library with its shipped heatshrink config (window 2^8, lookahead
# 2^7, input buffer 256) and CRLE; LZMA off. Re-measured when DETOOLS_C_DIR is set.
DETOOLS_STATE_BYTES = 640
DETOOLS_HEATSHRINK = {"heatshrink_window_sz2": 8, "heatshrink_lookahead_sz2": 7}


def timed(fn: Callable[[], Any], repeat: int = 3) -> tuple[Any, float]:
    """Return ``fn()`` and its best wall time over ``repeat`` runs."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def heatshrink_state_bytes(window_sz2: int) -> int:
    """Return the static heatshrink decoder's RAM for a window of 2^``window_sz2``."""
    return (1 << window_sz2) + HEATSHRINK_INPUT_BUFFER + HEATSHRINK_REGISTERS


def detools_state_bytes() -> tuple[int, str]:
    """Return sizeof(struct detools_apply_patch_t) on Cortex-M4 and how it was obtained."""
    source = os.environ.get("DETOOLS_C_DIR")
    compiler = shutil.which("arm-none-eabi-gcc")
    if not source or not compiler or not (Path(source) / "detools.h").exists():
        return DETOOLS_STATE_BYTES, "recorded"
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.c"
        probe.write_text('#include "detools.h"\n'
                         "char detools_state[sizeof(struct detools_apply_patch_t)];\n")
        obj = Path(tmp) / "probe.o"
        subprocess.run([compiler, "-mcpu=cortex-m4", "-mthumb", "-Os", "-c",
                        "-DDETOOLS_CONFIG_FILE_IO=0", "-DDETOOLS_CONFIG_COMPRESSION_LZMA=0",
                        f"-I{source}", f"-I{Path(source) / 'heatshrink'}", str(probe),
                        "-o", str(obj)], check=True)
        nm = subprocess.run([compiler.replace("gcc", "nm"), "-S", str(obj)], check=True,
                            capture_output=True, text=True).stdout
    for line in nm.splitlines():
        parts = line.split()
        if parts[-1] == "detools_state":
            return int(parts[1], 16), "arm-none-eabi-gcc"
    raise SystemExit("could not read the size of struct detools_apply_patch_t")


def detools_patch(base: bytes, target: bytes, compression: str) -> bytes:
    """Return a sequential bsdiff patch from ``base`` to ``target``."""
    import detools

    out = io.BytesIO()
    extra = DETOOLS_HEATSHRINK if compression == "heatshrink" else {}
    detools.create_patch(io.BytesIO(base), io.BytesIO(target), out, compression=compression,
                         **extra)
    return out.getvalue()


def detools_apply(base: bytes, patch: bytes) -> bytes:
    import detools

    out = io.BytesIO()
    detools.apply_patch(io.BytesIO(base), io.BytesIO(patch), out)
    return out.getvalue()


class CortexM4:
    """Decode instructions on QEMU's Cortex-M4 (bench/codecs_m4/), when the tools are here."""

    def __init__(self, workdir: Path) -> None:
        from codecs_m4 import build

        self.build = build
        self.workdir = workdir
        source = os.environ.get("DETOOLS_C_DIR")
        missing = build.missing_tools() + ([] if source else ["DETOOLS_C_DIR"])
        self.detools = Path(source) if source else None
        self.enabled = not missing
        if missing:
            print(f"Cortex-M4 decode figures skipped: missing {', '.join(missing)}",
                  file=sys.stderr)
        else:
            self.plugin = build.plugin(workdir)

    def per_byte(self, codec: str, transfer: bytes, model: bytes, base: bytes,
                 heatshrink_params: tuple[int, int] = (8, 4)) -> float:
        """Return the decode's instructions per model byte."""
        assert self.detools is not None
        elf = self.build.build(self.workdir, codec, transfer, model, base,
                               heatshrink_src=self.detools / "heatshrink",
                               heatshrink_params=heatshrink_params, detools_src=self.detools)
        return round(self.build.decode_instructions(elf, self.plugin) / len(model), 1)


def measure_case(name: str, target: bytes, base: bytes | None, rows: list[dict[str, Any]],
                 m4: CortexM4) -> None:
    """Append the figures of one model pair to ``rows``."""
    import heatshrink2

    if base is None:
        ours_encoding, ours = Encoding.COMPRESSED, encode_transfer(target, Encoding.COMPRESSED)
    else:
        ours_encoding, ours = Encoding.DELTA, encode_transfer(target, Encoding.DELTA, base)
    _, chosen = choose_encoding(target, base)
    peak = install(target, ours_encoding, ours, base or b"")
    _, ours_seconds = timed(lambda: install(target, ours_encoding, ours, base or b""), 1)

    def add(metric: str, value: float, unit: str, baseline: float) -> None:
        rows.append(figure(f"{name}_{metric}", value, unit, baseline))

    add("model_bytes", len(target), "bytes", len(target))
    add(f"ours_{ours_encoding.name.lower()}_bytes", len(ours), "bytes", len(target))
    add("ours_chosen_bytes", len(chosen), "bytes", len(ours))
    add("ours_decoder_state_bytes", peak, "bytes", 4096)
    add("ours_decode_mb_per_s_host_python", round(len(target) / ours_seconds / 1e6, 3),
        "MB/s", round(len(target) / ours_seconds / 1e6, 3))
    ours_m4 = 0.0
    if m4.enabled:
        codec = "ours_lz" if base is None else "ours_delta"
        ours_m4 = m4.per_byte(codec, ours, target, base or b"")
        add("ours_m4_instructions_per_byte", ours_m4, "instructions/B", ours_m4)

    for window in HEATSHRINK_WINDOWS:
        packed = heatshrink2.compress(target, window_sz2=window,
                                      lookahead_sz2=HEATSHRINK_LOOKAHEAD)
        unpacked, seconds = timed(lambda p=packed, w=window: heatshrink2.decompress(
            p, window_sz2=w, lookahead_sz2=HEATSHRINK_LOOKAHEAD))
        assert unpacked == target, f"heatshrink w{window} did not round-trip"
        add(f"heatshrink_w{window}_bytes", len(packed), "bytes", len(chosen))
        add(f"heatshrink_w{window}_decoder_state_bytes", heatshrink_state_bytes(window),
            "bytes", peak)
        add(f"heatshrink_w{window}_decode_mb_per_s_host_c", round(len(target) / seconds / 1e6, 2),
            "MB/s", round(len(target) / ours_seconds / 1e6, 3))
        if m4.enabled and window in (8, 11):
            add(f"heatshrink_w{window}_m4_instructions_per_byte",
                m4.per_byte("heatshrink", packed, target, b"", (window, HEATSHRINK_LOOKAHEAD)),
                "instructions/B", ours_m4)

    for compression in ("heatshrink", "crle", "lzma"):
        patch = detools_patch(base or b"", target, compression)
        applied, seconds = timed(lambda p=patch: detools_apply(base or b"", p))
        assert applied == target, f"detools {compression} did not round-trip"
        add(f"detools_{compression}_bytes", len(patch), "bytes", len(chosen))
        add(f"detools_{compression}_decode_mb_per_s_host_c", round(len(target) / seconds / 1e6, 2),
            "MB/s", round(len(target) / ours_seconds / 1e6, 3))
        if m4.enabled and compression != "lzma":  # its C library's LZMA is liblzma: not built
            add(f"detools_{compression}_m4_instructions_per_byte",
                m4.per_byte("detools", patch, target, base or b""), "instructions/B", ours_m4)


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="bench/delta.py's quick models")
    args = parser.parse_args()
    base, head, retrained = make_models(args.quick)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fleet-bench-codecs-") as tmp:
        m4 = CortexM4(Path(tmp))
        measure_case("first_install", base, None, rows, m4)
        measure_case("head_finetune", head, base, rows, m4)
        measure_case("full_retrain", retrained, base, rows, m4)
    state, how = detools_state_bytes()
    if state:
        rows.append(figure(f"detools_decoder_state_bytes_{how}", state, "bytes", 4096))
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
