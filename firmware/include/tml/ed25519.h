/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file ed25519.h
 * @brief Ed25519 (RFC 8032, SHA-512): verification, and signing with the device's own key.
 *
 * SHA-512 is this firmware's; the curve arithmetic is Monocypher 4's low-level
 * crypto_eddsa_reduce() and (over its point arithmetic) tml_eddsa_check_small() to verify, and
 * crypto_eddsa_trim_scalar(), crypto_eddsa_mul_add() and (over Monocypher's point arithmetic)
 * tml_eddsa_scalarbase_small() to sign
 * (fetched at build time). Keys are RFC 8032 32-byte seeds; signing is deterministic. The message
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

/**
 * @brief Derive the public key A of a 32-byte secret seed (RFC 8032 5.1.5).
 * @param public_key receives 32 bytes
 * @param seed the secret seed (owned by the caller; wipe it after use)
 */
void tml_ed25519_public_key(uint8_t public_key[32], const uint8_t seed[32]);

/**
 * @brief Sign a message with the key of a 32-byte secret seed (RFC 8032 5.1.6, PureEdDSA).
 *        Constant time in the secret; intermediate secrets are wiped.
 * @param signature receives R || S, 64 bytes
 * @param seed the secret seed
 * @param msg the message (hashed twice: it must stay unchanged during the call)
 * @param len its length
 */
void tml_ed25519_sign(uint8_t signature[64], const uint8_t seed[32], const uint8_t *msg,
                      size_t len);

/**
 * @brief [scalar]B, B the Ed25519 base point, encoded (RFC 8032): crypto_eddsa_scalarbase()'s
 *        result without its comb tables, in constant time (src/monocypher_base.c).
 * @param point receives the encoded point
 * @param scalar 32 bytes, little-endian, any value below 2^256
 */
void tml_eddsa_scalarbase_small(uint8_t point[32], const uint8_t scalar[32]);

/**
 * @brief Check Ed25519's equation [8]([s]B - [h]A - R) == 0 as crypto_eddsa_check_equation()
 *        does (same refusals), without its table of 8 multiples of B (src/monocypher_base.c).
 * @param signature R || s
 * @param public_key A, 32 bytes
 * @param h SHA-512(R || A || message) mod L
 * @return 0 when the signature holds, -1 otherwise
 */
int tml_eddsa_check_small(const uint8_t signature[64], const uint8_t public_key[32],
                          const uint8_t h[32]);

#endif /* TML_ED25519_H */
