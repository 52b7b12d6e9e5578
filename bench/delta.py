"""Measure transfer sizes of real int8 .tflite models: compressed, and delta after retraining.

Builds a small convolutional classifier with TensorFlow, converts it to a full-int8 .tflite
with a fixed random representative set, then:

(a) fine-tunes only the dense head (convolutions frozen) and converts again with the same
    representative data: the delta against the first model should be a few percent;
(b) retrains the same architecture from another initialisation: the delta then holds
    almost nothing to copy, and ``choose_encoding`` must not pick it unless it is smaller.

Every transfer is streamed through the device-side ``TransferDecoder`` to check it installs
the exact bytes. Prints one JSON object per figure at the end (bench/README convention):
``{"metric", "value", "unit", "baseline", "ratio"}``.

Run: ``.venv/bin/python bench/delta.py [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from device_sdk.protocol.manifest import Encoding, Manifest
from device_sdk.protocol.transfer import TransferDecoder, choose_encoding, encode_transfer

INPUT_SHAPE = (32, 32, 1)
CLASSES = 10


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to fd 1 (TensorFlow's C++ logs too) to stderr meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return images whose class decides where a bright blob sits, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, size=n)
    x = rng.normal(0, 0.3, size=(n, *INPUT_SHAPE)).astype("float32")
    for i, label in enumerate(y):
        r, c = divmod(int(label), 4)
        x[i, 4 + 7 * r : 10 + 7 * r, 3 + 7 * c : 9 + 7 * c, 0] += 1.5
    return x, y


def build(tf: Any, seed: int, widths: tuple[int, ...]) -> Any:
    """Return a compiled conv net: conv blocks of ``widths``, global pooling, a dense head."""
    tf.keras.utils.set_random_seed(seed)
    layers = tf.keras.layers
    stack: list[Any] = [layers.Input(INPUT_SHAPE)]
    for i, width in enumerate(widths):
        stack.append(layers.Conv2D(width, 3, activation="relu", padding="same"))
        if i < len(widths) - 1:
            stack.append(layers.MaxPooling2D())
    stack += [
        layers.GlobalAveragePooling2D(),
        layers.Dense(32, activation="relu"),
        layers.Dense(CLASSES),
    ]
    model = tf.keras.Sequential(stack)
    compile_model(tf, model)
    return model


def compile_model(tf: Any, model: Any, learning_rate: float = 1e-3) -> None:
    """Compile for integer labels and logits."""
    model.compile(
        tf.keras.optimizers.Adam(learning_rate),
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


def to_int8(tf: Any, model: Any, representative: np.ndarray) -> bytes:
    """Convert to a full-integer .tflite (int8 in and out) calibrated on ``representative``."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: (
        [representative[i : i + 1]] for i in range(len(representative))
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def make_models(quick: bool) -> tuple[bytes, bytes, bytes]:
    """Return the base, head fine-tuned and fully retrained .tflite bytes."""
    with stdout_to_stderr():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf  # slow to import: only this benchmark needs it

        widths = (16, 32, 64, 64) if quick else (32, 64, 96, 128)
        epochs = 2 if quick else 4
        x, y = make_data(512 if quick else 2048, seed=0)
        representative = make_data(32, seed=1)[0]
        base_model = build(tf, seed=1, widths=widths)
        base_model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
        base = to_int8(tf, base_model, representative)
        if to_int8(tf, base_model, representative) != base:
            print("warning: conversion is not deterministic", file=sys.stderr)
        for layer in base_model.layers:
            layer.trainable = isinstance(layer, tf.keras.layers.Dense)
        compile_model(tf, base_model, learning_rate=1e-3)
        base_model.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0)  # 4 steps
        head = to_int8(tf, base_model, representative)
        other = build(tf, seed=2, widths=widths)
        other.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
        retrained = to_int8(tf, other, representative)
    return base, head, retrained


def install(model: bytes, encoding: Encoding, transfer: bytes, base: bytes) -> int:
    """Stream ``transfer`` through the device decoder in 1 KB chunks; return peak state bytes."""
    digest = hashlib.sha256
    manifest = Manifest(
        sequence=1,
        model_name="bench",
        model_version="1",
        hardware_profile="bench",
        model_sha256=digest(model).digest(),
        model_size=len(model),
        encoding=encoding,
        transfer_sha256=digest(transfer).digest(),
        transfer_size=len(transfer),
        arena_bytes=0,
        expires_at=2**32,
        package_id=1,
        base_sha256=digest(base).digest() if encoding == Encoding.DELTA else None,
    )
    decoder = TransferDecoder(manifest, base)
    out = bytearray()
    peak = 0
    for i in range(0, len(transfer), 1024):
        out += decoder.feed(transfer[i : i + 1024])
        peak = max(peak, decoder.state_bytes())
    out += decoder.finish()
    if bytes(out) != model:
        raise SystemExit(f"{encoding.name} transfer did not reproduce the model")
    return peak


def figure(metric: str, value: float, unit: str, baseline: float) -> dict[str, Any]:
    """Return one result line's object."""
    ratio = round(value / baseline, 4) if baseline else None
    return {"metric": metric, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio}


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller model, fewer epochs")
    args = parser.parse_args()
    base, head, retrained = make_models(args.quick)

    start = time.perf_counter()
    compressed = encode_transfer(base, Encoding.COMPRESSED)
    compress_seconds = time.perf_counter() - start
    start = time.perf_counter()
    zlib_bytes = len(zlib.compress(base, 9))
    zlib_seconds = time.perf_counter() - start
    start = time.perf_counter()
    head_delta = encode_transfer(head, Encoding.DELTA, base)
    delta_seconds = time.perf_counter() - start
    head_choice, _ = choose_encoding(head, base)
    retrain_delta = encode_transfer(retrained, Encoding.DELTA, base)
    retrain_compressed = encode_transfer(retrained, Encoding.COMPRESSED)
    retrain_choice, retrain_transfer = choose_encoding(retrained, base)
    smallest = min(
        (len(retrained), Encoding.RAW),
        (len(retrain_compressed), Encoding.COMPRESSED),
        (len(retrain_delta), Encoding.DELTA),
    )[1]
    peak = max(
        install(base, Encoding.COMPRESSED, compressed, b""),
        install(head, Encoding.DELTA, head_delta, base),
        install(retrained, retrain_choice, retrain_transfer, base),
    )
    changed = sum(a != b for a, b in zip(base, head, strict=False)) + abs(len(base) - len(head))

    figures = [
        figure("model_bytes", len(base), "bytes", len(base)),
        figure("compressed_bytes", len(compressed), "bytes", len(base)),
        figure("compressed_vs_zlib9_bytes", len(compressed), "bytes", zlib_bytes),
        figure("compress_seconds", round(compress_seconds, 3), "s", round(zlib_seconds, 4)),
        figure("head_finetune_changed_bytes", changed, "bytes", len(base)),
        figure("delta_bytes_head_finetune", len(head_delta), "bytes", len(head)),
        figure(
            "delta_encode_seconds_head_finetune",
            round(delta_seconds, 3),
            "s",
            round(compress_seconds, 3),
        ),
        figure("chose_delta_head_finetune", int(head_choice == Encoding.DELTA), "bool", 1),
        figure("delta_bytes_full_retrain", len(retrain_delta), "bytes", len(retrained)),
        figure(
            "delta_vs_compressed_full_retrain", len(retrain_delta), "bytes", len(retrain_compressed)
        ),
        figure(
            "chosen_bytes_full_retrain",
            len(retrain_transfer),
            "bytes",
            min(len(retrained), len(retrain_compressed), len(retrain_delta)),
        ),
        figure(
            "chose_delta_full_retrain",
            int(retrain_choice == Encoding.DELTA),
            "bool",
            int(smallest == Encoding.DELTA),
        ),
        figure("decoder_peak_state_bytes", peak, "bytes", 4096),
    ]
    for item in figures:
        print(json.dumps(item))


if __name__ == "__main__":
    main()
