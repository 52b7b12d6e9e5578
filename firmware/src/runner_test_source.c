/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TEST SOURCE runner: runs no model. For builds without TensorFlow Lite Micro it "loads" any
 * flatbuffer with the TFLite identifier ("TFL3" at offset 4) and produces deterministic
 * synthetic inferences seeded from the model's bytes, so the device loop, events and OTA
 * trial can be exercised on the host and in QEMU. A model whose bytes 8..11 are "FAIL" loads
 * but fails every inference (to exercise a failed trial and the revert).
 */
#include <string.h>

#include "tml/config.h"
#include "tml/runner.h"

typedef struct {
    uint32_t state;
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
        .ctx = &source,
    };
    runner.op_count = tml_registered_op_count;
    return &runner;
}
