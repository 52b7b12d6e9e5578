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
 * a constant-time double-and-add-always ladder over the base point B, which Monocypher already
 * keeps (b_window[0], for verification). Every step doubles, adds B and keeps the sum or not
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

void tml_eddsa_scalarbase_small(u8 point[32], const u8 scalar[32])
{
    ge p, sum, tmp;
    fe a, b;
    ge_zero(&p);
    for (int i = 255; i >= 0; i--) {
        int bit = scalar_bit(scalar, i);
        ge_double(&p, &p, &tmp);
        ge_madd(&sum, &p, &b_window[0], a, b);
        fe_ccopy(p.X, sum.X, bit);
        fe_ccopy(p.Y, sum.Y, bit);
        fe_ccopy(p.Z, sum.Z, bit);
        fe_ccopy(p.T, sum.T, bit);
    }
    ge_tobytes(point, &p);
    WIPE_CTX(&p);
    WIPE_CTX(&sum);
    WIPE_CTX(&tmp);
    WIPE_BUFFER(a);
    WIPE_BUFFER(b);
}
