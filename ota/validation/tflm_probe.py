"""Run a model in the real TFLM interpreter, in a throwaway process; report as JSON lines.

Run as ``python -m ota.validation.tflm_probe --model M --log L [...]``; the parent is
:func:`ota.validation.tflm.probe_model`. This process may die: an arena far too small, or a
hostile model, segfaults TFLM. So it announces every arena size before trying it, and the
parent treats a size tried but never reported as one that crashed.

Protocol (one JSON object per line on the original stdout; C-level prints go to the log):
``{"event": "try", "arena": n}``, ``{"event": "tried", "arena": n, "ok": bool}``,
``{"event": "stage", "stage": "invoke"}``, then one ``failure`` or ``result`` object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# Below ~460 bytes TFLM cannot place its own allocator and dereferences NULL (measured on
# tflite-micro 0.dev20261023: 448 crashes, 464 fails cleanly). Never go below twice that.
ARENA_FLOOR = 1024
ARENA_ALIGN = 16  # TFLM's arena alignment: sizes are searched to this resolution
DEFAULT_START_ARENA = 1 << 20
DEFAULT_MAX_ARENA = 64 << 20
DEFAULT_MAX_SAMPLES = 64
DEFAULT_GOLDEN_INPUTS = 8  # limits.MAX_TRIAL_INPUTS: what manifest key 15 can carry
# Latency: repeat invokes until this many, or until the time budget is spent.
LATENCY_MIN_INVOKES = 10
LATENCY_BUDGET_S = 0.2

_MISSING_OP = re.compile(r"Didn't find op for (?:builtin|custom) opcode '([^']+)'")
_CUSTOM_UNRESOLVED = re.compile(r"Failed to get registration from op code (\S+)")
_MISSING_BYTES = re.compile(r"missing: (\d+)")
_ALLOC_TOTAL = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")
_ALLOC_RECORD = re.compile(
    r"'([^']+)' used (\d+) bytes with alignment overhead \(requested (\d+) bytes for (\d+) (.+)\)"
)


def align_up(n: int) -> int:
    """Round ``n`` up to the arena alignment."""
    return -(-n // ARENA_ALIGN) * ARENA_ALIGN


def parse_missing_ops(text: str) -> list[str]:
    """Return the op names TFLM said it has no kernel for, in order, without repeats."""
    names = _MISSING_OP.findall(text)
    if not names and "Failed to get registration" in text:
        names = _CUSTOM_UNRESOLVED.findall(text)
    return list(dict.fromkeys(names))


def parse_missing_bytes(text: str) -> int | None:
    """Return the shortfall TFLM printed for the first failed arena allocation, if any."""
    match = _MISSING_BYTES.search(text)
    return int(match.group(1)) if match else None


def parse_allocations(text: str) -> dict[str, Any]:
    """Parse ``print_allocations()`` output into totals and per-kind records."""
    figures: dict[str, Any] = {"total": None, "head": None, "tail": None, "records": []}
    for key, value in _ALLOC_TOTAL.findall(text):
        figures[key] = int(value)
    for name, used, requested, count, unit in _ALLOC_RECORD.findall(text):
        figures["records"].append(
            {"name": name, "used": int(used), "requested": int(requested),
             "count": int(count), "unit": unit}
        )  # fmt: skip
    return figures


class _Probe:
    """Hold the model, the captured C output and the protocol channel."""

    def __init__(self, model: bytes, log_path: Path) -> None:
        from tflite_micro import runtime

        self.runtime = runtime
        self.model = model
        # Keep the real stdout for the protocol; send fd 1 and 2 (TFLM's MicroPrintf) to the log.
        self.channel = os.fdopen(os.dup(1), "w", buffering=1)
        self.log = open(log_path, "a+b", buffering=0)  # noqa: SIM115 - lives as long as we do
        os.dup2(self.log.fileno(), 1)
        os.dup2(self.log.fileno(), 2)
        # The parent reuses the log across relaunches: read only what this process prints.
        self.read_pos = self.log.seek(0, os.SEEK_END)
        self.attempts = 0

    def emit(self, **event: Any) -> None:
        """Write one protocol line and flush it, so it survives a crash right after."""
        self.channel.write(json.dumps(event) + "\n")
        self.channel.flush()

    def captured(self) -> str:
        """Return what TFLM printed since the last call."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.log.seek(self.read_pos)
        data = self.log.read()
        self.read_pos += len(data)
        return data.decode("utf-8", errors="replace").replace("\r", "")

    def attempt(self, arena: int) -> tuple[Any | None, str]:
        """Build an interpreter with ``arena`` bytes; return it (or None) and TFLM's output."""
        self.attempts += 1
        self.emit(event="try", arena=arena)
        try:
            interp = self.runtime.Interpreter.from_bytes(self.model, arena_size=arena)
        except RuntimeError as e:  # TFLM's only error: allocation, missing op, bad model
            text = self.captured() + f"\n{type(e).__name__}: {e}"
            self.emit(event="tried", arena=arena, ok=False)
            return None, text
        except Exception as e:
            # The wrapper's Python side unpacks the whole flatbuffer first; a malformed one
            # fails there (struct.error, IndexError...) whatever the arena size.
            self.emit(event="tried", arena=arena, ok=False)
            raise ProbeFailure(
                "load_failed", f"model does not parse: {type(e).__name__}: {e}"
            ) from e
        self.emit(event="tried", arena=arena, ok=True)
        return interp, self.captured()

    def allocations(self, interp: Any) -> dict[str, Any]:
        """Ask the recording allocator for its figures (it prints them on fd 2)."""
        self.captured()
        interp.print_allocations()
        return parse_allocations(self.captured())


class ProbeFailure(Exception):
    """The model cannot run; ``kind`` is one of the parent's FailureKind values."""

    def __init__(self, kind: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.extra = extra


def search_arena(
    probe: _Probe, known_fail: int, known_ok: int | None, start: int, max_arena: int
) -> tuple[Any, int, int]:
    """Find the smallest working arena; return (interpreter, size, largest failing size).

    Sizes go from large to small. TFLM's "missing: N" on a failed allocation is a lower bound
    (its allocations do not depend on the arena size), so one failure usually lands the next
    try right on the minimum and the bisection that follows is short.
    """
    lo = max(known_fail, ARENA_FLOOR - ARENA_ALIGN)  # largest size known (or assumed) to fail
    hi, best = known_ok, None
    # After a crash before any success, grow past the size that killed the last child.
    size = align_up(max(start, 4 * known_fail))
    while hi is None:
        interp, text = probe.attempt(size)
        if interp is not None:
            hi, best = size, interp
            break
        missing_ops = parse_missing_ops(text)
        if missing_ops:
            raise ProbeFailure(
                "missing_ops", f"TFLM has no kernel for {', '.join(missing_ops)}",
                missing_ops=missing_ops, log=text[-2000:],
            )  # fmt: skip
        lo = size
        if size >= max_arena:
            raise ProbeFailure(
                "allocation_failed", f"does not fit in {max_arena} bytes of arena", log=text[-2000:]
            )
        shortfall = parse_missing_bytes(text) or 0
        size = min(max_arena, align_up(max(size * 4, size + shortfall)))

    hint: int | None = None
    if best is not None:
        total = probe.allocations(best).get("total")
        if total:
            # The recorded total (final head + persistent tail) is a floor for the arena:
            # prepare needs temporary space on top of it, never less. Not going below it also
            # keeps us out of small arenas, where TFLM's tail arithmetic can underflow and crash.
            hint = align_up(total)
            lo = max(lo, hint - ARENA_ALIGN)
            hint = hint if hint < hi else None
    step = max(16 * ARENA_ALIGN, lo // 8)
    while hi - lo > ARENA_ALIGN:
        if hint is not None and lo < hint < hi:
            size = hint  # from TFLM's own figures: usually right on the minimum
        elif hi > 2 * lo:
            # The first success was far above: gallop up from the lower bound, not bisect down.
            size = align_up(lo + step)
            step *= 2
        else:
            size = align_up((lo + hi) // 2)
        size = min(size, hi - ARENA_ALIGN)
        hint = None
        interp, text = probe.attempt(size)
        if interp is not None:
            hi, best = size, interp
            continue
        lo = size
        shortfall = parse_missing_bytes(text)
        if shortfall:
            lo = max(lo, align_up(size + shortfall) - ARENA_ALIGN)
            hint = align_up(size + shortfall)
    if best is None:  # relaunched after a crash: the known-good size was never built here
        best, text = probe.attempt(hi)
        if best is None:
            raise ProbeFailure("load_failed", "TFLM refused the model", log=text[-2000:])
    return best, hi, lo


def load_samples(path: str | None, input_details: list[dict[str, Any]]) -> list[np.ndarray]:
    """Return one batch array per model input: from a .npy/.npz, or seeded random data."""
    if path is None:
        rng = np.random.default_rng(0)
        arrays = []
        for d in input_details:
            dtype = np.dtype(d["dtype"])
            shape = tuple(int(s) for s in d["shape"])
            if dtype.kind in "iu":
                info = np.iinfo(dtype)
                arrays.append(
                    rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
                )
            else:
                arrays.append(rng.standard_normal(shape).astype(dtype))
        return arrays
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        arrays = [loaded]
    elif "x" in loaded.files:
        arrays = [loaded["x"]]
    else:
        keys = sorted(loaded.files, key=lambda k: int(re.sub(r"\D", "", k) or 0))
        arrays = [loaded[k] for k in keys]
    if len(arrays) != len(input_details):
        raise ValueError(
            f"{len(arrays)} sample arrays for a model with {len(input_details)} inputs"
        )
    return [_as_batch(a, d, i) for i, (a, d) in enumerate(zip(arrays, input_details, strict=True))]


def _as_batch(arr: np.ndarray, detail: dict[str, Any], index: int) -> np.ndarray:
    shape = tuple(int(s) for s in detail["shape"])
    dtype = np.dtype(detail["dtype"])
    if arr.shape == shape[1:]:  # one sample without its batch dimension
        arr = arr[np.newaxis]
    if arr.shape[1:] != shape[1:]:
        raise ValueError(f"input {index}: samples of shape {arr.shape}, model wants {shape}")
    if arr.dtype.kind == "f" and dtype.kind in "iu":
        # Float samples for a quantized input: quantize with the input's own scale/zero point.
        q = detail["quantization_parameters"]
        scale, zero = float(q["scales"][0]), int(q["zero_points"][0])
        if scale == 0:
            raise ValueError(f"input {index} is {dtype} without quantization; samples are float")
        arr = np.round(arr / scale) + zero
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        arr = np.clip(arr, info.min, info.max)
    return arr.astype(dtype)


def run_samples(
    interp: Any, model_io: tuple[int, int], samples: str | None, max_samples: int
) -> dict[str, Any]:
    """Invoke once per sample, then repeat for a stable host latency figure."""
    n_in, n_out = model_io
    in_details = [_plain_details(interp.get_input_details(i)) for i in range(n_in)]
    out_details = [_plain_details(interp.get_output_details(i)) for i in range(n_out)]
    batches = load_samples(samples, [interp.get_input_details(i) for i in range(n_in)])
    n_samples = min(len(batches[0]), max_samples) if batches else 1
    outputs, timings = [], []
    for s in range(n_samples):
        for i, batch in enumerate(batches):
            interp.set_input(batch[s : s + 1], i)
        t0 = time.perf_counter()
        interp.invoke()
        timings.append(time.perf_counter() - t0)
        outputs.append([interp.get_output(o).tolist() for o in range(n_out)])
    started = time.perf_counter()
    while len(timings) < LATENCY_MIN_INVOKES and time.perf_counter() - started < LATENCY_BUDGET_S:
        t0 = time.perf_counter()
        interp.invoke()
        timings.append(time.perf_counter() - t0)
    return {
        "inputs": in_details,
        "outputs": out_details,
        "sample_outputs": outputs,
        "samples_given": samples is not None,
        "samples_total": len(batches[0]) if batches else 0,
        "latency_us_mean": 1e6 * sum(timings) / len(timings),
        "latency_us_min": 1e6 * min(timings),
        "invocations": len(timings),
    }


def run_golden(interp: Any, model: bytes, model_io: tuple[int, int], n: int) -> dict[str, Any]:
    """Run golden inputs 0..n-1 (device_sdk/protocol/golden.py) and record labels and digest.

    What a device's trial compares against (manifest key 15). Only for one-input models whose
    input 0 and output 0 are int8/uint8: otherwise ``applicable`` is False and says why.
    """
    import hashlib

    from device_sdk.protocol.golden import OutputType, golden_input, outputs_digest, top1_label

    inp, out = interp.get_input_details(0), interp.get_output_details(0)
    in_type, out_type = np.dtype(inp["dtype"]), np.dtype(out["dtype"])
    output_type = OutputType.from_dtype(out_type.name)
    if model_io[0] != 1 or OutputType.from_dtype(in_type.name) is None or output_type is None:
        return {"applicable": False,
                "why": f"{model_io[0]} input(s), input 0 {in_type.name}, output 0 "
                       f"{out_type.name}: golden trials need one int8/uint8 input and an "
                       "int8/uint8 output"}
    shape = tuple(int(s) for s in inp["shape"])
    size = int(np.prod(shape)) * in_type.itemsize
    digest = hashlib.sha256(model).digest()
    outputs = []
    for i in range(n):
        x = np.frombuffer(golden_input(digest, i, size), dtype=in_type).reshape(shape)
        interp.set_input(x, 0)
        interp.invoke()
        outputs.append(np.ascontiguousarray(interp.get_output(0)).tobytes())
    return {
        "applicable": True, "n": n, "input_bytes": size, "output_type": int(output_type),
        "labels": [top1_label(o, output_type) for o in outputs],
        "outputs_sha256": outputs_digest(outputs).hex(),
    }  # fmt: skip


def _plain_details(d: dict[str, Any]) -> dict[str, Any]:
    q = d.get("quantization_parameters") or {}
    return {
        "shape": [int(s) for s in d["shape"]],
        "dtype": np.dtype(d["dtype"]).name,
        "scales": [float(s) for s in q.get("scales", [])],
        "zero_points": [int(z) for z in q.get("zero_points", [])],
    }


def _model_facts(model: bytes) -> tuple[tuple[int, int], list[str]]:
    """Return (input count, output count) and the model's custom op names."""
    # The runtime has no input/output count and indexing past the end is not safe to try.
    from ota.validation.inspect import inspect_model

    inspection = inspect_model(model)
    custom = [op.op for sg in inspection.subgraphs for op in sg.operators if op.custom]
    return (len(inspection.inputs), len(inspection.outputs)), list(dict.fromkeys(custom))


def main(argv: list[str] | None = None) -> int:
    """Probe one model and print the protocol lines; exit 0 unless killed by TFLM."""
    parser = argparse.ArgumentParser(prog="python -m ota.validation.tflm_probe")
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--log", required=True, type=Path, help="file for TFLM's own prints")
    parser.add_argument("--samples", help=".npy or .npz of inputs (default: seeded random)")
    parser.add_argument("--known-fail", type=int, default=0, help="a size known to fail/crash")
    parser.add_argument("--known-ok", type=int, default=None, help="a size known to work")
    parser.add_argument("--start-arena", type=int, default=DEFAULT_START_ARENA)
    parser.add_argument("--max-arena", type=int, default=DEFAULT_MAX_ARENA)
    parser.add_argument("--max-samples", type=int, default=DEFAULT_MAX_SAMPLES)
    parser.add_argument("--golden", type=int, default=DEFAULT_GOLDEN_INPUTS,
                        help="golden inputs to run for the device trial (0: none)")
    args = parser.parse_args(argv)

    model = args.model.read_bytes()
    probe = _Probe(model, args.log)
    try:
        try:
            probe.emit(**_run(probe, model, args))
        except ProbeFailure:
            raise
        except Exception as e:  # report, rather than die with a traceback nobody parses
            raise ProbeFailure("load_failed", f"{type(e).__name__}: {e}") from e
    except ProbeFailure as f:
        probe.emit(event="failure", kind=f.kind, message=f.message, attempts=probe.attempts,
                   tflm_version=_tflm_version(), **f.extra)  # fmt: skip
    # Skip interpreter destructors: after some failed loads TFLM aborts at exit (seen with
    # TOPK_V2), which would hide the answer behind a signal.
    os._exit(0)


def _run(probe: _Probe, model: bytes, args: argparse.Namespace) -> dict[str, Any]:
    try:
        model_io, custom_ops = _model_facts(model)
    except ValueError as e:
        raise ProbeFailure("load_failed", f"model does not parse: {e}") from e
    try:
        interp, arena, largest_failing = search_arena(
            probe, args.known_fail, args.known_ok, args.start_arena, args.max_arena
        )
    except ProbeFailure as f:
        if f.kind == "missing_ops" and "CUSTOM" in f.extra["missing_ops"] and custom_ops:
            # For custom ops TFLM only prints "op code CUSTOM"; name them from the model.
            ops = [op for op in f.extra["missing_ops"] if op != "CUSTOM"] + custom_ops
            f.extra["missing_ops"] = ops
            f.message = f"TFLM has no kernel for {', '.join(ops)}"
        raise
    allocations = probe.allocations(interp)
    probe.emit(event="stage", stage="invoke", arena=arena)
    try:
        run = run_samples(interp, model_io, args.samples, args.max_samples)
    except (ValueError, OSError, KeyError) as e:
        raise ProbeFailure("bad_samples", str(e), arena=arena, allocations=allocations) from e
    except RuntimeError as e:
        raise ProbeFailure(
            "invoke_failed", str(e), arena=arena, allocations=allocations,
            log=probe.captured()[-2000:],
        ) from e  # fmt: skip
    golden: dict[str, Any] | None = None
    if args.golden > 0:
        try:
            golden = run_golden(interp, model, model_io, args.golden)
        except RuntimeError as e:  # ran on the samples, not on these bytes: no key 15
            golden = {"applicable": False, "why": f"golden inputs did not run: {e}"}
    return dict(
        event="result", arena=arena, largest_failing=largest_failing, allocations=allocations,
        attempts=probe.attempts, tflm_version=_tflm_version(), golden=golden, **run,
    )  # fmt: skip


def _tflm_version() -> str:
    from tflite_micro import __version__

    return str(__version__)


if __name__ == "__main__":
    sys.exit(main())
