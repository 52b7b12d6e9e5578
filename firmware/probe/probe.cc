// SPDX-License-Identifier: Apache-2.0
//
// The arena probe: one TFLM run under QEMU that tells whether a model fits a given arena on this
// board's core and kernel set. The semihosting command line (QEMU -semihosting-config
// enable=on,target=native,arg=...; read with SYS_GET_CMDLINE) holds key=value words:
//
//   model=PATH      the .tflite file (read into RAM through semihosting SYS_OPEN/SYS_READ)
//   arena=N         the arena's size in bytes (16-aligned start)
//   invoke=K        run Invoke K times after AllocateTensors (default 0; inputs are zeros)
//   inputs=PATH     raw bytes of N input tensors 0 (N = file size / input bytes): each is run
//   outputs=PATH    ... and output tensor 0's raw bytes of each run are written here
//   watchdog=MS     guest milliseconds before the SysTick watchdog ends the run (default 5000)
//
// It prints one line, "probe: ok arena=N used=U in=I out=O invokes=K" or "probe: fail <what>",
// and exits with a code of probe.h. The resolver registers exactly the ops of tml/ops.h, as
// the firmware does.

#include <new>
#include <stdio.h>
#include <string.h>

#include "tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

#include "probe.h"
extern "C" {
#include "semihost.h"
#include "tml/ops.h"
}

namespace {

#define TML_COUNT_OP(name, method) +1
constexpr unsigned kOpCount = 0 TML_OPS(TML_COUNT_OP);
#undef TML_COUNT_OP
using Resolver = tflite::MicroMutableOpResolver<kOpCount>;

char cmdline[1024];

// Return the value of key=... in the command line (NUL-terminated in place), or nullptr.
const char *arg(char *words, const char *key)
{
    size_t n = strlen(key);
    for (char *p = words; *p;) {
        while (*p == ' ') {
            p++;
        }
        char *end = p;
        while (*end && *end != ' ') {
            end++;
        }
        if (strncmp(p, key, n) == 0 && p[n] == '=') {
            return p + n + 1;
        }
        p = end;
    }
    return nullptr;
}

// Copy one word's value (up to a space) into out.
bool word(const char *value, char *out, size_t cap)
{
    size_t i = 0;
    for (; value && value[i] && value[i] != ' '; i++) {
        if (i + 1 >= cap) {
            return false;
        }
        out[i] = value[i];
    }
    out[i] = 0;
    return value != nullptr && i > 0;
}

uint32_t number(const char *value, uint32_t otherwise)
{
    if (value == nullptr) {
        return otherwise;
    }
    uint32_t v = 0;
    for (; *value >= '0' && *value <= '9'; value++) {
        v = v * 10 + static_cast<uint32_t>(*value - '0');
    }
    return v;
}

int open_file(const char *path, uint32_t mode)
{
    uint32_t block[3] = {reinterpret_cast<uint32_t>(path), mode, strlen(path)};
    return tml_semihost_call(TML_SH_OPEN, block);
}

// Read a whole file into buf; return its length, or -1.
int32_t read_file(const char *path, uint8_t *buf, size_t cap)
{
    int fd = open_file(path, 1 /* "rb" */);
    if (fd < 0) {
        return -1;
    }
    uint32_t h = static_cast<uint32_t>(fd);
    int32_t len = tml_semihost_call(TML_SH_FLEN, &h);
    int32_t result = -1;
    if (len >= 0 && static_cast<size_t>(len) <= cap) {
        uint32_t block[3] = {h, reinterpret_cast<uint32_t>(buf), static_cast<uint32_t>(len)};
        result = tml_semihost_call(TML_SH_READ, block) == 0 ? len : -1;  // 0: nothing left
    }
    tml_semihost_call(TML_SH_CLOSE, &h);
    return result;
}

void log_line(const char *s)
{
    if (strspn(s, " \r\n") == strlen(s)) {
        return;  // TFLM ends each message with a separate "\r\n"
    }
    tml_semihost_print("probe: tflm: ");
    tml_semihost_print(s);
    tml_semihost_print("\n");
}

int fail(const char *what, int code)
{
    char line[96];
    snprintf(line, sizeof(line), "probe: fail %s\n", what);
    tml_semihost_print(line);
    return code;
}

}  // namespace

extern "C" void tml_probe_print(const char *text)
{
    tml_semihost_print(text);
}

extern "C" void tml_probe_exit(int code)
{
    uint32_t block[2] = {0x20026 /* ADP_Stopped_ApplicationExit */, static_cast<uint32_t>(code)};
    tml_semihost_call(TML_SH_EXIT_EXTENDED, block);
    for (;;) {
    }
}

int main(void)
{
    uint32_t block[2] = {reinterpret_cast<uint32_t>(cmdline), sizeof(cmdline) - 1};
    if (tml_semihost_call(TML_SH_GET_CMDLINE, block) != 0) {
        return fail("no command line", PROBE_USAGE);
    }
    cmdline[block[1]] = 0;
    char model_path[256], inputs_path[256], outputs_path[256];
    uint32_t arena_bytes = number(arg(cmdline, "arena"), 0);
    uint32_t invokes = number(arg(cmdline, "invoke"), 0);
    tml_probe_watchdog(number(arg(cmdline, "watchdog"), 5000));
    if (!word(arg(cmdline, "model"), model_path, sizeof(model_path)) || arena_bytes == 0) {
        return fail("usage: model=PATH arena=N [invoke=K] [inputs=PATH outputs=PATH]",
                    PROBE_USAGE);
    }
    bool golden = word(arg(cmdline, "inputs"), inputs_path, sizeof(inputs_path));
    if (golden && !word(arg(cmdline, "outputs"), outputs_path, sizeof(outputs_path))) {
        return fail("inputs= needs outputs=", PROBE_USAGE);
    }

    // The pool after the stack: the model first, then the arena (16-aligned).
    uint8_t *pool = reinterpret_cast<uint8_t *>(TML_PROBE_POOL_START);
    uint8_t *pool_end = reinterpret_cast<uint8_t *>(TML_PROBE_POOL_END);
    int32_t model_len = read_file(model_path, pool, static_cast<size_t>(pool_end - pool));
    if (model_len < 0) {
        return fail("cannot read the model", PROBE_USAGE);
    }
    uint8_t *arena = pool + ((static_cast<uint32_t>(model_len) + 15U) & ~15U);
    if (arena_bytes > static_cast<uint32_t>(pool_end - arena)) {
        return fail("no room for this arena", PROBE_NO_ROOM);
    }
    flatbuffers::Verifier verifier(pool, static_cast<size_t>(model_len));
    if (!tflite::VerifyModelBuffer(verifier)) {
        return fail("model does not verify", PROBE_MODEL);
    }
    RegisterDebugLogCallback(log_line);
    // Placement-constructed (no heap, no static destructors to register).
    alignas(Resolver) static uint8_t resolver_storage[sizeof(Resolver)];
    alignas(tflite::MicroInterpreter) static uint8_t interpreter_storage[sizeof(
        tflite::MicroInterpreter)];
    Resolver &resolver = *new (resolver_storage) Resolver();
#define TML_REGISTER_OP(name, method) resolver.method();
    TML_OPS(TML_REGISTER_OP)
#undef TML_REGISTER_OP
    tflite::MicroInterpreter &interpreter = *new (interpreter_storage)
        tflite::MicroInterpreter(tflite::GetModel(pool), resolver, arena, arena_bytes);
    if (interpreter.AllocateTensors() != kTfLiteOk) {
        return fail("allocate", PROBE_ALLOCATE);
    }
    TfLiteTensor *input = interpreter.input(0);
    size_t in_bytes = input->bytes;
    size_t out_bytes = interpreter.output(0)->bytes;
    uint32_t runs = 0;
    if (golden) {
        // Inputs and outputs go after the arena.
        uint8_t *ins = arena + ((arena_bytes + 15U) & ~15U);
        int32_t len = read_file(inputs_path, ins, static_cast<size_t>(pool_end - ins));
        if (len < 0 || in_bytes == 0 || static_cast<size_t>(len) % in_bytes) {
            return fail("cannot read inputs (or not a multiple of the input size)", PROBE_USAGE);
        }
        uint32_t count = static_cast<uint32_t>(len) / in_bytes;
        uint8_t *outs = ins + len;
        if (static_cast<size_t>(pool_end - outs) < count * out_bytes) {
            return fail("no room for the outputs", PROBE_NO_ROOM);
        }
        for (; runs < count; runs++) {
            memcpy(input->data.raw, ins + runs * in_bytes, in_bytes);
            if (interpreter.Invoke() != kTfLiteOk) {
                return fail("invoke", PROBE_INVOKE);
            }
            memcpy(outs + runs * out_bytes, interpreter.output(0)->data.raw, out_bytes);
        }
        int fd = open_file(outputs_path, 5 /* "wb" */);
        if (fd < 0) {
            return fail("cannot write outputs", PROBE_USAGE);
        }
        uint32_t wblock[3] = {static_cast<uint32_t>(fd), reinterpret_cast<uint32_t>(outs),
                              count * out_bytes};
        int32_t left = tml_semihost_call(TML_SH_WRITE, wblock);
        tml_semihost_call(TML_SH_CLOSE, wblock);
        if (left != 0) {
            return fail("cannot write outputs", PROBE_USAGE);
        }
    }
    for (uint32_t i = 0; i < invokes; i++, runs++) {
        tml_probe_marker(1);
        TfLiteStatus status = interpreter.Invoke();
        tml_probe_marker(2);
        if (status != kTfLiteOk) {
            return fail("invoke", PROBE_INVOKE);
        }
    }
    char line[128];
    snprintf(line, sizeof(line), "probe: ok arena=%lu used=%lu in=%lu out=%lu invokes=%lu\n",
             static_cast<unsigned long>(arena_bytes),
             static_cast<unsigned long>(interpreter.arena_used_bytes()),
             static_cast<unsigned long>(in_bytes), static_cast<unsigned long>(out_bytes),
             static_cast<unsigned long>(runs));
    tml_semihost_print(line);
    return PROBE_OK;
}

// The C++ runtime TFLM needs without libstdc++ (nothing is deleted; no pure virtual is called).
void operator delete(void *) noexcept {}
void operator delete(void *, size_t) noexcept {}
extern "C" void __cxa_pure_virtual(void)
{
    tml_probe_exit(PROBE_FAULT);
}
