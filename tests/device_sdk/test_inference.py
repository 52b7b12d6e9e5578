"""Real TFLM inference on real int8 models: events from the dequantized softmax, a synthetic
stream the model classifies, a drift knob that moves the label mix, one shared interpreter."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from device_sdk.inference import (
    SensorStream,
    TflmModel,
    host_capabilities,
    model_ops,
    parse_mix,
)
from device_sdk.protocol.events import EventBatch, decode_batch, encode_batch
from device_sdk.protocol.status import parse_capabilities


@pytest.fixture(scope="module")
def model(dense_model: bytes) -> TflmModel:
    return TflmModel(dense_model, package_id=7)


def label_shares(stream: SensorStream, n: int) -> np.ndarray:
    labels = [stream.infer().label for _ in range(n)]
    return np.bincount(labels, minlength=stream.model.num_classes) / n


def test_the_model_is_read_from_its_tensors(model: TflmModel) -> None:
    assert model.input_shape == (1, 16)
    assert model.input_dtype == np.int8
    assert model.num_classes == 4
    assert model.ops == ["FULLY_CONNECTED", "SOFTMAX"]
    assert model_ops(model.model_bytes) == model.ops


def test_inputs_are_quantized_with_the_input_scale_and_zero_point(model: TflmModel) -> None:
    lo, hi = model.input_range()
    q = model.quantize(np.array([lo, hi, (lo + hi) / 2, hi * 10]))
    assert q.dtype == np.int8
    assert list(q) == [-128, 127, 0, 127]  # midpoint of [-128, 127] rounds to 0; clipped above
    expected = np.rint(0.5 / model.input_scale) + model.input_zero_point
    assert model.quantize(np.array([0.5]))[0] == expected


def test_an_inference_gives_argmax_label_softmax_score_and_latency(model: TflmModel) -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        x = model.quantize(rng.uniform(*model.input_range(), size=(1, 16)))
        result = model.infer(x)
        assert abs(result.probabilities.sum() - 1.0) < 0.05  # int8 softmax, 1/256 steps
        assert result.label == int(np.argmax(result.probabilities))
        assert result.score == round(result.probabilities[result.label] * 255)
        assert 0 <= result.score <= 255 and result.latency_100us >= 0


def test_latency_is_measured_and_can_be_scaled_to_a_slower_mcu(dense_model: bytes) -> None:
    slow = TflmModel(dense_model, latency_scale=10_000.0)  # microseconds become 10s of ms
    x = np.zeros((1, 16), dtype=np.int8)
    latencies = [slow.infer(x).latency_100us for _ in range(20)]
    assert min(latencies) > 0


def test_the_stream_produces_inputs_the_model_puts_in_the_drawn_class(model: TflmModel) -> None:
    stream = SensorStream(model, seed=1)
    hits = 0
    for _ in range(400):
        drawn, x = stream.sample()
        assert x.dtype == np.int8 and x.shape == (1, 16)
        hits += model.infer(x).label == drawn
    assert hits / 400 >= 0.8


def test_drift_changes_the_label_mix_measurably(model: TflmModel) -> None:
    stream = SensorStream(model, seed=2)
    before = label_shares(stream, 2000)
    assert before.max() - before.min() < 0.15  # about uniform
    stream.set_mix([0.85, 0.05, 0.05, 0.05])
    after = label_shares(stream, 2000)
    assert after[0] - before[0] > 0.4
    assert np.abs(after - before).sum() > 0.8  # total variation distance > 0.4


def test_events_from_the_stream_encode_into_a_valid_batch(model: TflmModel) -> None:
    stream = SensorStream(model, seed=3)
    events = [stream.infer(t_ms=1_717_000_000_000 + 1000 * i) for i in range(32)]
    batch = EventBatch.of(1, model.package_id, events)
    assert decode_batch(encode_batch(batch)) == batch


def test_one_interpreter_is_safe_to_share_between_threads(model: TflmModel) -> None:
    """Concurrent devices get the same answers as one device alone: no torn tensors."""
    rng = np.random.default_rng(5)
    inputs = [model.quantize(rng.uniform(*model.input_range(), size=(1, 16))) for _ in range(50)]
    expected = [model.infer(x).probabilities for x in inputs]
    mismatches: list[int] = []

    def device() -> None:
        for _ in range(20):
            for i, x in enumerate(inputs):
                if not np.array_equal(model.infer(x).probabilities, expected[i]):
                    mismatches.append(i)

    threads = [threading.Thread(target=device) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert mismatches == []


def test_the_stream_matches_an_image_model_shape(conv_model: bytes) -> None:
    model = TflmModel(conv_model)
    assert model.input_shape == (1, 32, 32, 1)
    stream = SensorStream(model, seed=4)
    _, x = stream.sample()
    assert x.shape == (1, 32, 32, 1) and x.dtype == np.int8
    assert 0 <= stream.infer().label < model.num_classes


def test_host_capabilities_include_the_model_ops_and_pass_the_status_checks(
    model: TflmModel,
) -> None:
    caps = host_capabilities(model, slot_bytes=512 * 1024)
    assert {"FULLY_CONNECTED", "SOFTMAX"} <= set(caps.ops)
    assert caps.pointer_bits == 64 and caps.arena_bytes == model.arena_bytes
    fields = {name: getattr(caps, name) for name in caps.__slots__}
    assert parse_capabilities(fields) == caps


@pytest.mark.parametrize("text", ["", "1,2,3,4,5", "-1,1", "0,0"])
def test_a_bad_label_mix_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_mix(text, 4)


def test_a_short_label_mix_leaves_the_other_classes_out() -> None:
    assert list(parse_mix("3,1", 4)) == [0.75, 0.25, 0.0, 0.0]
