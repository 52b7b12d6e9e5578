"""Train the demo's small classifier with TensorFlow (demo seeding only; imported lazily).

A 4-class "gesture" classifier over 16 IMU features, trained on synthetic class-conditional
data: small enough to train in seconds, real enough to run in TFLM on every simulated device.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

LABELS = ["idle", "wave", "tap", "shake"]
FEATURES = 16


def synthetic_data(n: int = 1200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return features in [0, 1] drawn around one fixed centre per class, and labels."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).uniform(0.2, 0.8, size=(len(LABELS), FEATURES))
    y = rng.integers(0, len(LABELS), size=n)
    x = centres[y] + rng.normal(0, 0.08, size=(n, FEATURES))
    return np.clip(x, 0, 1).astype(np.float32), y.astype(np.int64)


def train_keras_model(directory: Path, *, hidden: int = 24, epochs: int = 30,
                      seed: int = 0) -> tuple[bytes, bytes]:
    """Train the classifier; return (.keras bytes, .npz data set bytes with x and y)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    x, y = synthetic_data(seed=seed)
    model = tf.keras.Sequential([
        tf.keras.Input((FEATURES,)),
        tf.keras.layers.Dense(hidden, activation="relu"),
        tf.keras.layers.Dense(len(LABELS), activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"gesture-{hidden}-{seed}.keras"
    model.save(path)
    buf = io.BytesIO()
    np.savez(buf, x=x[:300], y=y[:300])
    return path.read_bytes(), buf.getvalue()
