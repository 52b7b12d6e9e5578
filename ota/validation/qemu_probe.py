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
size found (and steps up if that fails). Allocate-only runs use ``-icount shift=0`` (a
deterministic guest watchdog); Invoke runs do not (twice as fast; instruction counts then vary
by a few hundred from run to run: the watchdog's SysTick interrupts land at other points).
:func:`measure_boards` runs several boards in
parallel. :func:`run_golden` runs raw input tensors and returns the raw outputs, so a server can
know the exact outputs of a kernel set. No Django imports: this module only needs QEMU.

QEMU runs with the allow-listed environment of untrusted-input children
(:func:`fleet.core.child_env.child_environment`): the model under test is an upload. The probe
images are looked up in ``probe_dir`` (default :data:`PROBE_BUILD`, where ``make -C firmware
probes`` puts them; the server passes its ``ADMISSION_PROBE_DIR`` setting);
:func:`unavailable` tells why a board cannot be measured. With the instruction-counting plugin
(``make -C firmware insn-plugin``), the final Invoke of a measurement also counts the
instructions of one inference.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from fleet.core.child_env import child_environment

ROOT = Path(__file__).resolve().parents[2]
PROBE_BUILD = ROOT / "firmware" / "build" / "probe"
INSN_PLUGIN = ROOT / "firmware" / "build" / "qemu_insn.so"  # make -C firmware insn-plugin
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
        """The probe image for this board (in the default folder)."""
        return self.elf_in(None)

    def elf_in(self, probe_dir: Path | None) -> Path:
        """The probe image for this board in ``probe_dir`` (None: :data:`PROBE_BUILD`)."""
        return Path(probe_dir or PROBE_BUILD) / self.name / "probe.elf"


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
    # Guest instructions of one Invoke (QEMU TCG plugin), None when not counted.
    instructions_per_invoke: int | None = None
    input_bytes: int | None = None  # input tensor 0, as the probe reports it
    output_bytes: int | None = None  # output tensor 0


_OK = re.compile(r"probe: ok arena=(\d+) used=(\d+) in=(\d+) out=(\d+)")
_FAIL = re.compile(r"probe: fail (.*)")
_TFLM = re.compile(r"probe: tflm: (.*)")
_INSN = re.compile(r"qemu_insn: total=(\d+) marked=(\d+) pairs=(\d+)")


def unavailable(board: str, probe_dir: Path | None = None) -> str | None:
    """Say why ``board`` cannot be measured here (None: it can): no QEMU, or no probe image."""
    if board not in BOARDS:
        return f"no probe board {board!r}"
    if shutil.which(QEMU, path=child_environment().get("PATH")) is None:
        return f"{QEMU} not found on PATH"
    elf = BOARDS[board].elf_in(probe_dir)
    if not elf.is_file():
        return f"probe image {elf} missing (make -C firmware probes)"
    return None


_markers: dict[tuple[str, int], int] = {}


def marker_address(elf: Path) -> int:
    """Return the address of ``tml_probe_marker`` in a probe image (ELF32 symbol table)."""
    key = (str(elf), elf.stat().st_mtime_ns)
    if key not in _markers:
        data = elf.read_bytes()
        if data[:5] != b"\x7fELF\x01" or data[5] != 1:
            raise RuntimeError(f"{elf} is not a little-endian ELF32 image")
        shoff, = struct.unpack_from("<I", data, 0x20)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x2E)
        sections = [struct.unpack_from("<IIIIIIIIII", data, shoff + i * shentsize)
                    for i in range(shnum)]
        for sh in sections:
            if sh[1] != 2:  # SHT_SYMTAB
                continue
            strtab = sections[sh[6]]
            for off in range(sh[4], sh[4] + sh[5], 16):
                name_off, value = struct.unpack_from("<II", data, off)
                start = strtab[4] + name_off
                if data[start:data.index(b"\0", start)] == b"tml_probe_marker":
                    _markers[key] = value & ~1  # Thumb bit off: the instruction's address
                    break
        if key not in _markers:
            raise RuntimeError(f"no tml_probe_marker in {elf}")
    return _markers[key]


def run_probe(model_path: Path, board: str, arena_bytes: int, *, invoke: int = 0,
              inputs: Path | None = None, outputs: Path | None = None,
              watchdog_ms: int = 2000, timeout_s: float = 20.0, probe_dir: Path | None = None,
              plugin: Path | None = None, icount: bool = True) -> ProbeRun:
    """Run the probe once in a fresh QEMU process and return what it reported.

    ``watchdog_ms`` is guest time (with ``icount``, QEMU runs with ``-icount shift=0``: 1 ms is
    1 million instructions, deterministic; without, the guest clock follows the host's and
    QEMU runs about twice as fast: for long Invokes); ``timeout_s`` is wall-clock, for a QEMU
    that locks up. ``plugin``: the instruction-counting TCG plugin (its figures are in the log).
    """
    spec = BOARDS[board]
    elf = spec.elf_in(probe_dir)
    args = [f"model={model_path}", f"arena={arena_bytes}", f"invoke={invoke}",
            f"watchdog={watchdog_ms}"]
    if inputs is not None and outputs is not None:
        args += [f"inputs={inputs}", f"outputs={outputs}"]
    for word in args:
        if " " in word or "," in word:
            raise ValueError(f"probe arguments may not hold spaces or commas: {word!r}")
    command = [QEMU, "-M", spec.name, "-nographic", "-monitor", "none",
               *(["-icount", "shift=0"] if icount else []), "-kernel", str(elf),
               "-semihosting-config",
               "enable=on,target=native," + ",".join(f"arg={a}" for a in args)]
    if plugin is not None:
        command[-2:-2] = ["-plugin", f"{plugin},marker={marker_address(elf):#x}"]
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                              check=False, stdin=subprocess.DEVNULL, env=child_environment())
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


def measure_min_arena(model: bytes, board: str, *, timeout_s: float = 20.0,
                      invoke_timeout_s: float = 120.0, probe_dir: Path | None = None,
                      plugin: Path | None = None) -> ProbeResult:
    """Return the smallest arena in which ``model`` allocates and runs one Invoke on ``board``.

    Steps: one allocate-only run with the largest arena the board has (``arena_used_bytes``,
    or the reason the model cannot run at all); allocate-only runs that bracket and bisect the
    minimum to the byte; one run with one Invoke at the size found (if that fails, the size is
    bisected again between it and the generous size, with Invoke). Allocate-only runs use
    ``-icount`` (a deterministic guest watchdog) and ``timeout_s``; Invoke runs, which may take
    seconds on reference kernels, run without it (twice as fast) within ``invoke_timeout_s``.
    With ``plugin`` the Invoke runs count the instructions of one inference.
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
                run = run_probe(path, board, size, invoke=invoke,
                                timeout_s=invoke_timeout_s if invoke else timeout_s,
                                watchdog_ms=2000 if invoke == 0 else 60_000, probe_dir=probe_dir,
                                plugin=plugin if invoke else None, icount=invoke == 0)
                tried.append((size, run.ok))
                known[size, invoke] = run
            return known[size, invoke]

        def result(minimum: int | None, used: int | None, failure: str | None) -> ProbeResult:
            final = known.get((minimum, 1)) if minimum is not None else None
            counted = _INSN.search(final.log) if final is not None else None
            insns = int(counted.group(2)) if counted and int(counted.group(3)) == 1 else None
            return ProbeResult(board, minimum, used, failure, runs, time.monotonic() - started,
                               tried, insns, first.input_bytes, first.output_bytes)

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


_cache: dict[tuple[str, str, str, int, bool], ProbeResult] = {}
_cache_lock = threading.Lock()
CACHE_ENTRIES = 256


def clear_cache() -> None:
    """Forget the measurements :func:`measure_boards` kept (``cache=True``)."""
    with _cache_lock:
        _cache.clear()


def measure_boards(model: bytes, boards: Sequence[str] | None = None, *,
                   workers: int | None = None, probe_dir: Path | None = None,
                   plugin: Path | None = None, cache: bool = False) -> dict[str, ProbeResult]:
    """Run :func:`measure_min_arena` for several boards in parallel (one thread each).

    ``cache``: reuse a result for the same model bytes and probe image (by its mtime), e.g. when
    a version is validated again; the figures do not change while the image does not.
    """
    names = list(boards or [name for name, spec in BOARDS.items()
                            if spec.elf_in(probe_dir).exists()])
    digest = hashlib.sha256(model).hexdigest()

    def key(name: str) -> tuple[str, str, str, int, bool]:
        elf = BOARDS[name].elf_in(probe_dir)
        return (digest, name, str(elf), elf.stat().st_mtime_ns, plugin is not None)

    def one(name: str) -> ProbeResult:
        if cache:
            with _cache_lock:
                hit = _cache.get(key(name))
            if hit is not None:
                return hit
        result = measure_min_arena(model, name, probe_dir=probe_dir, plugin=plugin)
        if cache and result.failure is None:
            with _cache_lock:
                if len(_cache) >= CACHE_ENTRIES:
                    _cache.pop(next(iter(_cache)))
                _cache[key(name)] = result
        return result

    if not names:
        return {}
    with ThreadPoolExecutor(max_workers=workers or min(len(names), os.cpu_count() or 1)) as pool:
        return dict(zip(names, pool.map(one, names), strict=True))


def run_golden(model: bytes, board: str, inputs: bytes, arena_bytes: int, *,
               timeout_s: float = 60.0, probe_dir: Path | None = None) -> bytes:
    """Run each raw input tensor 0 in ``inputs`` (concatenated) and return the raw outputs.

    Raises ``RuntimeError`` with the probe's reason when it fails.
    """
    with tempfile.TemporaryDirectory(prefix="qemu-probe-") as tmp:
        model_path, in_path, out_path = (Path(tmp) / n for n in ("m.tflite", "in.bin", "out.bin"))
        model_path.write_bytes(model)
        in_path.write_bytes(inputs)
        run = run_probe(model_path, board, arena_bytes, inputs=in_path, outputs=out_path,
                        watchdog_ms=600_000, timeout_s=timeout_s, probe_dir=probe_dir,
                        icount=False)
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
