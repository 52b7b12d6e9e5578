"""Measure a model in the real TFLite Micro interpreter, safely, from the server process.

TFLM segfaults or aborts on some arena sizes and on hostile models, so the interpreter runs in
a child process (:mod:`ota.validation.tflm_probe`). One child does the whole arena search; the
parent relaunches only when it dies mid-search, treating the size it died on as too small.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from fleet.core.child_env import PROJECT_ROOT, child_environment
from ota.validation.tflm_probe import DEFAULT_MAX_ARENA, DEFAULT_MAX_SAMPLES

__all__ = [
    "AllocationRecord",
    "FailureKind",
    "ProbeFailure",
    "ProbeResult",
    "Samples",
    "TensorDetails",
    "TflmAllocations",
    "probe_model",
]

HOST_POINTER_BITS = struct.calcsize("P") * 8
DEFAULT_TIMEOUT_S = 30.0
MAX_LAUNCHES = 4
_LOG_TAIL = 2000

Samples = str | os.PathLike[str] | np.ndarray | Mapping[str, np.ndarray]


class FailureKind(StrEnum):
    """Why a probe could not measure or run a model (stored in reports: do not rename)."""

    MISSING_OPS = "missing_ops"  # TFLM has no kernel for an op the model uses
    CRASH = "crash"  # the interpreter process died (segfault, abort)
    TIMEOUT = "timeout"
    ALLOCATION_FAILED = "allocation_failed"  # no arena up to the maximum was enough
    LOAD_FAILED = "load_failed"  # TFLM refused the model for another reason
    INVOKE_FAILED = "invoke_failed"
    BAD_SAMPLES = "bad_samples"  # the sample inputs do not fit the model's inputs


@dataclass(frozen=True)
class ProbeFailure:
    """A failed probe: the kind, a sentence for people, and what TFLM printed."""

    kind: FailureKind
    message: str
    missing_ops: list[str] = field(default_factory=list)
    log: str = ""  # tail of TFLM's own output


@dataclass(frozen=True)
class AllocationRecord:
    """One line of TFLM's RecordingMicroAllocator report."""

    name: str  # e.g. "TfLiteEvalTensor data"
    used: int  # bytes including alignment overhead
    requested: int
    count: int
    unit: str  # what ``count`` counts: allocations, tensors, NodeAndRegistration structs


@dataclass(frozen=True)
class TflmAllocations:
    """Arena figures TFLM itself reports (``print_allocations``), for a host build."""

    total: int | None
    head: int | None  # planned, non-persistent (activations, scratch)
    tail: int | None  # persistent (tensor structs, op data)
    records: list[AllocationRecord] = field(default_factory=list)

    def used(self, name: str) -> int:
        """Return the bytes used by the record called ``name`` (0 when absent)."""
        return sum(r.used for r in self.records if r.name == name)


@dataclass(frozen=True)
class TensorDetails:
    """An input or output tensor as the TFLM runtime sees it."""

    shape: list[int]
    dtype: str  # numpy spelling: int8, float32
    scales: list[float]
    zero_points: list[int]


@dataclass(frozen=True)
class ProbeResult:
    """What the probe measured; ``failure`` is set when the model could not run."""

    arena_bytes: int | None  # smallest arena that worked (to ARENA_ALIGN), host build
    largest_failing_arena: int | None  # tried or inferred from TFLM's figures to fail
    pointer_bits: int  # of the build the arena figures come from
    allocations: TflmAllocations | None
    inputs: list[TensorDetails]
    outputs: list[TensorDetails]
    sample_outputs: list[list[Any]]  # per sample, per output: nested lists of raw values
    samples_given: bool  # False: one seeded random sample was used
    latency_us_mean: float | None  # host inference time; only a relative figure
    latency_us_min: float | None
    invocations: int
    attempts: int  # arena sizes tried
    launches: int  # child processes started
    elapsed_s: float
    tflm_version: str
    failure: ProbeFailure | None = None
    # Golden inputs run for the device trial (tflm_probe.run_golden): labels, outputs digest.
    golden: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """Tell whether the model loaded and ran on the samples."""
        return self.failure is None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of every field plus ``ok``."""
        return {"ok": self.ok, **asdict(self)}


def probe_model(
    model_bytes: bytes,
    *,
    samples: Samples | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_arena: int = DEFAULT_MAX_ARENA,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    start_arena: int | None = None,
) -> ProbeResult:
    """Find the smallest TFLM arena for a model, run it on samples, and time it.

    ``samples`` is a .npy/.npz path, an array (batch of inputs for input 0) or a mapping of
    arrays (``x``, or ``arr_0``, ``arr_1``... per input); float samples for a quantized input
    are quantized with the input's scale. Without samples, one seeded random input is used.
    Never raises for a bad model: the failure is in the result.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    with tempfile.TemporaryDirectory(prefix="tflm-probe-") as tmp:
        tmpdir = Path(tmp)
        model_path = tmpdir / "model.tflite"
        model_path.write_bytes(model_bytes)
        base_args = [
            "--model", str(model_path), "--log", str(tmpdir / "tflm.log"),
            "--max-arena", str(max_arena), "--max-samples", str(max_samples),
        ]  # fmt: skip
        if samples is not None:
            base_args += ["--samples", str(_write_samples(samples, tmpdir))]
        if start_arena is not None:
            base_args += ["--start-arena", str(start_arena)]

        known_fail, known_ok = 0, None
        attempts = 0
        died = ""
        for launch in range(1, MAX_LAUNCHES + 1):
            args = base_args + ["--known-fail", str(known_fail)]
            if known_ok is not None:
                args += ["--known-ok", str(known_ok)]
            events, returncode = _launch(args, deadline)
            attempts += sum(1 for e in events if e.get("event") == "try")
            final = next((e for e in events if e.get("event") in ("result", "failure")), None)
            elapsed = time.monotonic() - started
            log = _log_tail(tmpdir / "tflm.log")
            if final is not None:
                return _from_event(final, attempts, launch, elapsed)
            tried = [e for e in events if e.get("event") == "tried"]
            ok_sizes = [e["arena"] for e in tried if e["ok"]] + ([known_ok] if known_ok else [])
            known_ok = min(ok_sizes, default=None)
            if returncode is None:
                return _failed(FailureKind.TIMEOUT, f"no answer within {timeout_s:g} s",
                               attempts, launch, elapsed, log, known_ok)  # fmt: skip
            died = _describe_exit(returncode)
            crashed = _crashed_size(events)
            invoking = any(e.get("event") == "stage" for e in events)
            if invoking or crashed is None or crashed >= max_arena:
                where = "while running the samples" if invoking else "while loading the model"
                return _failed(FailureKind.CRASH, f"TFLM {died} {where}",
                               attempts, launch, elapsed, log, known_ok)  # fmt: skip
            # The child died trying one arena size: take it as too small and search on.
            known_fail = max([known_fail, crashed, *(e["arena"] for e in tried if not e["ok"])])
        elapsed = time.monotonic() - started
        message = f"TFLM {died} on {MAX_LAUNCHES} launches in a row"
        return _failed(FailureKind.CRASH, message, attempts, MAX_LAUNCHES, elapsed, log, known_ok)


def _launch(args: list[str], deadline: float) -> tuple[list[dict[str, Any]], int | None]:
    """Run one probe child; return its events and exit code (None when it timed out)."""
    # An allow-listed environment: the model under test is untrusted, the secrets stay here.
    proc = subprocess.Popen(
        [sys.executable, "-m", "ota.validation.tflm_probe", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        cwd=PROJECT_ROOT, env=child_environment(),
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
        returncode: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        returncode = None
    events = []
    for line in out.decode("utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events, returncode


def _crashed_size(events: list[dict[str, Any]]) -> int | None:
    """Return the arena size the child announced but never reported on."""
    pending = None
    for e in events:
        if e.get("event") == "try":
            pending = e["arena"]
        elif e.get("event") == "tried":
            pending = None
    return pending


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"died of {signal.Signals(-returncode).name}"
        except ValueError:
            return f"died of signal {-returncode}"
    return f"exited with status {returncode} without an answer"


def _log_tail(path: Path) -> str:
    try:
        text = path.read_bytes()[-_LOG_TAIL:].decode("utf-8", errors="replace")
    except OSError:
        return ""
    return text.replace("\r", "")


def _write_samples(samples: Samples, tmpdir: Path) -> Path:
    if isinstance(samples, np.ndarray):
        path = tmpdir / "samples.npy"
        np.save(path, samples, allow_pickle=False)
        return path
    if isinstance(samples, Mapping):
        path = tmpdir / "samples.npz"
        np.savez(path, **{k: np.asarray(v) for k, v in samples.items()})
        return path
    return Path(samples).resolve()


def _failed(
    kind: FailureKind,
    message: str,
    attempts: int,
    launches: int,
    elapsed: float,
    log: str,
    arena: int | None,
) -> ProbeResult:
    return ProbeResult(
        arena_bytes=arena, largest_failing_arena=None, pointer_bits=HOST_POINTER_BITS,
        allocations=None, inputs=[], outputs=[], sample_outputs=[], samples_given=False,
        latency_us_mean=None, latency_us_min=None, invocations=0, attempts=attempts,
        launches=launches, elapsed_s=elapsed, tflm_version=_tflm_version(),
        failure=ProbeFailure(kind, message, log=log),
    )  # fmt: skip


def _from_event(event: dict[str, Any], attempts: int, launches: int, elapsed: float) -> ProbeResult:
    """Build a result from the child's final ``result`` or ``failure`` line."""
    failure = None
    if event["event"] == "failure":
        failure = ProbeFailure(
            kind=FailureKind(event["kind"]),
            message=event["message"],
            missing_ops=list(event.get("missing_ops", [])),
            log=event.get("log", ""),
        )
    alloc = event.get("allocations")
    allocations = None
    if alloc:
        allocations = TflmAllocations(
            total=alloc["total"], head=alloc["head"], tail=alloc["tail"],
            records=[AllocationRecord(**r) for r in alloc["records"]],
        )  # fmt: skip
    return ProbeResult(
        arena_bytes=event.get("arena"),
        largest_failing_arena=event.get("largest_failing"),
        pointer_bits=HOST_POINTER_BITS,
        allocations=allocations,
        inputs=[TensorDetails(**d) for d in event.get("inputs", [])],
        outputs=[TensorDetails(**d) for d in event.get("outputs", [])],
        sample_outputs=event.get("sample_outputs", []),
        samples_given=bool(event.get("samples_given", False)),
        latency_us_mean=event.get("latency_us_mean"),
        latency_us_min=event.get("latency_us_min"),
        invocations=int(event.get("invocations", 0)),
        attempts=attempts,
        launches=launches,
        elapsed_s=elapsed,
        tflm_version=event.get("tflm_version") or _tflm_version(),
        failure=failure,
        golden=event.get("golden"),
    )


def _tflm_version() -> str:
    # Read the version file, not the package: importing tflite_micro loads the C++ runtime.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tflite-micro")
    except PackageNotFoundError:
        return "unknown"
