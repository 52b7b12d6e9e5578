/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file cbor.h
 * @brief Minimal CBOR (RFC 8949): a writer into a caller's buffer and a strict cursor reader.
 *
 * Only what the v1 formats need: unsigned and negative integers, byte and text strings,
 * arrays, maps, tags, simple values. Definite lengths only. Neither side allocates; the reader
 * returns pointers into the caller's input. Safe from an interrupt (no global state).
 */
#ifndef TML_CBOR_H
#define TML_CBOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tml/status.h"

/** @brief CBOR major types. */
enum {
    TML_CBOR_UINT = 0,
    TML_CBOR_NINT = 1,
    TML_CBOR_BYTES = 2,
    TML_CBOR_TEXT = 3,
    TML_CBOR_ARRAY = 4,
    TML_CBOR_MAP = 5,
    TML_CBOR_TAG = 6,
    TML_CBOR_SIMPLE = 7
};

/** @brief A writer: the caller owns buf; an overflow sticks until tml_cbor_finish(). */
typedef struct {
    uint8_t *buf;
    size_t cap;
    size_t len;
    bool overflow;
} tml_cbor_writer_t;

/**
 * @brief Start writing into buf.
 * @param w the writer
 * @param buf destination, owned by the caller for the writer's life
 * @param cap size of buf
 */
void tml_cbor_writer_init(tml_cbor_writer_t *w, uint8_t *buf, size_t cap);

/**
 * @brief Write a head (major type and argument) in its shortest form.
 * @param w the writer
 * @param major TML_CBOR_*
 * @param arg the argument (value, length or count)
 */
void tml_cbor_put_head(tml_cbor_writer_t *w, int major, uint64_t arg);

/** @brief Write an unsigned integer. @param w the writer @param v the value */
void tml_cbor_put_uint(tml_cbor_writer_t *w, uint64_t v);

/** @brief Write a signed integer. @param w the writer @param v the value */
void tml_cbor_put_int(tml_cbor_writer_t *w, int64_t v);

/**
 * @brief Write raw bytes (a string body, or pre-encoded CBOR).
 * @param w the writer
 * @param data the bytes (may be NULL when len is 0)
 * @param len how many
 */
void tml_cbor_put_raw(tml_cbor_writer_t *w, const void *data, size_t len);

/** @brief Write a byte string. @param w the writer @param data bytes @param len count */
void tml_cbor_put_bytes(tml_cbor_writer_t *w, const void *data, size_t len);

/** @brief Write a NUL-terminated text string. @param w the writer @param s UTF-8 text */
void tml_cbor_put_text(tml_cbor_writer_t *w, const char *s);

/**
 * @brief Return the encoded length, or an error if anything did not fit.
 * @param w the writer
 * @param len receives the number of bytes written
 * @return TML_OK or TML_ERR_NOSPACE
 */
tml_status_t tml_cbor_finish(const tml_cbor_writer_t *w, size_t *len);

/** @brief A read cursor over caller-owned bytes. */
typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} tml_cbor_reader_t;

/** @brief One decoded head. For strings, data points at the body (arg bytes long). */
typedef struct {
    uint8_t major;
    bool shortest; /**< the argument used the preferred (shortest) encoding */
    uint64_t arg;
    const uint8_t *start; /**< first byte of the item's head */
    const uint8_t *data;  /**< string body, NULL for other types */
} tml_cbor_item_t;

/**
 * @brief Start reading buf[0..len).
 * @param r the reader
 * @param buf input, owned by the caller for the reader's life
 * @param len its length
 */
void tml_cbor_reader_init(tml_cbor_reader_t *r, const uint8_t *buf, size_t len);

/**
 * @brief Read one head (and step over a string body). Indefinite lengths and the reserved
 *        additional-info values 28..30 are refused.
 * @param r the reader
 * @param item receives the head
 * @return TML_OK or TML_ERR_MALFORMED
 */
tml_status_t tml_cbor_read(tml_cbor_reader_t *r, tml_cbor_item_t *item);

/**
 * @brief Read one head and require its major type.
 * @param r the reader
 * @param major expected TML_CBOR_* type
 * @param item receives the head
 * @return TML_OK, TML_ERR_MALFORMED, or TML_ERR_RANGE for another type
 */
tml_status_t tml_cbor_expect(tml_cbor_reader_t *r, int major, tml_cbor_item_t *item);

/**
 * @brief Step over one complete item, checking it is well-formed: definite lengths, valid
 *        UTF-8 text, nesting at most max_depth deep.
 * @param r the reader
 * @param max_depth arrays, maps and tags allowed inside one another
 * @return TML_OK or TML_ERR_MALFORMED
 */
tml_status_t tml_cbor_skip(tml_cbor_reader_t *r, int max_depth);

/**
 * @brief Check that data[0..len) is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF).
 * @param data the bytes
 * @param len their count
 * @return true if valid
 */
bool tml_utf8_valid(const uint8_t *data, size_t len);

#endif /* TML_CBOR_H */
