/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file sha.h
 * @brief SHA-256 and SHA-512 (FIPS 180-4), streaming, no allocation.
 *
 * Contexts are owned by the caller. Functions are reentrant (no global state).
 */
#ifndef TML_SHA_H
#define TML_SHA_H

#include <stddef.h>
#include <stdint.h>

/** @brief SHA-256 state: 104 bytes. */
typedef struct {
    uint32_t h[8];
    uint64_t total;
    uint8_t block[64];
} tml_sha256_t;

/** @brief SHA-512 state: 208 bytes. */
typedef struct {
    uint64_t h[8];
    uint64_t total;
    uint8_t block[128];
} tml_sha512_t;

/** @brief Start a SHA-256 digest. @param c the context */
void tml_sha256_init(tml_sha256_t *c);
/** @brief Hash more bytes. @param c the context @param data bytes @param len count */
void tml_sha256_update(tml_sha256_t *c, const void *data, size_t len);
/** @brief Finish and write 32 bytes. @param c the context @param out digest */
void tml_sha256_final(tml_sha256_t *c, uint8_t out[32]);
/** @brief Hash a buffer at once. @param data bytes @param len count @param out digest */
void tml_sha256(const void *data, size_t len, uint8_t out[32]);

/** @brief Start a SHA-512 digest. @param c the context */
void tml_sha512_init(tml_sha512_t *c);
/** @brief Hash more bytes. @param c the context @param data bytes @param len count */
void tml_sha512_update(tml_sha512_t *c, const void *data, size_t len);
/** @brief Finish and write 64 bytes. @param c the context @param out digest */
void tml_sha512_final(tml_sha512_t *c, uint8_t out[64]);
/** @brief Hash a buffer at once. @param data bytes @param len count @param out digest */
void tml_sha512(const void *data, size_t len, uint8_t out[64]);

#endif /* TML_SHA_H */
