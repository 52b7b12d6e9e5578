/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TEST SOURCE runner, a unit-test fake: runs no model. For builds without TensorFlow Lite Micro it "loads" any
 * flatbuffer with the TFLite identifier ("TFL3" at offset 4) and produces deterministic
 * synthetic inferences seeded from the model's bytes, so the device loop, events and OTA
 * trial can be exercised on the host and in QEMU. A model whose bytes 8..11 are "FAIL" loads
 * but fails every inference (to exercise a failed trial and the revert).
 *
 * Raw invocations (the golden-input trial) follow a rule tests/vectors/generate.py mirrors
 * (test_source_invoke), so vectors can hold matching and mismatching expectations: with h the
 * FNV-1a of the first 64 model bytes, input tensor 0 is 24 + h % 72 bytes and output tensor 0
 * is `labels` bytes; acc starts at h, takes every input byte as acc = (acc ^ b) * 16777619,
 * then output byte j is acc >> 24 after acc = (acc ^ j) * 16777619. TML_TEST_SOURCE_RAW=0
 * leaves them out (input_bytes and invoke_raw NULL): the Cortex-M image, which meets real
 * servers whose key 15 holds a real model's outputs, then runs the legacy trial.
 */
#include <string.h>

#include "tml/config.h"
#include "tml/runner.h"

#ifndef TML_TEST_SOURCE_RAW
#define TML_TEST_SOURCE_RAW 1
#endif

typedef struct {
    uint32_t state;
#if TML_TEST_SOURCE_RAW
    uint32_t seed;
#endif
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
#if TML_TEST_SOURCE_RAW
    s->seed = h;
#endif
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

#if TML_TEST_SOURCE_RAW
static size_t input_bytes(tml_model_runner_t *r)
{
    source_t *s = r->ctx;
    return s->loaded ? 24 + s->seed % 72 : 0;
}

static tml_status_t invoke_raw(tml_model_runner_t *r, const uint8_t *input, size_t len,
                               uint8_t *output, size_t cap, size_t *out_len)
{
    source_t *s = r->ctx;
    uint32_t acc = s->seed;
    if (!s->loaded || s->failing) {
        return TML_ERR_STATE;
    }
    if (len != input_bytes(r) || cap < s->labels) {
        return TML_ERR_MALFORMED;
    }
    for (size_t i = 0; i < len; i++) {
        acc = (acc ^ input[i]) * 16777619UL;
    }
    for (uint16_t j = 0; j < s->labels; j++) {
        acc = (acc ^ j) * 16777619UL;
        output[j] = (uint8_t)(acc >> 24);
    }
    *out_len = s->labels;
    return TML_OK;
}
#endif

static void unload(tml_model_runner_t *r)
{
    ((source_t *)r->ctx)->loaded = false;
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
#if TML_TEST_SOURCE_RAW
        .input_bytes = input_bytes,
        .invoke_raw = invoke_raw,
#endif
        .ctx = &source,
    };
    runner.op_count = tml_registered_op_count;
    return &runner;
}
