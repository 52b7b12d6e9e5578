/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Streaming interpreter of delta instructions (TRANSFER.md "Encoding 2"), following
 * device_sdk/protocol/transfer/delta.py DeltaApplier. The base (the running model) is read in
 * 128-byte pieces through a callback, so the scratch buffer stays 128 bytes.
 */
#include <string.h>

#include "tml/sha.h"
#include "tml/transfer.h"

enum { COPY = 0, ADD = 1, INSERT = 2 };
#define DELTA_HEADER 12
#define PIECE ((uint32_t)sizeof(((tml_delta_t *)0)->scratch))

void tml_delta_init(tml_delta_t *d, tml_base_read_fn read, void *read_ctx,
                    const uint8_t *base_sha256, int64_t expected_size)
{
    memset(d, 0, sizeof(*d));
    d->kind = -1;
    d->read = read;
    d->read_ctx = read_ctx;
    d->base_sha256 = base_sha256;
    d->expected_size = expected_size;
}

bool tml_delta_done(const tml_delta_t *d)
{
    return d->have_header && d->produced == d->target_size;
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Parse a LEB128 number at head[*i]: 1 done, 0 incomplete, -1 too long or above 2^32 - 1. */
static int uvarint(const uint8_t *head, size_t len, size_t *i, uint32_t *value)
{
    uint64_t v = 0;
    for (size_t k = 0; k < 5; k++) {
        if (*i + k >= len) {
            return 0;
        }
        uint8_t b = head[*i + k];
        v |= (uint64_t)(b & 0x7F) << (7 * k);
        if (!(b & 0x80)) {
            if (v > 0xFFFFFFFFULL) {
                return -1;
            }
            *value = (uint32_t)v;
            *i += k + 1;
            return 1;
        }
    }
    return -1;
}

static tml_reason_t check_base(tml_delta_t *d)
{
    tml_sha256_t sha;
    uint8_t digest[32];
    if (!d->base_sha256) {
        return TML_REASON_OK;
    }
    tml_sha256_init(&sha);
    for (uint32_t off = 0; off < d->base_size; off += PIECE) {
        uint32_t n = d->base_size - off < PIECE ? d->base_size - off : PIECE;
        tml_reason_t why = d->read(d->read_ctx, off, d->scratch, n);
        if (why != TML_REASON_OK) {
            return why;
        }
        tml_sha256_update(&sha, d->scratch, n);
    }
    tml_sha256_final(&sha, digest);
    return memcmp(digest, d->base_sha256, 32) ? TML_REASON_DELTA_BASE_MISMATCH : TML_REASON_OK;
}

/* Try to parse the buffered operation head: 1 started, 0 incomplete, or a refusal. */
static tml_reason_t parse_head(tml_delta_t *d, bool *started)
{
    size_t i = 0;
    uint32_t head, zz;
    *started = false;
    int r = uvarint(d->head, d->head_len, &i, &head);
    if (r <= 0) {
        return r < 0 ? TML_REASON_DECODE_ERROR : TML_REASON_OK;
    }
    int kind = (int)(head & 3);
    uint64_t length = (uint64_t)(head >> 2) + 1;
    if (kind > INSERT || length > d->target_size - d->produced) {
        return TML_REASON_DECODE_ERROR;
    }
    if (kind != INSERT) {
        r = uvarint(d->head, d->head_len, &i, &zz);
        if (r <= 0) {
            return r < 0 ? TML_REASON_DECODE_ERROR : TML_REASON_OK;
        }
        int64_t off = (zz & 1) ? -(int64_t)(((uint64_t)zz + 1) >> 1) : (int64_t)(zz >> 1);
        int64_t start = (int64_t)d->cursor + off;
        if (start < 0 || (uint64_t)start + length > d->base_size) {
            return TML_REASON_DECODE_ERROR;
        }
        d->cursor = (uint32_t)start;
    }
    d->kind = (int8_t)kind;
    d->left = (uint32_t)length;
    d->head_len = 0;
    *started = true;
    return TML_REASON_OK;
}

static void advance(tml_delta_t *d, uint32_t n)
{
    if (d->kind != INSERT) {
        d->cursor += n;
    }
    d->left -= n;
    d->produced += n;
    if (!d->left) {
        d->kind = -1;
    }
}

tml_reason_t tml_delta_feed(tml_delta_t *d, const uint8_t *data, size_t len, tml_sink_fn sink,
                            void *ctx)
{
    size_t i = 0;
    tml_reason_t why;
    while (i < len) {
        if (!d->have_header) {
            size_t take = DELTA_HEADER - d->head_len;
            if (take > len - i) {
                take = len - i;
            }
            memcpy(d->head + d->head_len, data + i, take);
            d->head_len = (uint8_t)(d->head_len + take);
            i += take;
            if (d->head_len < DELTA_HEADER) {
                continue;
            }
            if (d->head[0] != 'T' || d->head[1] != 'D' || d->head[2] != 1 || d->head[3] != 0) {
                return TML_REASON_DECODE_ERROR;
            }
            d->base_size = le32(d->head + 4);
            d->target_size = le32(d->head + 8);
            d->head_len = 0;
            d->have_header = true;
            if (d->expected_size >= 0 && d->target_size != (uint64_t)d->expected_size) {
                return d->target_size > (uint64_t)d->expected_size ? TML_REASON_TRANSFER_OVERFLOW
                                                                   : TML_REASON_DECODE_ERROR;
            }
            why = check_base(d);
            if (why != TML_REASON_OK) {
                return why;
            }
            continue;
        }
        if (d->kind < 0) {
            if (tml_delta_done(d)) {
                return TML_REASON_DECODE_ERROR; /* instructions after the target end */
            }
            bool started = false;
            while (i < len && !started) {
                d->head[d->head_len++] = data[i++];
                why = parse_head(d, &started);
                if (why != TML_REASON_OK) {
                    return why;
                }
            }
            while (d->kind == COPY) { /* a COPY reads no input: run it to the end now */
                uint32_t n = d->left < PIECE ? d->left : PIECE;
                why = d->read(d->read_ctx, d->cursor, d->scratch, n);
                if (why == TML_REASON_OK) {
                    why = sink(ctx, d->scratch, n);
                }
                if (why != TML_REASON_OK) {
                    return why;
                }
                advance(d, n);
            }
            continue;
        }
        uint32_t n = d->left;
        if (n > len - i) {
            n = (uint32_t)(len - i);
        }
        if (d->kind == INSERT) {
            why = sink(ctx, data + i, n);
        } else {
            if (n > PIECE) {
                n = PIECE;
            }
            why = d->read(d->read_ctx, d->cursor, d->scratch, n);
            for (uint32_t k = 0; k < n && why == TML_REASON_OK; k++) {
                d->scratch[k] = (uint8_t)(d->scratch[k] + data[i + k]);
            }
            if (why == TML_REASON_OK) {
                why = sink(ctx, d->scratch, n);
            }
        }
        if (why != TML_REASON_OK) {
            return why;
        }
        i += n;
        advance(d, n);
    }
    return TML_REASON_OK;
}
