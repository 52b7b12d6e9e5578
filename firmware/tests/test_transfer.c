/* SPDX-License-Identifier: Apache-2.0 */
/* The streaming decoder gives TransferDecoder's verdict on every transfer vector. */
#include <string.h>

#include "tml/sha.h"
#include "tml/transfer.h"
#include "tml_test.h"

typedef struct {
    tml_sha256_t sha;
    size_t n;
} sink_t;

static tml_reason_t sink(void *ctx, const uint8_t *data, size_t len)
{
    sink_t *s = ctx;
    tml_sha256_update(&s->sha, data, len);
    s->n += len;
    return TML_REASON_OK;
}

typedef struct {
    const uint8_t *data;
    size_t len;
} base_t;

static tml_reason_t base_read(void *ctx, uint32_t off, uint8_t *buf, size_t len)
{
    base_t *b = ctx;
    if ((uint64_t)off + len > b->len) {
        return TML_REASON_DELTA_BASE_MISMATCH;
    }
    memcpy(buf, b->data + off, len);
    return TML_REASON_OK;
}

void suite_transfer(void)
{
    static uint8_t stream[70000], base[70000];
    static tml_transfer_t t;
    vec_file_t f;
    vec_record_t r;
    tml_case("transfer", "state_fits_the_4k_budget");
    CHECK(sizeof(tml_transfer_t) <= 4096);
    if (!vec_open(&f, "transfers.vec")) {
        return;
    }
    while (vec_next(&f, &r)) {
        tml_manifest_t m = {0};
        sink_t out = {.n = 0};
        base_t b = {base, 0};
        tml_case("transfer", vec_get(&r, "name"));
        m.encoding = (uint8_t)vec_u64(&r, "encoding");
        m.model_size = (uint32_t)vec_u64(&r, "model_size");
        m.transfer_size = (uint32_t)vec_u64(&r, "transfer_size");
        vec_hex(&r, "model_sha256", m.model_sha256, 32);
        vec_hex(&r, "transfer_sha256", m.transfer_sha256, 32);
        m.has_base = vec_hex(&r, "base_sha256", m.base_sha256, 32) == 32;
        size_t n = vec_file(vec_get(&r, "transfer_file"), stream, sizeof(stream));
        const char *base_file = vec_get(&r, "base_file");
        if (base_file && *base_file) {
            b.len = vec_file(base_file, base, sizeof(base));
        }
        size_t chunk = (size_t)vec_u64(&r, "chunk");
        tml_sha256_init(&out.sha);
        tml_reason_t why = tml_transfer_init(&t, &m, sink, &out, base_read, &b);
        for (size_t i = 0; i < n && why == TML_REASON_OK; i += chunk) {
            why = tml_transfer_feed(&t, stream + i, n - i < chunk ? n - i : chunk);
        }
        if (why == TML_REASON_OK) {
            why = tml_transfer_finish(&t);
        }
        if ((int)why != (int)vec_u64(&r, "reason")) {
            char msg[128];
            snprintf(msg, sizeof(msg), "reason %s, expected %s", tml_reason_str(why),
                     vec_get(&r, "reason_name"));
            tml_fail(__FILE__, __LINE__, msg);
        }
        if (why == TML_REASON_OK) {
            uint8_t d[32];
            tml_sha256_final(&out.sha, d);
            CHECK_EQ(out.n, m.model_size);
            CHECK(memcmp(d, m.model_sha256, 32) == 0);
            CHECK(tml_transfer_feed(&t, stream, 1) == TML_REASON_TRANSFER_OVERFLOW);
        }
    }
    vec_close(&f);
}
