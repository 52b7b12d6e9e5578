/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Decode one transfer on an emulated Cortex-M4 (QEMU mps2-an386) for bench/codecs.py.
 *
 * Built once per (decoder, transfer) by bench/codecs_m4/build.py with -DCODEC=...: the transfer,
 * the expected model and the delta base are linked in (blobs.S, .incbin), the decoder streams
 * the transfer in 256-byte pieces, and every output byte is compared with the model as it comes
 * (a few instructions per byte, the same for every decoder). codec_marker() brackets the
 * decode, so the instruction-counting QEMU plugin (firmware/tools/qemu_insn.c) reports the
 * decode's instructions. Exit code (semihosting): 0 when the output is the model, else 1.
 *
 *   CODEC_OURS_LZ      encoding 1 (firmware/src/lz.c)
 *   CODEC_OURS_DELTA   encoding 2: lz.c into delta.c, the base read from flash
 *   CODEC_HEATSHRINK   heatshrink_decoder.c (static window, lookahead, input buffer)
 *   CODEC_DETOOLS      detools.c, sequential patch, base read from flash
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define CODEC_OURS_LZ 1
#define CODEC_OURS_DELTA 2
#define CODEC_HEATSHRINK 3
#define CODEC_DETOOLS 4

#if CODEC == CODEC_OURS_LZ || CODEC == CODEC_OURS_DELTA
#include "tml/transfer.h"
#elif CODEC == CODEC_HEATSHRINK
#include "heatshrink_decoder.h"
#elif CODEC == CODEC_DETOOLS
#include "detools.h"
#endif

#define PIECE 256

extern const uint8_t transfer_start[], transfer_end[], model_start[], model_end[], base_start[],
    base_end[];
extern uint32_t __data_load, __data_start, __data_end, __bss_start, __bss_end, __stack_top;

int main(void);
void reset_handler(void);
void fault_handler(void);

static size_t out_pos;
static bool mismatch;

static int32_t semihost(uint32_t op, void *arg)
{
    register uint32_t r0 __asm__("r0") = op;
    register void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return (int32_t)r0;
}

static void finish(int code)
{
    uint32_t block[2] = {0x20026 /* ADP_Stopped_ApplicationExit */, (uint32_t)code};
    semihost(0x20 /* SYS_EXIT_EXTENDED */, block);
    for (;;) {
    }
}

__attribute__((section(".vectors"), used)) static void (*const vectors[])(void) = {
    (void (*)(void))(&__stack_top), reset_handler, fault_handler, fault_handler, fault_handler,
    fault_handler, fault_handler,
};

void reset_handler(void)
{
    uint32_t *src = &__data_load, *dst = &__data_start;
    while (dst < &__data_end) {
        *dst++ = *src++;
    }
    for (dst = &__bss_start; dst < &__bss_end; dst++) {
        *dst = 0;
    }
    finish(main());
}

void fault_handler(void)
{
    semihost(0x04 /* SYS_WRITE0 */, (void *)"codecs_m4: fault\n");
    finish(2);
}

__attribute__((noinline)) void codec_marker(int which)
{
    __asm__ volatile("" : : "r"(which) : "memory");
}

static void check(const uint8_t *data, size_t len)
{
    size_t model_size = (size_t)(model_end - model_start);
    if (out_pos + len > model_size || memcmp(model_start + out_pos, data, len) != 0) {
        mismatch = true;
    }
    out_pos += len;
}

#if CODEC == CODEC_OURS_LZ || CODEC == CODEC_OURS_DELTA
static tml_lz_t lz;
static tml_reason_t sink_model(void *ctx, const uint8_t *data, size_t len)
{
    (void)ctx;
    check(data, len);
    return TML_REASON_OK;
}
#endif

#if CODEC == CODEC_OURS_DELTA
static tml_delta_t delta;
static tml_reason_t read_base(void *ctx, uint32_t offset, uint8_t *buf, size_t len)
{
    (void)ctx;
    if (offset + len > (size_t)(base_end - base_start)) {
        return TML_REASON_DELTA_BASE_MISMATCH;
    }
    memcpy(buf, base_start + offset, len);
    return TML_REASON_OK;
}
static tml_reason_t sink_instructions(void *ctx, const uint8_t *data, size_t len)
{
    (void)ctx;
    return tml_delta_feed(&delta, data, len, sink_model, NULL);
}
#endif

#if CODEC == CODEC_DETOOLS
static struct detools_apply_patch_t patcher;
static int from_pos;
static int from_read(void *arg, uint8_t *buf, size_t size)
{
    (void)arg;
    memcpy(buf, base_start + from_pos, size);
    from_pos += (int)size;
    return 0;
}
static int from_seek(void *arg, int offset)
{
    (void)arg;
    from_pos += offset;
    return 0;
}
static int to_write(void *arg, const uint8_t *buf, size_t size)
{
    (void)arg;
    check(buf, size);
    return 0;
}
#endif

#if CODEC == CODEC_HEATSHRINK
static heatshrink_decoder hsd;
static uint8_t out[PIECE];
static void drain(void)
{
    size_t got;
    do {
        got = 0;
        heatshrink_decoder_poll(&hsd, out, sizeof out, &got);
        check(out, got);
    } while (got == sizeof out);
}
#endif

static int decode(const uint8_t *in, size_t size)
{
#if CODEC == CODEC_OURS_LZ || CODEC == CODEC_OURS_DELTA
    tml_lz_init(&lz, -1);
#if CODEC == CODEC_OURS_DELTA
    tml_delta_init(&delta, read_base, NULL, NULL, -1);
    tml_sink_fn sink = sink_instructions;
#else
    tml_sink_fn sink = sink_model;
#endif
    for (size_t at = 0; at < size; at += PIECE) {
        size_t n = size - at < PIECE ? size - at : PIECE;
        if (tml_lz_feed(&lz, in + at, n, at + n == size, sink, NULL) != TML_REASON_OK) {
            return 1;
        }
    }
    return tml_lz_done(&lz) ? 0 : 1;
#elif CODEC == CODEC_HEATSHRINK
    heatshrink_decoder_reset(&hsd);
    for (size_t at = 0; at < size;) {
        size_t sunk = 0;
        size_t n = size - at < PIECE ? size - at : PIECE;
        heatshrink_decoder_sink(&hsd, (uint8_t *)(in + at), n, &sunk);
        at += sunk;
        drain();
    }
    while (heatshrink_decoder_finish(&hsd) == HSDR_FINISH_MORE) {
        drain();
    }
    return 0;
#elif CODEC == CODEC_DETOOLS
    if (detools_apply_patch_init(&patcher, from_read, from_seek, size, to_write, NULL) != 0) {
        return 1;
    }
    for (size_t at = 0; at < size; at += PIECE) {
        size_t n = size - at < PIECE ? size - at : PIECE;
        if (detools_apply_patch_process(&patcher, in + at, n) != 0) {
            return 1;
        }
    }
    return detools_apply_patch_finalize(&patcher) < 0 ? 1 : 0;
#else
#error "CODEC: 1 ours (encoding 1), 2 ours (encoding 2), 3 heatshrink, 4 detools"
#endif
}

int main(void)
{
    size_t size = (size_t)(transfer_end - transfer_start);
    codec_marker(1);
    int failed = decode(transfer_start, size);
    codec_marker(0);
    if (failed || mismatch || out_pos != (size_t)(model_end - model_start)) {
        semihost(0x04, (void *)"codecs_m4: output differs from the model\n");
        return 1;
    }
    return 0;
}
