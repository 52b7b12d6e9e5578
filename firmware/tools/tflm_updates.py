#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Write the real-model update chain the posix port's TFLM tests run (make test-tflm).

Usage: tflm_updates.py OUT_DIR V1.tflite V2.tflite

V1 is the demo CNN (tools/demo_model.py), V2 the same network with other weights (--seed 1).
OUT_DIR gets, in tests/vectors/ota.vec's record format (firmware/tests/sim.c reads it):

- ``tflm.vec``: four signed updates for the simulated device (profile mps2-an385, the test key
  of tests/vectors/keys): v1 raw and v2 compressed, each with manifest key 15 computed by the
  host TFLM of the tflite-micro wheel (CONFIRMED); v2 with one weight changed whose key 15 is
  v2's (ROLLED_BACK, TRIAL_OUTPUT_MISMATCH); a model that needs ~200 KB of arena, its manifest
  not saying so (ROLLED_BACK, MODEL_LOAD_FAILED on the 32 KB arena);
- ``golden.vec``: v1's raw outputs for golden inputs 0..7 (the runner suite compares the host
  build's invoke_raw with them byte for byte), and the models as files.

Needs TensorFlow only for the big-arena model (testkit.model_factory.big_arena_model).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
N_GOLDEN = 8


def host_outputs(model: bytes, n: int) -> list[bytes]:
    """Return output tensor 0's raw bytes for golden inputs 0..n-1, in the wheel's TFLM."""
    import numpy as np
    from tflite_micro import runtime

    from device_sdk.protocol.golden import golden_input

    interp = runtime.Interpreter.from_bytes(model, arena_size=512 * 1024)
    inp = interp.get_input_details(0)
    dtype, shape = np.dtype(inp["dtype"]), tuple(int(s) for s in inp["shape"])
    size = int(np.prod(shape)) * dtype.itemsize
    digest = hashlib.sha256(model).digest()
    outs = []
    for i in range(n):
        interp.set_input(np.frombuffer(golden_input(digest, i, size), dtype=dtype).reshape(shape), 0)
        interp.invoke()
        outs.append(np.ascontiguousarray(interp.get_output(0)).tobytes())
    return outs


def trial_of(outputs: list[bytes]):  # type: ignore[no-untyped-def]
    """Return key 15 (reference kernels: labels and digest, no mismatch allowed)."""
    from device_sdk.protocol.golden import OutputType, outputs_digest, top1_label
    from device_sdk.protocol.manifest import TrialSpec

    labels = tuple(top1_label(o, OutputType.INT8) for o in outputs)
    return TrialSpec(labels, 0, outputs_digest(outputs), OutputType.INT8)


def main(argv: list[str]) -> int:
    """Write the vectors into argv[1]."""
    out, v1, v2 = Path(argv[1]), Path(argv[2]).read_bytes(), Path(argv[3]).read_bytes()
    sys.path.insert(0, str(ROOT))
    from device_sdk.protocol.manifest import Encoding, Manifest, sign_manifest
    from device_sdk.protocol.ota_messages import DeploymentState
    from device_sdk.protocol.reasons import Reason
    from device_sdk.protocol.transfer import encode_transfer
    from testkit import model_factory
    from tests.vectors.generate import PROFILE, SIGNER, record, sha

    (out / "ota").mkdir(parents=True, exist_ok=True)
    big = out / "big_arena.tflite"
    if not big.exists():
        big.write_bytes(model_factory.big_arena_model())
    v3 = model_factory.tweak_weight(v2)
    steps = [
        ("tflm_v1_raw", v1, Encoding.RAW, trial_of(host_outputs(v1, N_GOLDEN)), "CONFIRMED", 0),
        ("tflm_v2_compressed", v2, Encoding.COMPRESSED, trial_of(host_outputs(v2, N_GOLDEN)),
         "CONFIRMED", 0),
        ("tflm_v3_output_mismatch", v3, Encoding.COMPRESSED, trial_of(host_outputs(v2, N_GOLDEN)),
         "ROLLED_BACK", int(Reason.TRIAL_OUTPUT_MISMATCH)),
        ("tflm_big_arena", big.read_bytes(), Encoding.COMPRESSED, None, "ROLLED_BACK",
         int(Reason.MODEL_LOAD_FAILED)),
    ]
    if host_outputs(v3, N_GOLDEN) == host_outputs(v2, N_GOLDEN):
        raise SystemExit("the changed weight does not change v2's golden outputs")
    records = []
    for number, (name, model, encoding, trial, state, reason) in enumerate(steps, start=1):
        transfer = encode_transfer(model, encoding, None)
        manifest = Manifest(
            sequence=200 + number, model_name="demo-cnn", model_version=f"2.{number}",
            hardware_profile=PROFILE, model_sha256=sha(model), model_size=len(model),
            encoding=encoding, transfer_sha256=sha(transfer), transfer_size=len(transfer),
            arena_bytes=0, expires_at=4_000_000_000, package_id=200 + number, trial=trial)
        (out / "ota" / f"{name}.bin").write_bytes(transfer)
        (out / f"{name}.tflite").write_bytes(model)
        records.append({"name": name, "cose": sign_manifest(manifest, SIGNER),
                        "transfer_file": f"ota/{name}.bin", "package_id": 200 + number,
                        "sequence": manifest.sequence, "model_size": len(model),
                        "model_sha256": sha(model), "model_file": f"{name}.tflite",
                        "state": state, "state_value": int(DeploymentState[state]),
                        "reason": reason})
    header = "# Real-model updates for the posix port with TFLM (tools/tflm_updates.py)\n\n"
    (out / "tflm.vec").write_text(header + "\n".join(record(r) for r in records))
    golden = [{"name": f"v1_golden_{i}", "model_file": "tflm_v1_raw.tflite", "index": i,
               "output": o} for i, o in enumerate(host_outputs(v1, N_GOLDEN))]
    (out / "golden.vec").write_text(header + "\n".join(record(r) for r in golden))
    print(f"{out}: {len(records)} updates, {len(golden)} golden outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
