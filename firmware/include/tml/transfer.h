/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file transfer.h
 * @brief Stream a package's transferred bytes into model bytes in bounded RAM (TRANSFER.md).
 *
 * Encodings: 0 raw (pass-through), 1 compressed ("TZ": LZ77 + adaptive range coder),
 * 2 delta (a TZ stream of "TD" instructions against the running model, read from flash).
 * The whole decoder state is one tml_transfer_t (sizeof() <= 4096; see TRANSFER.md "RAM
 * budget"), owned by the caller. Output goes to a sink callback in pieces, in order. Errors are
 * the shared reason codes and stick: after one, every call returns it again. Not reentrant
 * per object; not for interrupts.
 */
#ifndef TML_TRANSFER_H
#define TML_TRANSFER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tml/config.h"
#include "tml/manifest.h"
#include "tml/reasons.h"
#include "tml/sha.h"

/**
 * @brief Receives decoded bytes in order.
 * @param ctx the sink's context
 * @param data bytes, valid only during the call
 * @param len count (>= 1)
 * @return TML_REASON_OK, or a reason that stops the decoder (e.g. FLASH_ERROR)
 */
typedef tml_reason_t (*tml_sink_fn)(void *ctx, const uint8_t *data, size_t len);

/**
 * @brief Reads the delta's base model (the running model).
 * @param ctx the reader's context
 * @param offset first byte
 * @param buf destination
 * @param len count (<= 128)
 * @return TML_REASON_OK, or DELTA_BASE_MISMATCH when the base is shorter, FLASH_ERROR
 */
typedef tml_reason_t (*tml_base_read_fn)(void *ctx, uint32_t offset, uint8_t *buf, size_t len);

/** @brief Bytes of LZ state: window plus probabilities, as TRANSFER.md's budget allows. */
#define TML_LZ_STATE_BYTES (3584 - 32 - 32)

/** @brief Streaming decoder of encoding 1 (TRANSFER.md "Encoding 1"). */
typedef struct {
    uint8_t mem[TML_LZ_STATE_BYTES]; /**< window (2^window_log) then probabilities */
    uint8_t in[TML_LZ_INBUF];        /**< input lookahead */
    uint8_t in_len;
    uint8_t stage; /**< header, start, tokens, done */
    uint8_t window_log, lc, lp, kind, prev;
    uint32_t range, code, size, pos, rep;
    int64_t expected_size; /**< -1: any */
} tml_lz_t;

/** @brief Streaming interpreter of delta instructions (TRANSFER.md "Encoding 2"). */
typedef struct {
    uint8_t head[12]; /**< the stream header, then each operation's head */
    uint8_t head_len;
    int8_t kind; /**< operation in progress, -1 between operations */
    bool have_header;
    uint32_t base_size, target_size, produced, cursor, left;
    int64_t expected_size;
    const uint8_t *base_sha256; /**< NULL: not checked */
    tml_base_read_fn read;
    void *read_ctx;
    uint8_t scratch[128]; /**< one piece of the base */
} tml_delta_t;

/** @brief The whole transfer: byte counts, both digests, and the decoders. */
typedef struct {
    const tml_manifest_t *manifest; /**< owned by the caller, kept for the transfer's life */
    tml_sink_fn sink;
    void *sink_ctx;
    uint32_t received, produced;
    tml_reason_t error;
    bool finished;
    tml_sha256_t transfer_hash;
    tml_sha256_t model_hash;
    tml_lz_t lz;
    tml_delta_t delta;
} tml_transfer_t;

/**
 * @brief Prepare to receive the transfer a verified manifest describes.
 * @param t the state (owned by the caller, about 4 KB)
 * @param manifest the verified manifest; must outlive t
 * @param sink receives the model bytes in order
 * @param sink_ctx passed to sink
 * @param read reads the base model (needed for encoding 2; may be NULL otherwise)
 * @param read_ctx passed to read
 * @return TML_REASON_OK, or DELTA_BASE_MISMATCH for a delta without a base reader
 */
tml_reason_t tml_transfer_init(tml_transfer_t *t, const tml_manifest_t *manifest,
                               tml_sink_fn sink, void *sink_ctx, tml_base_read_fn read,
                               void *read_ctx);

/**
 * @brief Consume the next transferred bytes (any size, in order).
 * @param t the state
 * @param data bytes (owned by the caller)
 * @param len count
 * @return TML_REASON_OK or the refusal (TRANSFER_OVERFLOW, TRANSFER_DIGEST_MISMATCH,
 *         DECODE_ERROR, DELTA_BASE_MISMATCH, or the sink's reason)
 */
tml_reason_t tml_transfer_feed(tml_transfer_t *t, const uint8_t *data, size_t len);

/**
 * @brief Check everything arrived and the output is the model the manifest names.
 * @param t the state
 * @return TML_REASON_OK, TRANSFER_TRUNCATED, DECODE_ERROR or MODEL_DIGEST_MISMATCH
 */
tml_reason_t tml_transfer_finish(tml_transfer_t *t);

/**
 * @brief Start a stand-alone compressed-stream decoder.
 * @param d the state
 * @param expected_size refuse a header declaring another size; -1 accepts any
 */
void tml_lz_init(tml_lz_t *d, int64_t expected_size);

/**
 * @brief Decode more compressed input.
 * @param d the state
 * @param data input bytes
 * @param len count
 * @param final true when this is the end of the input
 * @param sink receives decoded bytes
 * @param ctx passed to sink
 * @return TML_REASON_OK, DECODE_ERROR, TRANSFER_OVERFLOW, or the sink's reason
 */
tml_reason_t tml_lz_feed(tml_lz_t *d, const uint8_t *data, size_t len, bool final,
                         tml_sink_fn sink, void *ctx);

/** @brief Return whether the stream ended exactly. @param d the state @return done */
bool tml_lz_done(const tml_lz_t *d);

/**
 * @brief Start a delta interpreter.
 * @param d the state
 * @param read base reader
 * @param read_ctx its context
 * @param base_sha256 expected base digest (NULL: not checked)
 * @param expected_size required target size, -1 for any
 */
void tml_delta_init(tml_delta_t *d, tml_base_read_fn read, void *read_ctx,
                    const uint8_t *base_sha256, int64_t expected_size);

/**
 * @brief Interpret more instruction bytes.
 * @param d the state
 * @param data instruction bytes
 * @param len count
 * @param sink receives target bytes
 * @param ctx passed to sink
 * @return TML_REASON_OK, DECODE_ERROR, DELTA_BASE_MISMATCH, TRANSFER_OVERFLOW, sink's reason
 */
tml_reason_t tml_delta_feed(tml_delta_t *d, const uint8_t *data, size_t len, tml_sink_fn sink,
                            void *ctx);

/** @brief Return whether the whole target was produced. @param d the state @return done */
bool tml_delta_done(const tml_delta_t *d);

#endif /* TML_TRANSFER_H */
