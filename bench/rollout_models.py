"""The rollout bench's models: two versions of a ~100 KB int8 MLP and a head fine-tune of the
second, trained with TensorFlow in a subprocess (``bench/rollout.py --role build-models``: TF
never loads in the bench process) and cached in the temp folder by build parameters.

Imported by ``bench/rollout.py`` (run as a script: ``bench/`` is on ``sys.path`` as its folder).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ENTRY = Path(__file__).with_name("rollout.py")  # the entry point; ``--role build-models``
HIDDEN = 2100  # Dense 16-2100-4 int8 (per-channel scales and zero points included): ~100 KB
MODEL_CACHE = Path(tempfile.gettempdir()) / f"fleet-bench-rollout-models-h{HIDDEN}-v2"


def log(msg: str) -> None:
    """Report progress on stderr (stdout carries only the figures)."""
    print(f"[rollout] {msg}", file=sys.stderr, flush=True)


def run_build_models(out: str) -> None:
    """Train v1 and a retrained v2 of the same MLP; write v1.tflite and v2.tflite to ``out``."""
    from testkit import model_factory

    tf = model_factory._tf()
    x, y = model_factory.make_blobs()
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    def save(name: str, model: Any) -> None:
        data = model_factory.to_int8(model, x[:200])
        (target / f"{name}.tflite.tmp").write_bytes(data)
        (target / f"{name}.tflite.tmp").rename(target / f"{name}.tflite")

    for name, seed, epochs in (("v1", 0, 3), ("v2", 1, 5)):
        tf.keras.utils.set_random_seed(seed)
        model = tf.keras.Sequential([
            tf.keras.Input((16,)),
            tf.keras.layers.Dense(HIDDEN, activation="relu"),
            tf.keras.layers.Dense(4, activation="softmax"),
        ])  # fmt: skip
        model.compile(optimizer=tf.keras.optimizers.Adam(0.01),
                      loss="sparse_categorical_crossentropy")
        model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
        save(name, model)
    # v3: v2 with only its head fine-tuned (the hidden layer frozen), the common small update.
    model.layers[0].trainable = False
    model.compile(optimizer=tf.keras.optimizers.Adam(0.001),
                  loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    save("v3", model)


def models() -> tuple[bytes, bytes, bytes]:
    """Return (v1, v2, v3) .tflite bytes, building them once (cached in the temp folder)."""
    paths = [MODEL_CACHE / "v1.tflite", MODEL_CACHE / "v2.tflite", MODEL_CACHE / "v3.tflite"]
    if not all(p.exists() for p in paths):
        started = time.monotonic()
        subprocess.run([sys.executable, str(ENTRY), "--role", "build-models", str(MODEL_CACHE)],
                       cwd=ROOT, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                       stdout=subprocess.DEVNULL)
        log(f"trained and converted the models in {time.monotonic() - started:.1f} s")
    else:
        log(f"models from cache {MODEL_CACHE}")
    v1, v2, v3 = (p.read_bytes() for p in paths)
    return v1, v2, v3
