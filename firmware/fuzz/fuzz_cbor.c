/* SPDX-License-Identifier: Apache-2.0 */
/*
 * CBOR reader (src/cbor.c): tml_cbor_skip against a recursive reference written from RFC 8949
 * here, every head re-encoded by the writer, the cursor never outside the input.
 */
#include <string.h>

#include "fuzz.h"
#include "tml/cbor.h"

/* Reference UTF-8 check (RFC 3629), decoding code points the plain way. */
static int ref_utf8(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint32_t c = s[i], cp, min;
        size_t k;
        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xE0) == 0xC0) {
            k = 1, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (n - i < k + 1) {
            return 0;
        }
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) {
                return 0;
            }
            cp = cp << 6 | (s[i + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
            return 0;
        }
        i += k + 1;
    }
    return 1;
}

/* Reference well-formedness (RFC 8949 appendix C, definite lengths only): 1 ok, 0 not. */
static int ref_item(const uint8_t **p, const uint8_t *end, int depth, int max_depth)
{
    if (*p >= end) {
        return 0;
    }
    uint8_t ib = *(*p)++, major = ib >> 5, ai = ib & 31;
    uint64_t arg = ai;
    if (ai >= 28) {
        return 0;
    }
    if (ai >= 24) {
        size_t n = (size_t)1 << (ai - 24);
        if ((size_t)(end - *p) < n) {
            return 0;
        }
        arg = 0;
        for (size_t i = 0; i < n; i++) {
            arg = arg << 8 | *(*p)++;
        }
        if (major == 7 && ai == 24 && arg < 32) {
            return 0;
        }
    }
    switch (major) {
    case 2:
    case 3:
        if (arg > (uint64_t)(end - *p)) {
            return 0;
        }
        if (major == 3 && !ref_utf8(*p, (size_t)arg)) {
            return 0;
        }
        *p += arg;
        return 1;
    case 4:
    case 5:
    case 6: {
        if (depth + 1 > max_depth) {
            return 0;
        }
        uint64_t count = major == 6 ? 1 : major == 5 ? arg * 2 : arg;
        if (major == 5 && arg > (uint64_t)(end - *p)) {
            return 0;
        }
        if (count > (uint64_t)(end - *p)) {
            return 0; /* each item needs a byte: also keeps this loop short */
        }
        for (uint64_t i = 0; i < count; i++) {
            if (!ref_item(p, end, depth + 1, max_depth)) {
                return 0;
            }
        }
        return 1;
    }
    default: return 1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    int max_depth = data[0] % 17; /* 0..16: the reader clamps at 15 */
    const uint8_t *in = data + 1, *end = data + size;
    size_t len = size - 1;

    /* Skip, item after item, against the reference. */
    tml_cbor_reader_t r;
    tml_cbor_reader_init(&r, in, len);
    const uint8_t *ref = in;
    while (r.p < r.end) {
        const uint8_t *before = r.p;
        int ok = tml_cbor_skip(&r, max_depth) == TML_OK;
        int ref_ok = ref_item(&ref, end, 0, max_depth > 15 ? 15 : max_depth);
        FUZZ_CHECK(ok == ref_ok);
        FUZZ_CHECK(r.p >= in && r.p <= r.end);
        if (!ok) {
            break;
        }
        FUZZ_CHECK(r.p == ref && r.p > before);
    }

    /* Heads: re-encoded by the writer, a shortest one is byte-identical. */
    tml_cbor_reader_init(&r, in, len);
    for (;;) {
        tml_cbor_item_t it;
        const uint8_t *before = r.p;
        if (tml_cbor_read(&r, &it) != TML_OK) {
            break;
        }
        FUZZ_CHECK(r.p > before && r.p <= r.end && it.start == before && it.major <= 7);
        size_t head_len = (size_t)(r.p - before);
        if (it.major == TML_CBOR_BYTES || it.major == TML_CBOR_TEXT) {
            FUZZ_CHECK(it.data && it.data + it.arg == r.p);
            head_len -= (size_t)it.arg;
        } else {
            FUZZ_CHECK(it.data == NULL);
        }
        uint8_t head[9];
        size_t n = 0;
        tml_cbor_writer_t w;
        tml_cbor_writer_init(&w, head, sizeof(head));
        tml_cbor_put_head(&w, it.major, it.arg);
        FUZZ_CHECK(tml_cbor_finish(&w, &n) == TML_OK);
        if (it.shortest) {
            FUZZ_CHECK(n == head_len && memcmp(head, before, n) == 0);
        } else {
            FUZZ_CHECK(n < head_len);
        }
        if (it.major == TML_CBOR_TEXT) {
            FUZZ_CHECK(tml_utf8_valid(it.data, (size_t)it.arg) ==
                       (bool)ref_utf8(it.data, (size_t)it.arg));
        }
    }
    return 0;
}
