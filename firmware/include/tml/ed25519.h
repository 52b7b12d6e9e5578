/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file ed25519.h
 * @brief Ed25519 signature verification (RFC 8032, SHA-512), verify only.
 *
 * SHA-512 is this firmware's; the curve arithmetic is Monocypher 4's low-level
 * crypto_eddsa_reduce() and crypto_eddsa_check_equation() (fetched at build time). The message
 * can be hashed in pieces, so a COSE Sig_structure never needs to be assembled in RAM.
 * Uses about 2-3 KB of stack. Not for interrupts.
 */
#ifndef TML_ED25519_H
#define TML_ED25519_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tml/sha.h"

/** @brief A verification in progress (the message hash). */
typedef struct {
    tml_sha512_t sha;
    const uint8_t *signature;
    const uint8_t *public_key;
} tml_ed25519_verify_t;

/**
 * @brief Start verifying: hashes R and A.
 * @param v the context
 * @param signature 64 bytes, must stay valid until tml_ed25519_verify_finish()
 * @param public_key 32 bytes, same lifetime
 */
void tml_ed25519_verify_start(tml_ed25519_verify_t *v, const uint8_t signature[64],
                              const uint8_t public_key[32]);

/**
 * @brief Hash the next piece of the signed message.
 * @param v the context
 * @param data bytes
 * @param len count
 */
void tml_ed25519_verify_update(tml_ed25519_verify_t *v, const void *data, size_t len);

/**
 * @brief Finish: check the group equation (S < L enforced).
 * @param v the context
 * @return true when the signature is valid
 */
bool tml_ed25519_verify_finish(tml_ed25519_verify_t *v);

/**
 * @brief Verify a signature over a message in one call.
 * @param signature 64 bytes
 * @param public_key 32 bytes
 * @param msg the message
 * @param len its length
 * @return true when valid
 */
bool tml_ed25519_verify(const uint8_t signature[64], const uint8_t public_key[32],
                        const uint8_t *msg, size_t len);

#endif /* TML_ED25519_H */
