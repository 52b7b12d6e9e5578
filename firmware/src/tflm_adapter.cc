// SPDX-License-Identifier: Apache-2.0
//
// The TFLM model runner: tflite::MicroInterpreter over a model in flash, with a
// MicroMutableOpResolver that registers exactly the ops of tml/ops.h (the list the status
// reports as a capability). Compiled only when the build is given TFLM_DIR (make tflm).
// No heap: the resolver and interpreter are placement-constructed in static storage and the
// tensor arena is TML_ARENA_BYTES of static RAM.

#include <new>

#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

extern "C" {
#include "tml/config.h"
#include "tml/ops.h"
#include "tml/platform.h"
#include "tml/runner.h"
}

namespace {

#define TML_COUNT_OP(name, method) +1
constexpr unsigned kOpCount = 0 TML_OPS(TML_COUNT_OP);
#undef TML_COUNT_OP

using Resolver = tflite::MicroMutableOpResolver<kOpCount>;

alignas(16) uint8_t arena[TML_ARENA_BYTES];
alignas(Resolver) uint8_t resolver_storage[sizeof(Resolver)];
alignas(tflite::MicroInterpreter) uint8_t interpreter_storage[sizeof(tflite::MicroInterpreter)];
Resolver *resolver = nullptr;
tflite::MicroInterpreter *interpreter = nullptr;
uint32_t input_state = 1;

void release()
{
    if (interpreter != nullptr) {
        interpreter->~MicroInterpreter();
        interpreter = nullptr;
    }
}

tml_status_t load(tml_model_runner_t *, const uint8_t *model, size_t len)
{
    release();
    flatbuffers::Verifier verifier(model, len);
    if (!tflite::VerifyModelBuffer(verifier)) {
        return TML_ERR_MALFORMED;
    }
    const tflite::Model *m = tflite::GetModel(model);
    if (m->version() != TFLITE_SCHEMA_VERSION) {
        return TML_ERR_MALFORMED;
    }
    if (resolver == nullptr) {
        resolver = new (resolver_storage) Resolver();
#define TML_REGISTER_OP(name, method) resolver->method();
        TML_OPS(TML_REGISTER_OP)
#undef TML_REGISTER_OP
    }
    interpreter = new (interpreter_storage) tflite::MicroInterpreter(m, *resolver, arena,
                                                                      sizeof(arena));
    if (interpreter->AllocateTensors() != kTfLiteOk || interpreter->inputs_size() < 1 ||
        interpreter->outputs_size() < 1) {
        release();
        return TML_ERR_MALFORMED;
    }
    return TML_OK;
}

// Fill the input with the next synthetic sample: this port has no sensor; a product replaces
// this with its feature pipeline.
void fill_input(TfLiteTensor *input)
{
    for (size_t i = 0; i < input->bytes; i++) {
        input_state = input_state * 1664525U + 1013904223U;
        input->data.uint8[i] = static_cast<uint8_t>(input_state >> 24);
    }
}

tml_status_t infer(tml_model_runner_t *, tml_inference_t *out)
{
    if (interpreter == nullptr) {
        return TML_ERR_STATE;
    }
    fill_input(interpreter->input(0));
    uint32_t start = tml_platform_millis();
    if (interpreter->Invoke() != kTfLiteOk) {
        return TML_ERR_STATE;
    }
    uint32_t elapsed_ms = tml_platform_millis() - start;
    const TfLiteTensor *output = interpreter->output(0);
    size_t count = output->type == kTfLiteFloat32 ? output->bytes / 4 : output->bytes;
    float best = -1e30f;
    size_t best_i = 0;
    for (size_t i = 0; i < count; i++) {
        float p;
        if (output->type == kTfLiteInt8) {
            p = (output->data.int8[i] - output->params.zero_point) * output->params.scale;
        } else if (output->type == kTfLiteUInt8) {
            p = (output->data.uint8[i] - output->params.zero_point) * output->params.scale;
        } else if (output->type == kTfLiteFloat32) {
            p = output->data.f[i];
        } else {
            return TML_ERR_STATE;
        }
        if (p > best) {
            best = p;
            best_i = i;
        }
    }
    float score = best < 0 ? 0 : best > 1 ? 255 : best * 255.0f + 0.5f;
    out->label = static_cast<uint16_t>(best_i);
    out->score = static_cast<uint8_t>(score);
    out->latency_100us = elapsed_ms * 10;
    return TML_OK;
}

void unload(tml_model_runner_t *)
{
    release();
}

}  // namespace

extern "C" tml_model_runner_t *tml_runner_tflm(void)
{
    static tml_model_runner_t runner = {
        "tflm", "tflite-micro", TML_ARENA_BYTES, tml_registered_ops, tml_registered_op_count,
        load, infer, unload, nullptr,
    };
    return &runner;
}
