/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The firmware's transfer decoder (src/transfer.c, lz.c, delta.c, sha.c) as a host shared
 * library, build/host/libtml_transfer.so (make libtransfer), for the fleet simulator
 * (device_sdk/simulator/c_transfer.py): simulated devices decode their packages with the same
 * C code a device runs, at C speed.
 *
 * A flat interface for ctypes: one caller-allocated object (tml_lib_transfer_size() bytes)
 * holds the manifest fields the decoder reads, the decoder, the output buffer the caller
 * lends (the model's size: the decoder refuses output past it before the sink sees it, and
 * the sink checks again) and the delta's base in memory. Nothing is global; objects are
 * independent, so callers may decode on several threads at once.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tml/transfer.h"

#ifdef TML_SHA256_X86
#include "sha256_x86.h"
#endif

typedef struct {
    tml_manifest_t manifest;
    tml_transfer_t transfer;
    uint8_t *out;
    uint32_t out_cap;
    uint32_t out_len;
    const uint8_t *base;
    uint32_t base_len;
} tml_lib_transfer_t;

/* Model bytes go to the lent buffer, in order. */
static tml_reason_t to_buffer(void *ctx, const uint8_t *data, size_t len)
{
    tml_lib_transfer_t *x = ctx;
    if (len > x->out_cap - x->out_len) {
        return TML_REASON_TRANSFER_OVERFLOW;
    }
    memcpy(x->out + x->out_len, data, len);
    x->out_len += (uint32_t)len;
    return TML_REASON_OK;
}

/* The delta's base, from memory; a shorter base is not the delta's base. */
static tml_reason_t read_base(void *ctx, uint32_t offset, uint8_t *buf, size_t len)
{
    const tml_lib_transfer_t *x = ctx;
    if (offset > x->base_len || len > x->base_len - offset) {
        return TML_REASON_DELTA_BASE_MISMATCH;
    }
    memcpy(buf, x->base + offset, len);
    return TML_REASON_OK;
}

/** @brief Bytes the caller allocates for one decoder object. @return the size */
size_t tml_lib_transfer_size(void)
{
    return sizeof(tml_lib_transfer_t);
}

/**
 * @brief Start decoding one transfer.
 * @param x the object (tml_lib_transfer_size() bytes, owned by the caller)
 * @param encoding 0 raw, 1 compressed, 2 delta
 * @param model_size, transfer_size the manifest's sizes
 * @param model_sha256, transfer_sha256 the manifest's digests (32 bytes each)
 * @param base_sha256 the delta's base digest (32 bytes), NULL: not checked
 * @param base the running model for a delta (NULL: none), base_len its size
 * @param out the buffer the model bytes go to, kept for the object's life; out_cap its size
 * @return TML_REASON_OK or the refusal (DELTA_BASE_MISMATCH: a delta without a base)
 */
int tml_lib_transfer_init(tml_lib_transfer_t *x, uint8_t encoding, uint32_t model_size,
                          uint32_t transfer_size, const uint8_t *model_sha256,
                          const uint8_t *transfer_sha256, const uint8_t *base_sha256,
                          const uint8_t *base, uint32_t base_len, uint8_t *out, uint32_t out_cap)
{
    memset(x, 0, sizeof *x);
    x->manifest.encoding = encoding;
    x->manifest.model_size = model_size;
    x->manifest.transfer_size = transfer_size;
    memcpy(x->manifest.model_sha256, model_sha256, 32);
    memcpy(x->manifest.transfer_sha256, transfer_sha256, 32);
    x->manifest.has_base = base_sha256 != NULL;
    if (base_sha256 != NULL) {
        memcpy(x->manifest.base_sha256, base_sha256, 32);
    }
    x->out = out;
    x->out_cap = out_cap;
    x->base = base;
    x->base_len = base_len;
    tml_transfer_init(&x->transfer, &x->manifest, to_buffer, x, base ? read_base : NULL, x);
    if (x->transfer.error == TML_REASON_OK && encoding == TML_ENCODING_DELTA &&
        base_sha256 == NULL) {
        /* The firmware's manifest check refuses a delta without key 13; so does this. */
        x->transfer.error = TML_REASON_DELTA_BASE_MISMATCH;
    }
    return x->transfer.error;
}

/**
 * @brief Feed the next transferred bytes.
 * @param x the object
 * @param data, len the bytes
 * @param produced set to the model bytes in the output buffer so far
 * @return TML_REASON_OK or the (sticky) refusal
 */
int tml_lib_transfer_feed(tml_lib_transfer_t *x, const uint8_t *data, size_t len,
                          uint32_t *produced)
{
    tml_reason_t r = tml_transfer_feed(&x->transfer, data, len);
    *produced = x->out_len;
    return r;
}

/** @brief Check the transfer is complete and correct. @param x the object @return reason */
int tml_lib_transfer_finish(tml_lib_transfer_t *x)
{
    return tml_transfer_finish(&x->transfer);
}

/**
 * @brief SHA-256 of a buffer, as the decoder hashes (the tests compare it with hashlib's).
 * @param data, len the bytes
 * @param out the digest (32 bytes)
 */
void tml_lib_sha256(const uint8_t *data, size_t len, uint8_t *out)
{
    tml_sha256(data, len, out);
}

/** @brief Whether the decoder's SHA-256 runs on the CPU's SHA instructions. @return 0 or 1 */
int tml_lib_sha256_accelerated(void)
{
#ifdef TML_SHA256_X86
    return tml_sha256_accelerated();
#else
    return 0;
#endif
}
