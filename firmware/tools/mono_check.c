/* SPDX-License-Identifier: Apache-2.0 */
/*
 * `make mono-check` (run by `make test`): the compact field multiplications of
 * tools/monocypher_small.py against Monocypher's own, limb for limb, on random field elements at
 * and inside fe_mul's input bounds (|even limbs| < 1.65 * 2^26, |odd limbs| < 1.65 * 2^25),
 * products, squares and aliased squares. The two Monocypher copies are compiled apart and only
 * these wrappers are kept global (objcopy), so they link side by side.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#ifdef MONO_SIDE
#include MONO_SIDE
#define CAT(a, b) a##b
#define NAME(a, b) CAT(a, b)
void NAME(mul_, MONO_TAG)(int32_t *h, const int32_t *f, const int32_t *g);
void NAME(sq_, MONO_TAG)(int32_t *h, const int32_t *f);
void NAME(small_, MONO_TAG)(int32_t *h, const int32_t *f, int32_t g);
void NAME(small_, MONO_TAG)(int32_t *h, const int32_t *f, int32_t g) { fe_mul_small(h, f, g); }
void NAME(mul_, MONO_TAG)(int32_t *h, const int32_t *f, const int32_t *g) { fe_mul(h, f, g); }
void NAME(sq_, MONO_TAG)(int32_t *h, const int32_t *f) { fe_sq(h, f); }
#else
void mul_compact(int32_t *h, const int32_t *f, const int32_t *g);
void mul_monocypher(int32_t *h, const int32_t *f, const int32_t *g);
void sq_compact(int32_t *h, const int32_t *f);
void sq_monocypher(int32_t *h, const int32_t *f);
void small_compact(int32_t *h, const int32_t *f, int32_t g);
void small_monocypher(int32_t *h, const int32_t *f, int32_t g);

static uint64_t state = 88172645463325252ULL;

static uint64_t next(void)
{
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

static int32_t limb(int i)
{
    int64_t bound = (i & 1) ? 55364812 : 110729625; /* 1.65 * 2^25, 1.65 * 2^26 */
    uint64_t r = next();
    if ((r & 7) == 0) {
        return (int32_t)(bound - 1);
    }
    if ((r & 7) == 1) {
        return (int32_t)(1 - bound);
    }
    return (int32_t)((int64_t)(r >> 8) % bound * ((r >> 3 & 1) ? -1 : 1));
}

int main(void)
{
    int32_t f[10], g[10], a[10], b[10];
    for (long n = 0; n < 1000000; n++) {
        for (int i = 0; i < 10; i++) {
            f[i] = limb(i);
            g[i] = limb(i);
        }
        mul_compact(a, f, g);
        mul_monocypher(b, f, g);
        int bad = memcmp(a, b, sizeof(a));
        sq_compact(a, f);
        sq_monocypher(b, f);
        bad |= memcmp(a, b, sizeof(a));
        memcpy(a, f, sizeof(a));
        mul_compact(a, a, a);
        bad |= memcmp(a, b, sizeof(a));
        /* the constants Monocypher multiplies by, and random small ones */
        static const int32_t smalls[5] = {121666, 2, -2, 1, -1};
        int32_t g0 = (n & 1) ? smalls[n / 2 % 5] : (int32_t)(next() % 131072) - 65536;
        small_compact(a, f, g0);
        small_monocypher(b, f, g0);
        bad |= memcmp(a, b, sizeof(a));
        if (bad) {
            printf("FAIL compact field multiplication differs (case %ld)\n", n);
            return 1;
        }
    }
    printf("compact fe_mul/fe_sq/fe_mul_small == Monocypher's on 1,000,000 random elements\n");
    return 0;
}
#endif
