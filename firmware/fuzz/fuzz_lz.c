/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The compressed-stream decoder (src/lz.c, encoding 1) into a bounded output, as the device's
 * slot. Input: a mode byte (expected size, how the stream is split), then the stream. The
 * stream is decoded twice, whole and split into calls (empty ones too): the verdict and the
 * output must not depend on how the bytes arrive.
 */
#include <string.h>

#include "fuzz.h"
#include "tml/transfer.h"

#define CAP 65536 /* a model slot's worth */

static uint8_t out_a[CAP], out_b[CAP];
static tml_lz_t lz;

static tml_reason_t run(const uint8_t *s, size_t len, int64_t expected, uint8_t split,
                        fuzz_out_t *o)
{
    fuzz_split_t sp;
    size_t i = 0;
    tml_reason_t why;
    tml_lz_init(&lz, expected);
    fuzz_split_init(&sp, split);
    do {
        size_t n = fuzz_split_next(&sp, len - i);
        why = tml_lz_feed(&lz, s + i, n, i + n == len, fuzz_out_sink, o);
        i += n;
        if (why != TML_REASON_OK) {
            return why;
        }
        FUZZ_CHECK(lz.in_len < TML_LZ_INBUF); /* lz.c: fewer than INBUF bytes kept between calls */
    } while (i < len);
    FUZZ_CHECK(tml_lz_done(&lz)); /* a final call that returned OK ended the stream exactly */
    return why;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    uint8_t mode = data[0];
    const uint8_t *s = data + 1;
    size_t len = size - 1;
    int64_t expected = -1;
    if ((mode & 3) && len >= 8) { /* expect the declared size, one more or one less */
        expected = (int64_t)((uint32_t)s[4] | (uint32_t)s[5] << 8 | (uint32_t)s[6] << 16 |
                             (uint32_t)s[7] << 24);
        expected += (mode & 3) == 2 ? 1 : (mode & 3) == 3 ? -1 : 0;
    }
    fuzz_out_t a = {out_a, CAP, 0, 0}, b = {out_b, CAP, 0, 0};
    tml_reason_t ra = run(s, len, expected, 0, &a);
    tml_reason_t rb = run(s, len, expected, (uint8_t)(mode >> 2 | 1), &b);
    if (expected >= 0 && expected <= CAP && ra == TML_REASON_OK) {
        FUZZ_CHECK(a.len == (size_t)expected);
    }
    if (!a.overflowed && !b.overflowed) {
        FUZZ_CHECK(ra == rb);
        if (ra == TML_REASON_OK) {
            FUZZ_CHECK(a.len == b.len && memcmp(out_a, out_b, a.len) == 0);
        }
    }
    return 0;
}
