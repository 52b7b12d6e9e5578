/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The whole transfer decoder (src/transfer.c over lz.c and delta.c) as the device drives it:
 * a manifest, chunks in order, finish. Input: encoding, split seed, model size (2 bytes LE),
 * then the transfer; the harness's manifest names the transfer's true digest, so the fuzzer
 * gets past it. The sink is bounded like a slot and must never get more than model_size.
 * A transfer whose only fault is the model digest is run again, split differently, with the
 * digest of what came out: it must then be accepted, with the same bytes.
 */
#include <string.h>

#include "fuzz.h"
#include "tml/sha.h"
#include "tml/transfer.h"

#define CAP 65536

static uint8_t out_a[CAP], out_b[CAP];
static tml_transfer_t t;

static tml_reason_t run(const tml_manifest_t *m, const uint8_t *s, size_t len, uint8_t split,
                        fuzz_out_t *o)
{
    fuzz_split_t sp;
    size_t i = 0;
    tml_reason_t why = tml_transfer_init(&t, m, fuzz_out_sink, o, fuzz_base_read, NULL);
    fuzz_split_init(&sp, split);
    while (why == TML_REASON_OK && i < len) {
        size_t n = fuzz_split_next(&sp, len - i);
        why = tml_transfer_feed(&t, s + i, n);
        i += n;
        FUZZ_CHECK(why != TML_REASON_OK || t.received == i);
        FUZZ_CHECK(o->len <= m->model_size && t.produced <= m->model_size);
    }
    if (why == TML_REASON_OK) {
        why = tml_transfer_finish(&t);
    }
    FUZZ_CHECK(tml_transfer_feed(&t, s, 0) == (why == TML_REASON_OK ? TML_REASON_TRANSFER_OVERFLOW
                                                                    : why)); /* errors stick */
    return why;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4) {
        return 0;
    }
    const uint8_t *s = data + 4;
    size_t len = size - 4;
    tml_manifest_t m;
    memset(&m, 0, sizeof(m));
    m.encoding = data[0] % 3;
    m.model_size = (uint32_t)data[2] | (uint32_t)data[3] << 8;
    m.transfer_size = (uint32_t)len;
    tml_sha256(s, len, m.transfer_sha256);
    if (m.encoding == TML_ENCODING_RAW) { /* manifest.c: raw means transfer == model */
        m.model_size = m.transfer_size;
        memcpy(m.model_sha256, m.transfer_sha256, 32);
    } else if (m.encoding == TML_ENCODING_DELTA) {
        m.has_base = true;
        tml_sha256(fuzz_delta_base, FUZZ_BASE_BYTES, m.base_sha256);
    }
    if (m.model_size > CAP) {
        return 0;
    }
    fuzz_out_t a = {out_a, CAP, 0, 0}, b = {out_b, CAP, 0, 0};
    tml_reason_t ra = run(&m, s, len, 0, &a);
    FUZZ_CHECK(!a.overflowed);
    if (ra == TML_REASON_OK) {
        FUZZ_CHECK(a.len == m.model_size);
        return 0;
    }
    if (ra != TML_REASON_MODEL_DIGEST_MISMATCH || a.len != m.model_size) {
        return 0;
    }
    tml_sha256(out_a, a.len, m.model_sha256);
    tml_reason_t rb = run(&m, s, len, (uint8_t)(data[1] | 1), &b);
    FUZZ_CHECK(rb == TML_REASON_OK);
    FUZZ_CHECK(b.len == a.len && memcmp(out_a, out_b, a.len) == 0);
    return 0;
}
