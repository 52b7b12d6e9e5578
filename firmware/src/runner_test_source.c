/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TEST SOURCE runner, a unit-test fake: runs no model. For builds without TensorFlow Lite Micro it "loads" any
 * flatbuffer with the TFLite identifier ("TFL3" at offset 4) and produces deterministic
 * synthetic inferences seeded from the model's bytes, so the device loop, events and OTA
 * trial can be exercised on the host (and in the QEMU image built for the OTA test vectors,
 * whose models are synthetic). A model whose bytes 8..11 are "FAIL" loads but fails every
 * inference (to exercise a failed trial and the revert). Its "input tensor" is 16 bytes and
 * invoke_raw() answers 4 deterministic bytes per call (FNV-1a of the model seed and the input).
 */
#include <string.h>

#include "tml/config.h"
#include "tml/runner.h"

typedef struct {
    uint32_t state;
    uint32_t seed; /* the model's: invoke_raw() depends on it and the input only */
    uint16_t labels;
    bool loaded, failing;
} source_t;

static source_t source;

static tml_status_t load(tml_model_runner_t *r, const uint8_t *model, size_t len)
{
    source_t *s = r->ctx;
    if (len < 12 || memcmp(model + 4, "TFL3", 4) != 0) {
        return TML_ERR_MALFORMED;
    }
    uint32_t h = 2166136261UL; /* FNV-1a over the first 64 bytes: a seed per model */
    for (size_t i = 0; i < len && i < 64; i++) {
        h = (h ^ model[i]) * 16777619UL;
    }
    s->state = h | 1;
    s->seed = s->state;
    s->labels = (uint16_t)(4 + h % 7);
    s->failing = memcmp(model + 8, "FAIL", 4) == 0;
    s->loaded = true;
    return TML_OK;
}

static tml_status_t infer(tml_model_runner_t *r, tml_inference_t *out)
{
    source_t *s = r->ctx;
    if (!s->loaded || s->failing) {
        return TML_ERR_STATE;
    }
    s->state = s->state * 1664525UL + 1013904223UL; /* numerical recipes LCG */
    uint32_t x = s->state >> 8;
    out->label = (uint16_t)(x % s->labels);
    out->score = (uint8_t)(128 + (x >> 4) % 128);
    out->latency_100us = 50 + (x >> 12) % 150;
    return TML_OK;
}

static void unload(tml_model_runner_t *r)
{
    ((source_t *)r->ctx)->loaded = false;
}

#define FAKE_INPUT_BYTES 16
#define FAKE_OUTPUT_BYTES 4

static size_t input_bytes(tml_model_runner_t *r)
{
    return ((source_t *)r->ctx)->loaded ? FAKE_INPUT_BYTES : 0;
}

static tml_status_t invoke_raw(tml_model_runner_t *r, const uint8_t *input, size_t len,
                               uint8_t *output, size_t cap, size_t *out_len)
{
    source_t *s = r->ctx;
    if (!s->loaded || s->failing) {
        return TML_ERR_STATE;
    }
    if (len != FAKE_INPUT_BYTES || cap < FAKE_OUTPUT_BYTES) {
        return TML_ERR_MALFORMED;
    }
    uint32_t h = s->seed; /* same model and input, same output */
    for (size_t i = 0; i < len; i++) {
        h = (h ^ input[i]) * 16777619UL;
    }
    for (size_t i = 0; i < FAKE_OUTPUT_BYTES; i++) {
        output[i] = (uint8_t)(h >> (8 * i));
    }
    *out_len = FAKE_OUTPUT_BYTES;
    return TML_OK;
}

tml_model_runner_t *tml_runner_test_source(void)
{
    static tml_model_runner_t runner;
    runner = (tml_model_runner_t){
        .name = "test-source",
        .tflm_version = "test-source",
        .arena_bytes = TML_ARENA_BYTES,
        .ops = tml_registered_ops,
        .op_count = 0,
        .load = load,
        .infer = infer,
        .unload = unload,
        .input_bytes = input_bytes,
        .invoke_raw = invoke_raw,
        .ctx = &source,
    };
    runner.op_count = tml_registered_op_count;
    return &runner;
}
