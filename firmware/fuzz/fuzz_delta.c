/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The delta interpreter (src/delta.c, encoding 2's instructions) against the vectors' base
 * model, into a bounded output. Input: a mode byte (base digest checked or not, expected
 * size, splitting), then the instruction stream. Decoded whole and split: the verdict and the
 * output must not depend on how the bytes arrive; every base read stays inside the base.
 */
#include <string.h>

#include "fuzz.h"
#include "tml/sha.h"
#include "tml/transfer.h"

#define CAP 65536

static uint8_t out_a[CAP], out_b[CAP];
static tml_delta_t delta;

static tml_reason_t run(const uint8_t *s, size_t len, const uint8_t *base_sha, int64_t expected,
                        uint8_t split, fuzz_out_t *o)
{
    fuzz_split_t sp;
    size_t i = 0;
    tml_reason_t why = TML_REASON_OK;
    tml_delta_init(&delta, fuzz_base_read, NULL, base_sha, expected);
    fuzz_split_init(&sp, split);
    while (i < len) {
        size_t n = fuzz_split_next(&sp, len - i);
        why = tml_delta_feed(&delta, s + i, n, fuzz_out_sink, o);
        i += n;
        if (why != TML_REASON_OK) {
            return why;
        }
        FUZZ_CHECK(delta.produced <= delta.target_size || !delta.have_header);
        FUZZ_CHECK(o->len == delta.produced);
    }
    return why;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t base_sha[32];
    static int ready;
    if (!ready) {
        tml_sha256(fuzz_delta_base, FUZZ_BASE_BYTES, base_sha);
        ready = 1;
    }
    if (size < 1) {
        return 0;
    }
    uint8_t mode = data[0];
    const uint8_t *s = data + 1;
    size_t len = size - 1;
    const uint8_t *sha = (mode & 1) ? base_sha : NULL;
    int64_t expected = -1;
    if ((mode & 2) && len >= 12) {
        expected = (int64_t)((uint32_t)s[8] | (uint32_t)s[9] << 8 | (uint32_t)s[10] << 16 |
                             (uint32_t)s[11] << 24);
    }
    fuzz_out_t a = {out_a, CAP, 0, 0}, b = {out_b, CAP, 0, 0};
    tml_reason_t ra = run(s, len, sha, expected, 0, &a);
    int done_a = tml_delta_done(&delta);
    tml_reason_t rb = run(s, len, sha, expected, (uint8_t)(mode >> 2 | 1), &b);
    int done_b = tml_delta_done(&delta);
    if (!a.overflowed && !b.overflowed) {
        FUZZ_CHECK(ra == rb);
        if (ra == TML_REASON_OK) {
            FUZZ_CHECK(done_a == done_b);
            FUZZ_CHECK(a.len == b.len && memcmp(out_a, out_b, a.len) == 0);
        }
    }
    return 0;
}
