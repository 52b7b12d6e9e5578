// SPDX-License-Identifier: Apache-2.0
//
// The TFLM model runner: tflite::MicroInterpreter over the model in the active slot, read in
// place from flash (never copied), with a MicroMutableOpResolver that registers exactly the ops
// of tml/ops.h (the list the status reports as a capability). No heap: the resolver and the
// interpreter are placement-constructed in static storage and the tensor arena is
// TML_ARENA_BYTES of static RAM. infer() quantizes the port's sensor samples into input
// tensor 0 and reports output tensor 0's top-1 class; invoke_raw() runs given raw bytes.
// TFLM's DebugLog goes to tml_platform_log() (never to the UART, which carries the link), its
// format string unformatted: TFLM's own DebugLog formats with vsnprintf, which would bring
// newlib's stdio and malloc into a firmware that has no heap.

#include <new>
#include <string.h>

#include "tensorflow/lite/micro/debug_log.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

extern "C" {
#include "tml/config.h"
#include "tml/messages.h"
#include "tml/ops.h"
#include "tml/platform.h"
#include "tml/runner.h"
}

#ifndef TML_TFLM_VERSION
#define TML_TFLM_VERSION "tflite-micro"
#endif
TML_STATIC_ASSERT(sizeof(TML_TFLM_VERSION) - 1 <= TML_TFLM_VERSION_MAX_BYTES,
                  "the status bound (messages.h) assumes a shorter tflm_version");

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

// Quantize the sensor's samples (-128..127 read as 0..1) into input tensor 0.
tml_status_t fill_input(TfLiteTensor *input)
{
    size_t count = input->type == kTfLiteFloat32 ? input->bytes / 4 : input->bytes;
    if (input->type != kTfLiteInt8 && input->type != kTfLiteUInt8 &&
        input->type != kTfLiteFloat32) {
        return TML_ERR_STATE;
    }
    int8_t samples[64];
    for (size_t done = 0; done < count;) {
        size_t n = count - done < sizeof(samples) ? count - done : sizeof(samples);
        tml_platform_sensor_read(samples, n);
        for (size_t i = 0; i < n; i++, done++) {
            float real = (samples[i] + 128) / 255.0f;
            if (input->type == kTfLiteFloat32) {
                input->data.f[done] = real;
                continue;
            }
            float q = real / input->params.scale + input->params.zero_point;
            int lo = input->type == kTfLiteInt8 ? -128 : 0;
            int v = static_cast<int>(q + (q < 0 ? -0.5f : 0.5f));
            v = v < lo ? lo : v > lo + 255 ? lo + 255 : v;
            input->data.uint8[done] = static_cast<uint8_t>(v);
        }
    }
    return TML_OK;
}

// Top-1 of output tensor 0; the score is the raw quantized value as 0..255 (int8 + 128), or a
// float output's value times 255, clamped.
tml_status_t top1(const TfLiteTensor *output, tml_inference_t *out)
{
    size_t count = output->type == kTfLiteFloat32 ? output->bytes / 4 : output->bytes;
    int best = -1, best_i = 0;
    for (size_t i = 0; i < count; i++) {
        int v;
        if (output->type == kTfLiteInt8) {
            v = output->data.int8[i] + 128;
        } else if (output->type == kTfLiteUInt8) {
            v = output->data.uint8[i];
        } else if (output->type == kTfLiteFloat32) {
            float f = output->data.f[i] * 255.0f + 0.5f;
            v = f < 0 ? 0 : f > 255 ? 255 : static_cast<int>(f);
        } else {
            return TML_ERR_STATE;
        }
        if (v > best) {
            best = v;
            best_i = static_cast<int>(i);
        }
    }
    out->label = static_cast<uint16_t>(best_i);
    out->score = static_cast<uint8_t>(best < 0 ? 0 : best);
    return TML_OK;
}

tml_status_t infer(tml_model_runner_t *, tml_inference_t *out)
{
    if (interpreter == nullptr) {
        return TML_ERR_STATE;
    }
    tml_status_t st = fill_input(interpreter->input(0));
    if (st != TML_OK) {
        return st;
    }
    uint32_t start = tml_platform_micros();
    if (interpreter->Invoke() != kTfLiteOk) {
        return TML_ERR_STATE;
    }
    uint32_t elapsed_us = tml_platform_micros() - start;
    out->latency_100us = (elapsed_us + 50) / 100;
    return top1(interpreter->output(0), out);
}

void unload(tml_model_runner_t *)
{
    release();
}

size_t input_bytes(tml_model_runner_t *)
{
    return interpreter == nullptr ? 0 : interpreter->input(0)->bytes;
}

tml_status_t invoke_raw(tml_model_runner_t *, const uint8_t *input, size_t len, uint8_t *output,
                        size_t cap, size_t *out_len)
{
    if (interpreter == nullptr) {
        return TML_ERR_STATE;
    }
    TfLiteTensor *in = interpreter->input(0);
    if (len != in->bytes) {
        return TML_ERR_MALFORMED;
    }
    memcpy(in->data.raw, input, len);
    if (interpreter->Invoke() != kTfLiteOk) {
        return TML_ERR_STATE;
    }
    const TfLiteTensor *result = interpreter->output(0);
    if (result->bytes > cap) {
        return TML_ERR_MALFORMED;
    }
    memcpy(output, result->data.raw, result->bytes);
    *out_len = result->bytes;
    return TML_OK;
}

}  // namespace

extern "C" tml_model_runner_t *tml_runner_tflm(void)
{
    static tml_model_runner_t runner = {
        "tflm", TML_TFLM_VERSION, TML_ARENA_BYTES, tml_registered_ops, tml_registered_op_count,
        load, infer, unload, input_bytes, invoke_raw, nullptr,
    };
    return &runner;
}

// TFLM's log sink (tensorflow/lite/micro/debug_log.h): the message's format string, as is.
extern "C" void DebugLog(const char *format, va_list)
{
    tml_platform_log(format);
}

extern "C" int DebugVsnprintf(char *buffer, size_t size, const char *format, va_list)
{
    size_t n = strlen(format);
    if (size > 0) {
        size_t copy = n < size - 1 ? n : size - 1;
        memcpy(buffer, format, copy);
        buffer[copy] = 0;
    }
    return static_cast<int>(n);
}

// A failed assert() in TFLM or flatbuffers (newlib's would bring fprintf): log it and restart;
// a trial in progress then reverts at boot.
extern "C" void __assert_func(const char *, int, const char *, const char *expr)
{
    tml_platform_log("assertion failed:");
    tml_platform_log(expr);
    tml_platform_reboot();
    for (;;) {
    }
}

// The C++ runtime TFLM needs without libstdc++: objects are never deleted (no heap) and no pure
// virtual function is ever called.
void operator delete(void *) noexcept {}
void operator delete(void *, size_t) noexcept {}
extern "C" void __cxa_pure_virtual(void)
{
    for (;;) {
    }
}
