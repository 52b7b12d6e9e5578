/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file sha256_x86.h
 * @brief SHA-256's block function on x86 SHA extensions (host transfer library only).
 */
#ifndef TML_SHA256_X86_H
#define TML_SHA256_X86_H

#include <stdbool.h>
#include <stdint.h>

/**
 * @brief Whether this CPU runs tml_sha256_x86_block (SHA, SSSE3, SSE4.1); also takes its
 *        constants. Call once before the first block.
 * @param k512 the first 64 of SHA-512's round constants (SHA-256's are their high halves)
 * @return true when the block function may be used
 */
bool tml_sha256_x86_available(const uint64_t k512[64]);

/**
 * @brief Compress one 64-byte block into the chaining state, as FIPS 180-4 section 6.2.2.
 * @param h the state, a..h
 * @param block the message block
 */
void tml_sha256_x86_block(uint32_t h[8], const uint8_t block[64]);

/**
 * @brief Whether src/sha.c, built with TML_SHA256_X86, hashes with this block function.
 * @return true on a CPU with the SHA extensions
 */
bool tml_sha256_accelerated(void);

#endif /* TML_SHA256_X86_H */
