/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Ed25519 verification, RFC 8032 section 5.1.7: k = SHA-512(R || A || M) mod L, then
 * [S]B = R + [k]A. The hash is ours; the group equation is Monocypher's (which also refuses
 * S >= L and points off the curve).
 */
#include "tml/ed25519.h"

#include "monocypher.h"

void tml_ed25519_verify_start(tml_ed25519_verify_t *v, const uint8_t signature[64],
                              const uint8_t public_key[32])
{
    v->signature = signature;
    v->public_key = public_key;
    tml_sha512_init(&v->sha);
    tml_sha512_update(&v->sha, signature, 32);
    tml_sha512_update(&v->sha, public_key, 32);
}

void tml_ed25519_verify_update(tml_ed25519_verify_t *v, const void *data, size_t len)
{
    tml_sha512_update(&v->sha, data, len);
}

bool tml_ed25519_verify_finish(tml_ed25519_verify_t *v)
{
    uint8_t hash[64];
    uint8_t h_ram[32];
    tml_sha512_final(&v->sha, hash);
    crypto_eddsa_reduce(h_ram, hash);
    return crypto_eddsa_check_equation(v->signature, v->public_key, h_ram) == 0;
}

bool tml_ed25519_verify(const uint8_t signature[64], const uint8_t public_key[32],
                        const uint8_t *msg, size_t len)
{
    tml_ed25519_verify_t v;
    tml_ed25519_verify_start(&v, signature, public_key);
    tml_ed25519_verify_update(&v, msg, len);
    return tml_ed25519_verify_finish(&v);
}
