/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Ed25519 verification, RFC 8032 section 5.1.7: k = SHA-512(R || A || M) mod L, then
 * [S]B = R + [k]A. The hash is ours; the group equation is Monocypher's (which also refuses
 * S >= L and points off the curve).
 *
 * Signing, RFC 8032 section 5.1.6: h = SHA-512(seed), a = clamp(h[0..32)), A = [a]B;
 * r = SHA-512(h[32..64) || M) mod L, R = [r]B, k = SHA-512(R || A || M) mod L, S = r + k a mod L.
 * The hashes are ours; trim, reduce and mul_add are Monocypher's, and [x]B is
 * tml_eddsa_scalarbase_small() (src/monocypher_base.c: Monocypher's point arithmetic without
 * crypto_eddsa_scalarbase()'s 1,920 bytes of comb tables; same results, constant time).
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

/* out = SHA-512(what sha hashed) mod L; the hash is wiped (it may be the secret nonce's). */
static void final_reduce(tml_sha512_t *sha, uint8_t out[32])
{
    uint8_t hash[64];
    tml_sha512_final(sha, hash);
    crypto_eddsa_reduce(out, hash);
    crypto_wipe(hash, sizeof(hash));
}

bool tml_ed25519_verify_finish(tml_ed25519_verify_t *v)
{
    uint8_t h_ram[32];
    final_reduce(&v->sha, h_ram);
    return tml_eddsa_check_small(v->signature, v->public_key, h_ram) == 0;
}

bool tml_ed25519_verify(const uint8_t signature[64], const uint8_t public_key[32],
                        const uint8_t *msg, size_t len)
{
    tml_ed25519_verify_t v;
    tml_ed25519_verify_start(&v, signature, public_key);
    tml_ed25519_verify_update(&v, msg, len);
    return tml_ed25519_verify_finish(&v);
}

/* a (clamped) and the nonce prefix from the seed: h = SHA-512(seed). */
static void expand(uint8_t h[64], const uint8_t seed[32])
{
    tml_sha512(seed, 32, h);
    crypto_eddsa_trim_scalar(h, h);
}

void tml_ed25519_public_key(uint8_t public_key[32], const uint8_t seed[32])
{
    uint8_t h[64];
    expand(h, seed);
    tml_eddsa_scalarbase_small(public_key, h);
    crypto_wipe(h, sizeof(h));
}

void tml_ed25519_sign(uint8_t signature[64], const uint8_t seed[32], const uint8_t *msg,
                      size_t len)
{
    uint8_t h[64], public_key[32], r[32], k[32];
    tml_ed25519_verify_t v; /* its hash: r = H(prefix || M), then k = H(R || A || M) */
    expand(h, seed);
    tml_eddsa_scalarbase_small(public_key, h);
    tml_sha512_init(&v.sha);
    tml_sha512_update(&v.sha, h + 32, 32);
    tml_ed25519_verify_update(&v, msg, len);
    final_reduce(&v.sha, r);
    tml_eddsa_scalarbase_small(signature, r);
    tml_ed25519_verify_start(&v, signature, public_key);
    tml_ed25519_verify_update(&v, msg, len);
    final_reduce(&v.sha, k);
    crypto_eddsa_mul_add(signature + 32, k, h, r);
    crypto_wipe(h, sizeof(h));
    crypto_wipe(r, sizeof(r));
    crypto_wipe(&v, sizeof(v));
}
