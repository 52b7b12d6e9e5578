/* SPDX-License-Identifier: Apache-2.0 */
/*
 * SHA-256's block function on an x86 CPU's SHA extensions, for the host transfer library only
 * (make libtransfer, TML_SHA256_X86): src/sha.c keeps its buffering and padding and calls this
 * for whole blocks when the CPU has the instructions. A simulated device hashes each package
 * twice (transfer and model bytes, ~160 KB): 0.64 ms per device with the portable rounds,
 * a fifth of its whole decode, against ~0.1 ms here. Same function, same digests (the
 * library's tests compare them with hashlib's).
 *
 * The state in the two registers the instructions take: ABEF holds a, b, e, f and CDGH holds
 * c, d, g, h (highest lane first). Each sha256rnds2 runs two rounds, with the message words
 * plus constants in the low lanes of its third operand, and returns the new ABEF; the old
 * ABEF becomes the new CDGH, so two calls in a row leave the registers in their roles.
 */
#include "sha256_x86.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>

static uint32_t k256[64]; /* SHA-256's constants, set by tml_sha256_x86_available() */

#define TARGET __attribute__((target("sha,ssse3,sse4.1")))

TARGET void tml_sha256_x86_block(uint32_t h[8], const uint8_t block[64])
{
    const __m128i bswap = _mm_setr_epi8(3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12);
    __m128i lo = _mm_loadu_si128((const __m128i *)(const void *)&h[0]); /* d c b a */
    __m128i hi = _mm_loadu_si128((const __m128i *)(const void *)&h[4]); /* h g f e */
    lo = _mm_shuffle_epi32(lo, 0xB1);                                  /* c d a b */
    hi = _mm_shuffle_epi32(hi, 0x1B);                                  /* e f g h */
    __m128i abef = _mm_alignr_epi8(lo, hi, 8);
    __m128i cdgh = _mm_blend_epi16(hi, lo, 0xF0);
    const __m128i abef0 = abef, cdgh0 = cdgh;

    /* The schedule four words at a time: m[g & 3] holds W[4g-16..4g-13] when group g starts. */
    __m128i m[4];
    for (int i = 0; i < 4; i++) {
        m[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(const void *)(block + 16 * i)),
                                bswap);
    }
#pragma GCC unroll 16
    for (int g = 0; g < 16; g++) {
        __m128i w = m[g & 3];
        if (g >= 4) {
            /* W[t-16] + s0(W[t-15]) + W[t-7], then + s1(W[t-2]) */
            w = _mm_sha256msg1_epu32(m[g & 3], m[(g + 1) & 3]);
            w = _mm_add_epi32(w, _mm_alignr_epi8(m[(g + 3) & 3], m[(g + 2) & 3], 4));
            w = _mm_sha256msg2_epu32(w, m[(g + 3) & 3]);
            m[g & 3] = w;
        }
        __m128i wk = _mm_add_epi32(w, _mm_loadu_si128((const __m128i *)(const void *)&k256[4 * g]));
        cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk);
        abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(wk, 0x0E));
    }

    abef = _mm_add_epi32(abef, abef0);
    cdgh = _mm_add_epi32(cdgh, cdgh0);
    __m128i fe = _mm_shuffle_epi32(abef, 0x1B); /* f e b a -> a b e f, lowest lane first */
    __m128i hg = _mm_shuffle_epi32(cdgh, 0xB1); /* h g d c -> g h c d */
    _mm_storeu_si128((__m128i *)(void *)&h[0], _mm_blend_epi16(fe, hg, 0xF0));
    _mm_storeu_si128((__m128i *)(void *)&h[4], _mm_alignr_epi8(hg, fe, 8));
}

bool tml_sha256_x86_available(const uint64_t k512[64])
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSSE3) || !(c & bit_SSE4_1)) {
        return false;
    }
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(b & bit_SHA)) {
        return false;
    }
    for (int i = 0; i < 64; i++) {
        k256[i] = (uint32_t)(k512[i] >> 32); /* SHA-256's are the high halves of SHA-512's */
    }
    return true;
}

#else

void tml_sha256_x86_block(uint32_t h[8], const uint8_t block[64])
{
    (void)h;
    (void)block;
}

bool tml_sha256_x86_available(const uint64_t k512[64])
{
    (void)k512;
    return false;
}

#endif
