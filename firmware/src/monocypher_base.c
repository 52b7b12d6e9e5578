/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Monocypher 4 (fetched at build time into third_party/, never committed), compiled together
 * with one function of ours over its internal point arithmetic: the fixed-base scalar
 * multiplication Ed25519 signing needs, in a small form. By default the Monocypher compiled is
 * the copy tools/monocypher_small.py makes at build time, whose field multiplication is
 * compact (the same results; MONO_COMPACT=0 compiles monocypher.c as it is).
 *
 * crypto_eddsa_scalarbase() uses two comb tables (16 precomputed points, 1,920 bytes) and their
 * constant-time lookup; this firmware signs only at enrollment, so it trades speed for flash:
 * a constant-time double-and-add-always ladder over the base point B (decoded from its 32-byte
 * encoding at each use). Every step doubles, adds B and keeps the sum or not
 * with fe_ccopy() (a mask, no branch, no secret-dependent address), so the time does not
 * depend on the scalar. The twisted Edwards formulas are complete for Ed25519 (the identity
 * and doublings need no special case). Results are identical to crypto_eddsa_scalarbase()
 * (tests/test_crypto.c compares them, and checks RFC 8032's keys and signatures).
 */
#ifdef TML_MONOCYPHER_PRISTINE
#include "monocypher.c"
#else
/* build/gen: monocypher.c with a compact fe_mul and fe_sq = fe_mul (tools/monocypher_small.py) */
#include "monocypher_small.c"
#endif

void tml_eddsa_scalarbase_small(u8 point[32], const u8 scalar[32]);
int tml_eddsa_check_small(const u8 signature[64], const u8 public_key[32], const u8 h[32]);

/* B, the Ed25519 base point, from its standard encoding (y = 4/5, x even): decoding gives -B,
 * negating x and t gives B. Computed, not stored: no precomputed multiples of B are linked. */
static void base_point(ge_cached *b)
{
    static const u8 encoded[32] = {0x58, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
                                   0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
                                   0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
                                   0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66};
    ge p;
    (void)ge_frombytes_neg_vartime(&p, encoded);
    fe_neg(p.X, p.X);
    fe_neg(p.T, p.T);
    ge_cache(b, &p);
}

void tml_eddsa_scalarbase_small(u8 point[32], const u8 scalar[32])
{
    ge p, sum, tmp;
    ge_cached b;
    base_point(&b);
    ge_zero(&p);
    for (int i = 255; i >= 0; i--) {
        int bit = scalar_bit(scalar, i);
        ge_double(&p, &p, &tmp);
        ge_add(&sum, &p, &b);
        fe_ccopy(p.X, sum.X, bit);
        fe_ccopy(p.Y, sum.Y, bit);
        fe_ccopy(p.Z, sum.Z, bit);
        fe_ccopy(p.T, sum.T, bit);
    }
    ge_tobytes(point, &p);
    WIPE_CTX(&p);
    WIPE_CTX(&sum);
    WIPE_CTX(&tmp);
}

/*
 * crypto_eddsa_check_equation()'s check, [8]([s]B - [h]A - R) == 0 with the same refusals (A
 * or R not on the curve, s >= L), by one double-and-add pass over the bits of s and h (public
 * data: variable time is fine) instead of sliding windows over 8 precomputed multiples of B
 * (960 bytes of flash). About 1.4 times the additions of Monocypher's; verification runs once
 * per offer or trust record.
 */
int tml_eddsa_check_small(const u8 signature[64], const u8 public_key[32], const u8 h[32])
{
    ge minus_a, minus_r, sum, tmp;
    ge_cached b, a;
    u32 s32[8];
    u8 check[32];
    static const u8 zero_point[32] = {1}; /* the point of order 1 */
    const u8 *s = signature + 32;
    load32_le_buf(s32, s, 8);
    if (ge_frombytes_neg_vartime(&minus_a, public_key) ||
        ge_frombytes_neg_vartime(&minus_r, signature) || is_above_l(s32)) {
        return -1;
    }
    base_point(&b);
    ge_cache(&a, &minus_a);
    ge_zero(&sum);
    for (int i = 255; i >= 0; i--) {
        ge_double(&sum, &sum, &tmp);
        if (scalar_bit(s, i)) {
            ge_add(&sum, &sum, &b);
        }
        if (scalar_bit(h, i)) {
            ge_add(&sum, &sum, &a);
        }
    }
    ge_cache(&a, &minus_r);
    ge_add(&sum, &sum, &a);
    for (int i = 0; i < 3; i++) {
        ge_double(&sum, &sum, &tmp); /* [8]: no low-order component survives */
    }
    ge_tobytes(check, &sum);
    return crypto_verify32(check, zero_point);
}
