/* SPDX-License-Identifier: Apache-2.0 */
/* SHA-256 (FIPS 180-4 section 6.2), compact: one 64-entry constant table. */
#include <string.h>

#include "tml/sha.h"

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void compress(uint32_t h[8], const uint8_t *p)
{
    uint32_t w[16];
    uint32_t s[8];
    memcpy(s, h, sizeof(s));
    for (int i = 0; i < 64; i++) {
        uint32_t wi;
        if (i < 16) {
            wi = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
                 (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
        } else {
            uint32_t a = w[(i - 15) & 15], b = w[(i - 2) & 15];
            uint32_t s0 = ROR(a, 7) ^ ROR(a, 18) ^ (a >> 3);
            uint32_t s1 = ROR(b, 17) ^ ROR(b, 19) ^ (b >> 10);
            wi = w[i & 15] + s0 + w[(i - 7) & 15] + s1;
        }
        w[i & 15] = wi;
        uint32_t e = s[4];
        uint32_t t1 = s[7] + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & s[5]) ^ (~e & s[6])) +
                      K[i] + wi;
        uint32_t a = s[0];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & s[1]) ^ (a & s[2]) ^ (s[1] & s[2]));
        memmove(s + 1, s, 7 * sizeof(uint32_t));
        s[4] += t1;
        s[0] = t1 + t2;
    }
    for (int i = 0; i < 8; i++) {
        h[i] += s[i];
    }
}

void tml_sha256_init(tml_sha256_t *c)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, iv, sizeof(iv));
    c->total = 0;
}

void tml_sha256_update(tml_sha256_t *c, const void *data, size_t len)
{
    const uint8_t *p = data;
    size_t used = (size_t)(c->total & 63);
    c->total += len;
    if (used) {
        size_t take = 64 - used < len ? 64 - used : len;
        memcpy(c->block + used, p, take);
        p += take;
        len -= take;
        if (used + take < 64) {
            return;
        }
        compress(c->h, c->block);
    }
    for (; len >= 64; p += 64, len -= 64) {
        compress(c->h, p);
    }
    if (len) {
        memcpy(c->block, p, len);
    }
}

void tml_sha256_final(tml_sha256_t *c, uint8_t out[32])
{
    uint64_t bits = c->total * 8;
    size_t used = (size_t)(c->total & 63);
    c->block[used++] = 0x80;
    if (used > 56) {
        memset(c->block + used, 0, 64 - used);
        compress(c->h, c->block);
        used = 0;
    }
    memset(c->block + used, 0, 56 - used);
    for (int i = 0; i < 8; i++) {
        c->block[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
    }
    compress(c->h, c->block);
    for (int i = 0; i < 32; i++) {
        out[i] = (uint8_t)(c->h[i / 4] >> (24 - 8 * (i % 4)));
    }
}

void tml_sha256(const void *data, size_t len, uint8_t out[32])
{
    tml_sha256_t c;
    tml_sha256_init(&c);
    tml_sha256_update(&c, data, len);
    tml_sha256_final(&c, out);
}
