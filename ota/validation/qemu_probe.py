"""Measure a model's exact minimum tensor arena on an emulated Cortex-M, per core and kernel set.

The arena a model needs differs between a 64-bit host and a Cortex-M, and between kernel sets
(reference, CMSIS-NN): measure it on the target's own build. The firmware's probe image
(``firmware/probe/``, built with ``make -C firmware probes``) runs TFLM under QEMU: it reads the
model and an arena size from the semihosting command line, runs ``AllocateTensors`` (and
optionally ``Invoke``), prints one line and exits with a code. Below its minimum TFLM may
fail cleanly, fault, loop or lock up QEMU, so every size is tried in a fresh QEMU process with a
guest watchdog (SysTick) and a wall-clock timeout.

:func:`measure_min_arena` bisects on "AllocateTensors succeeds" from the ``arena_used_bytes``
a generous run reports (the minimum is a little above it), then checks one ``Invoke`` at the
size found (and steps up if that fails). :func:`measure_boards` runs several boards in
parallel. :func:`run_golden` runs raw input tensors and returns the raw outputs, so a server can
know the exact outputs of a kernel set. No Django imports: this module only needs QEMU.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE_BUILD = ROOT / "firmware" / "build" / "probe"
QEMU = "qemu-system-arm"


class ProbeCode(IntEnum):
    """The probe image's exit codes (firmware/probe/probe.h: wire values, never renumber)."""

    OK = 0
    ALLOCATE = 1
    INVOKE = 2
    TIMEOUT = 3
    FAULT = 4
    USAGE = 5
    MODEL = 6
    NO_ROOM = 7
    HOST_TIMEOUT = 100  # not the probe's: QEMU did not end within the wall-clock timeout


@dataclass(frozen=True)
class Board:
    """An emulated board the probe is built for."""

    name: str  # QEMU machine, also the probe's build folder
    cpu: str
    kernels: str  # "reference" or "cmsis-nn"
    pool_bytes: int  # RAM the probe has for the model plus the arena

    @property
    def elf(self) -> Path:
        """The probe image for this board."""
        return PROBE_BUILD / self.name / "probe.elf"


BOARDS: dict[str, Board] = {
    "mps2-an385": Board("mps2-an385", "cortex-m3", "reference", 0x003F0000),
    "mps2-an386": Board("mps2-an386", "cortex-m4", "cmsis-nn", 0x003F0000),
    "mps3-an547": Board("mps3-an547", "cortex-m55", "cmsis-nn", 0x00200000),
}
# Built by `make -C firmware probes` (the M55's TFLM objects are a third build: run
# `make -C firmware BOARD=mps3-an547 probe` to add it); measure_boards() uses the built ones.


@dataclass(frozen=True)
class ProbeRun:
    """One QEMU run of the probe at one arena size."""

    arena_bytes: int
    code: ProbeCode
    arena_used_bytes: int | None
    input_bytes: int | None
    output_bytes: int | None
    log: str  # the probe's lines (TFLM's messages included)
    seconds: float

    @property
    def ok(self) -> bool:
        """True when AllocateTensors and every Invoke asked for succeeded."""
        return self.code == ProbeCode.OK


@dataclass(frozen=True)
class ProbeResult:
    """The smallest arena a model runs in on one board (or why it does not run)."""

    board: str
    min_arena_bytes: int | None  # AllocateTensors and one Invoke succeed; one byte less fails
    arena_used_bytes: int | None  # what TFLM reports after a generous AllocateTensors
    failure: str | None  # e.g. "Didn't find op for builtin opcode 'TOPK_V2'"
    runs: int  # QEMU processes started
    seconds: float
    tried: list[tuple[int, bool]] = field(default_factory=list)  # (arena, allocate ok)


_OK = re.compile(r"probe: ok arena=(\d+) used=(\d+) in=(\d+) out=(\d+)")
_FAIL = re.compile(r"probe: fail (.*)")
_TFLM = re.compile(r"probe: tflm: (.*)")


def run_probe(model_path: Path, board: str, arena_bytes: int, *, invoke: int = 0,
              inputs: Path | None = None, outputs: Path | None = None,
              watchdog_ms: int = 2000, timeout_s: float = 20.0) -> ProbeRun:
    """Run the probe once in a fresh QEMU process and return what it reported.

    ``watchdog_ms`` is guest time (QEMU runs with ``-icount shift=0``: 1 ms is 1 million
    instructions); ``timeout_s`` is wall-clock, for a QEMU that locks up.
    """
    spec = BOARDS[board]
    args = [f"model={model_path}", f"arena={arena_bytes}", f"invoke={invoke}",
            f"watchdog={watchdog_ms}"]
    if inputs is not None and outputs is not None:
        args += [f"inputs={inputs}", f"outputs={outputs}"]
    for word in args:
        if " " in word or "," in word:
            raise ValueError(f"probe arguments may not hold spaces or commas: {word!r}")
    command = [QEMU, "-M", spec.name, "-nographic", "-monitor", "none", "-icount", "shift=0",
               "-kernel", str(spec.elf), "-semihosting-config",
               "enable=on,target=native," + ",".join(f"arg={a}" for a in args)]
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                              check=False, stdin=subprocess.DEVNULL)
        # QEMU writes semihosting console output on stderr.
        code = ProbeCode(done.returncode) if done.returncode in iter(ProbeCode) else \
            ProbeCode.FAULT
        log = done.stderr + done.stdout
    except subprocess.TimeoutExpired as expired:
        out = expired.stderr or b""
        code, log = ProbeCode.HOST_TIMEOUT, out.decode() if isinstance(out, bytes) else out
    elapsed = time.monotonic() - started
    found = _OK.search(log)
    used, in_b, out_b = (int(found.group(2)), int(found.group(3)), int(found.group(4))) \
        if found else (None, None, None)
    return ProbeRun(arena_bytes, code, used, in_b, out_b, log, elapsed)


def _failure(run: ProbeRun) -> str:
    """Describe a failed run: TFLM's most telling message, else the probe's own."""
    messages = _TFLM.findall(run.log)
    for message in messages:
        if "Didn't find op" in message or "Failed to get registration" in message:
            return message.strip()
    fail = _FAIL.search(run.log)
    return (fail.group(1).strip() if fail else run.code.name.lower()) + (
        f": {messages[0].strip()}" if messages else "")


def measure_min_arena(model: bytes, board: str, *, timeout_s: float = 20.0) -> ProbeResult:
    """Return the smallest arena in which ``model`` allocates and runs one Invoke on ``board``.

    Steps: one allocate-only run with the largest arena the board has (``arena_used_bytes``,
    or the reason the model cannot run at all); allocate-only runs that bracket and bisect the
    minimum to the byte; one run with one Invoke at the size found (if that fails, the size is
    bisected again between it and the generous size, with Invoke).
    """
    spec = BOARDS[board]
    started = time.monotonic()
    tried: list[tuple[int, bool]] = []
    runs = 0
    with tempfile.TemporaryDirectory(prefix="qemu-probe-") as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(model)
        generous = (spec.pool_bytes - len(model) - 64) & ~15

        known: dict[tuple[int, int], ProbeRun] = {}

        def probe(size: int, invoke: int = 0) -> ProbeRun:
            nonlocal runs
            if (size, invoke) not in known:
                runs += 1
                run = run_probe(path, board, size, invoke=invoke, timeout_s=timeout_s,
                                watchdog_ms=2000 if invoke == 0 else 60_000)
                tried.append((size, run.ok))
                known[size, invoke] = run
            return known[size, invoke]

        def result(minimum: int | None, used: int | None, failure: str | None) -> ProbeResult:
            return ProbeResult(board, minimum, used, failure, runs,
                               time.monotonic() - started, tried)

        first = probe(generous)
        if not first.ok or first.arena_used_bytes is None:
            return result(None, None, _failure(first))
        used = first.arena_used_bytes

        def bisect(bad: int, good: int, invoke: int) -> int:
            while good - bad > 1:
                mid = (bad + good) // 2
                if probe(mid, invoke).ok:
                    good = mid
                else:
                    bad = mid
            return good

        # Bracket: [bad, good] with bad failing and good working, growing steps from `used`.
        bad, step = used - 1, 64
        good = used
        while not probe(good).ok:
            bad, good, step = good, min(good + step, generous), step * 4
            if good == generous:
                break
        if bad >= 1 and probe(bad).ok:  # the minimum lies below `used`: search downwards
            good, step = bad, 64
            bad = max(bad - step, 0)
            while bad > 0 and probe(bad).ok:
                good, step = bad, step * 4
                bad = max(bad - step, 0)
        minimum = bisect(bad, good, 0)
        final = probe(minimum, invoke=1)
        if not final.ok:
            if not probe(generous, invoke=1).ok:
                return result(None, used, _failure(final))
            minimum = bisect(minimum, generous, 1)
        return result(minimum, used, None)


def measure_boards(model: bytes, boards: Sequence[str] | None = None, *,
                   workers: int | None = None) -> dict[str, ProbeResult]:
    """Run :func:`measure_min_arena` for several boards in parallel (one thread each)."""
    names = list(boards or [name for name, spec in BOARDS.items() if spec.elf.exists()])
    with ThreadPoolExecutor(max_workers=workers or min(len(names), os.cpu_count() or 1)) as pool:
        results = pool.map(lambda name: measure_min_arena(model, name), names)
        return dict(zip(names, results, strict=True))


def run_golden(model: bytes, board: str, inputs: bytes, arena_bytes: int, *,
               timeout_s: float = 60.0) -> bytes:
    """Run each raw input tensor 0 in ``inputs`` (concatenated) and return the raw outputs.

    Raises ``RuntimeError`` with the probe's reason when it fails.
    """
    with tempfile.TemporaryDirectory(prefix="qemu-probe-") as tmp:
        model_path, in_path, out_path = (Path(tmp) / n for n in ("m.tflite", "in.bin", "out.bin"))
        model_path.write_bytes(model)
        in_path.write_bytes(inputs)
        run = run_probe(model_path, board, arena_bytes, inputs=in_path, outputs=out_path,
                        watchdog_ms=600_000, timeout_s=timeout_s)
        if not run.ok:
            raise RuntimeError(f"probe on {board} failed: {_failure(run)}")
        return out_path.read_bytes()


def build_probes(boards: Sequence[str] | None = None) -> None:
    """Build the probe images (``make -C firmware BOARD=... probe``); raise if make fails."""
    for name in boards or BOARDS:
        done = subprocess.run(["make", "-C", str(ROOT / "firmware"), f"BOARD={name}", "probe",
                               "-j2"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"building the probe for {name} failed:\n{done.stderr[-3000:]}")
