/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The transfer decoder (TRANSFER.md "The streaming decoder"), following
 * device_sdk/protocol/transfer/decoder.py: byte counts and the transfer digest first, then
 * the encoding's decoder, then the model digest of what comes out.
 */
#include <string.h>

#include "tml/transfer.h"

_Static_assert(sizeof(tml_transfer_t) <= 4096, "TRANSFER.md: decoder RAM budget is 4,096 bytes");

/* Count and hash the model bytes, then pass them on. */
static tml_reason_t model_out(void *ctx, const uint8_t *data, size_t len)
{
    tml_transfer_t *t = ctx;
    if ((uint64_t)t->produced + len > t->manifest->model_size) {
        return TML_REASON_TRANSFER_OVERFLOW; /* output beyond the model size */
    }
    t->produced += (uint32_t)len;
    tml_sha256_update(&t->model_hash, data, len);
    return t->sink(t->sink_ctx, data, len);
}

/* Encoding 2: the compressed stream's output is the instruction stream. */
static tml_reason_t delta_in(void *ctx, const uint8_t *data, size_t len)
{
    tml_transfer_t *t = ctx;
    return tml_delta_feed(&t->delta, data, len, model_out, t);
}

tml_reason_t tml_transfer_init(tml_transfer_t *t, const tml_manifest_t *m, tml_sink_fn sink,
                               void *sink_ctx, tml_base_read_fn read, void *read_ctx)
{
    t->manifest = m;
    t->sink = sink;
    t->sink_ctx = sink_ctx;
    t->received = 0;
    t->produced = 0;
    t->error = TML_REASON_OK;
    t->finished = false;
    tml_sha256_init(&t->transfer_hash);
    tml_sha256_init(&t->model_hash);
    if (m->encoding == TML_ENCODING_COMPRESSED) {
        tml_lz_init(&t->lz, m->model_size);
    } else if (m->encoding == TML_ENCODING_DELTA) {
        if (!read) {
            t->error = TML_REASON_DELTA_BASE_MISMATCH;
            return t->error;
        }
        tml_lz_init(&t->lz, -1); /* its output is the instruction stream, of any length */
        tml_delta_init(&t->delta, read, read_ctx, m->base_sha256, m->model_size);
    }
    return TML_REASON_OK;
}

static tml_reason_t feed(tml_transfer_t *t, const uint8_t *data, size_t len)
{
    const tml_manifest_t *m = t->manifest;
    if (t->finished || (uint64_t)t->received + len > m->transfer_size) {
        return TML_REASON_TRANSFER_OVERFLOW;
    }
    t->received += (uint32_t)len;
    tml_sha256_update(&t->transfer_hash, data, len);
    bool final = t->received == m->transfer_size;
    if (final) {
        uint8_t digest[32];
        tml_sha256_t copy = t->transfer_hash;
        tml_sha256_final(&copy, digest);
        if (memcmp(digest, m->transfer_sha256, 32) != 0) {
            return TML_REASON_TRANSFER_DIGEST_MISMATCH;
        }
    }
    switch (m->encoding) {
    case TML_ENCODING_RAW: return len ? model_out(t, data, len) : TML_REASON_OK;
    case TML_ENCODING_COMPRESSED: return tml_lz_feed(&t->lz, data, len, final, model_out, t);
    default: return tml_lz_feed(&t->lz, data, len, final, delta_in, t);
    }
}

tml_reason_t tml_transfer_feed(tml_transfer_t *t, const uint8_t *data, size_t len)
{
    if (t->error == TML_REASON_OK) {
        t->error = feed(t, data, len);
    }
    return t->error;
}

tml_reason_t tml_transfer_finish(tml_transfer_t *t)
{
    const tml_manifest_t *m = t->manifest;
    uint8_t digest[32];
    if (t->error != TML_REASON_OK) {
        return t->error;
    }
    if (t->received < m->transfer_size) {
        t->error = TML_REASON_TRANSFER_TRUNCATED;
    } else if (m->encoding != TML_ENCODING_RAW && !tml_lz_done(&t->lz)) {
        t->error = TML_REASON_DECODE_ERROR; /* compressed stream incomplete */
    } else if (m->encoding == TML_ENCODING_DELTA && !tml_delta_done(&t->delta)) {
        t->error = TML_REASON_DECODE_ERROR; /* delta instructions incomplete */
    } else {
        tml_sha256_final(&t->model_hash, digest);
        if (t->produced != m->model_size || memcmp(digest, m->model_sha256, 32) != 0) {
            t->error = TML_REASON_MODEL_DIGEST_MISMATCH;
        }
    }
    t->finished = t->error == TML_REASON_OK;
    return t->error;
}
