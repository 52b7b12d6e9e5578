/* SPDX-License-Identifier: Apache-2.0 */
/*
 * SHA-256 and SHA-512 (FIPS 180-4 sections 6.2 and 6.4), sharing what they can: the firmware
 * needs both (digests, Ed25519), so one constant table and one buffering and padding layer
 * serve the two. SHA-256's round constants and initial values are the high 32 bits of
 * SHA-512's (both are the first bits of the fractional parts of the cube and square roots of
 * the first primes), so only SHA-512's 64-bit table is stored.
 */
#include <string.h>

#include "tml/sha.h"

static const uint64_t K[80] = {
    0x428a2f98d728ae22ULL, 0x7137449123ef65cdULL, 0xb5c0fbcfec4d3b2fULL, 0xe9b5dba58189dbbcULL,
    0x3956c25bf348b538ULL, 0x59f111f1b605d019ULL, 0x923f82a4af194f9bULL, 0xab1c5ed5da6d8118ULL,
    0xd807aa98a3030242ULL, 0x12835b0145706fbeULL, 0x243185be4ee4b28cULL, 0x550c7dc3d5ffb4e2ULL,
    0x72be5d74f27b896fULL, 0x80deb1fe3b1696b1ULL, 0x9bdc06a725c71235ULL, 0xc19bf174cf692694ULL,
    0xe49b69c19ef14ad2ULL, 0xefbe4786384f25e3ULL, 0x0fc19dc68b8cd5b5ULL, 0x240ca1cc77ac9c65ULL,
    0x2de92c6f592b0275ULL, 0x4a7484aa6ea6e483ULL, 0x5cb0a9dcbd41fbd4ULL, 0x76f988da831153b5ULL,
    0x983e5152ee66dfabULL, 0xa831c66d2db43210ULL, 0xb00327c898fb213fULL, 0xbf597fc7beef0ee4ULL,
    0xc6e00bf33da88fc2ULL, 0xd5a79147930aa725ULL, 0x06ca6351e003826fULL, 0x142929670a0e6e70ULL,
    0x27b70a8546d22ffcULL, 0x2e1b21385c26c926ULL, 0x4d2c6dfc5ac42aedULL, 0x53380d139d95b3dfULL,
    0x650a73548baf63deULL, 0x766a0abb3c77b2a8ULL, 0x81c2c92e47edaee6ULL, 0x92722c851482353bULL,
    0xa2bfe8a14cf10364ULL, 0xa81a664bbc423001ULL, 0xc24b8b70d0f89791ULL, 0xc76c51a30654be30ULL,
    0xd192e819d6ef5218ULL, 0xd69906245565a910ULL, 0xf40e35855771202aULL, 0x106aa07032bbd1b8ULL,
    0x19a4c116b8d2d0c8ULL, 0x1e376c085141ab53ULL, 0x2748774cdf8eeb99ULL, 0x34b0bcb5e19b48a8ULL,
    0x391c0cb3c5c95a63ULL, 0x4ed8aa4ae3418acbULL, 0x5b9cca4f7763e373ULL, 0x682e6ff3d6b2b8a3ULL,
    0x748f82ee5defb2fcULL, 0x78a5636f43172f60ULL, 0x84c87814a1f0ab72ULL, 0x8cc702081a6439ecULL,
    0x90befffa23631e28ULL, 0xa4506cebde82bde9ULL, 0xbef9a3f7b2c67915ULL, 0xc67178f2e372532bULL,
    0xca273eceea26619cULL, 0xd186b8c721c0c207ULL, 0xeada7dd6cde0eb1eULL, 0xf57d4f7fee6ed178ULL,
    0x06f067aa72176fbaULL, 0x0a637dc5a2c898a6ULL, 0x113f9804bef90daeULL, 0x1b710b35131c471bULL,
    0x28db77f523047d84ULL, 0x32caab7b40c72493ULL, 0x3c9ebe0a15c9bebcULL, 0x431d67c49c100d4cULL,
    0x4cc5d4becb3e42b6ULL, 0x597f299cfc657e2aULL, 0x5fcb6fab3ad6faecULL, 0x6c44198c4a475817ULL};

static const uint64_t IV[8] = {0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL,
                               0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
                               0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL,
                               0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL};

#define ROR32(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define ROR64(x, n) (((x) >> (n)) | ((x) << (64 - (n))))

/* One block into the chaining state h (uint32_t[8] or uint64_t[8]). */
typedef void (*compress_fn)(void *h, const uint8_t *block);

static void compress256(void *state, const uint8_t *p);

#ifdef TML_SHA256_X86
/*
 * The host transfer library's build (make libtransfer): whole SHA-256 blocks on the CPU's SHA
 * instructions when it has them (tools/sha256_x86.c), chosen once as the library loads,
 * before any thread hashes. The firmware and its tests always take compress256.
 */
#include "sha256_x86.h"

static compress_fn compress256_block = compress256;

static void compress256_x86(void *state, const uint8_t *p)
{
    tml_sha256_x86_block(state, p);
}

__attribute__((constructor)) static void pick_compress256(void)
{
    if (tml_sha256_x86_available(K)) {
        compress256_block = compress256_x86;
    }
}

bool tml_sha256_accelerated(void)
{
    return compress256_block != compress256;
}
#else
#define compress256_block compress256
#endif

/*
 * The working variables a..h rotate by renaming, not by moving an array (a memmove call per
 * round); the schedule w is a 16-word ring.
 */
static void compress256(void *state, const uint8_t *p)
{
    uint32_t *h = state;
    uint32_t w[16];
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t wi;
        if (i < 16) {
            wi = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
                 (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
        } else {
            uint32_t x = w[(i - 15) & 15], y = w[(i - 2) & 15];
            uint32_t s0 = ROR32(x, 7) ^ ROR32(x, 18) ^ (x >> 3);
            uint32_t s1 = ROR32(y, 17) ^ ROR32(y, 19) ^ (y >> 10);
            wi = w[i & 15] + s0 + w[(i - 7) & 15] + s1;
        }
        w[i & 15] = wi;
        uint32_t t1 = k + (ROR32(e, 6) ^ ROR32(e, 11) ^ ROR32(e, 25)) + ((e & f) ^ (~e & g)) +
                      (uint32_t)(K[i] >> 32) + wi;
        uint32_t t2 = (ROR32(a, 2) ^ ROR32(a, 13) ^ ROR32(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += k;
}

static void compress512(void *state, const uint8_t *p)
{
    uint64_t *h = state;
    uint64_t w[16];
    uint64_t s[8];
    memcpy(s, h, sizeof(s));
    for (int i = 0; i < 80; i++) {
        uint64_t wi;
        if (i < 16) {
            wi = 0;
            for (int k = 0; k < 8; k++) {
                wi = (wi << 8) | p[8 * i + k];
            }
        } else {
            uint64_t a = w[(i - 15) & 15], b = w[(i - 2) & 15];
            uint64_t s0 = ROR64(a, 1) ^ ROR64(a, 8) ^ (a >> 7);
            uint64_t s1 = ROR64(b, 19) ^ ROR64(b, 61) ^ (b >> 6);
            wi = w[i & 15] + s0 + w[(i - 7) & 15] + s1;
        }
        w[i & 15] = wi;
        uint64_t e = s[4];
        uint64_t t1 = s[7] + (ROR64(e, 14) ^ ROR64(e, 18) ^ ROR64(e, 41)) +
                      ((e & s[5]) ^ (~e & s[6])) + K[i] + wi;
        uint64_t a = s[0];
        uint64_t t2 = (ROR64(a, 28) ^ ROR64(a, 34) ^ ROR64(a, 39)) +
                      ((a & s[1]) ^ (a & s[2]) ^ (s[1] & s[2]));
        memmove(s + 1, s, 7 * sizeof(uint64_t));
        s[4] += t1;
        s[0] = t1 + t2;
    }
    for (int i = 0; i < 8; i++) {
        h[i] += s[i];
    }
}

/* Gather bytes into whole blocks of `size` (64 or 128) bytes for `compress`. */
static void md_update(void *h, uint8_t *block, uint64_t *total, size_t size,
                      compress_fn compress, const uint8_t *p, size_t len)
{
    size_t used = (size_t)(*total & (size - 1));
    *total += len;
    while (len) {
        size_t take = size - used < len ? size - used : len;
        memcpy(block + used, p, take);
        p += take;
        len -= take;
        used += take;
        if (used == size) {
            compress(h, block);
            used = 0;
        }
    }
}

/*
 * Pad (0x80, zeros, the bit length big-endian) and compress the last block or two. The length
 * field is size / 8 bytes (8 for SHA-256, 16 for SHA-512); messages here are far below 2^61
 * bytes, so all but its last 8 bytes are zero.
 */
static void md_final(void *h, uint8_t *block, uint64_t total, size_t size, compress_fn compress)
{
    size_t used = (size_t)(total & (size - 1));
    uint64_t bits = total * 8;
    block[used++] = 0x80;
    if (used > size - size / 8) {
        memset(block + used, 0, size - used);
        compress(h, block);
        used = 0;
    }
    memset(block + used, 0, size - 8 - used);
    for (int i = 1; i <= 8; i++) {
        block[size - i] = (uint8_t)bits;
        bits >>= 8;
    }
    compress(h, block);
}

void tml_sha256_init(tml_sha256_t *c)
{
    for (int i = 0; i < 8; i++) {
        c->h[i] = (uint32_t)(IV[i] >> 32);
    }
    c->total = 0;
}

void tml_sha256_update(tml_sha256_t *c, const void *data, size_t len)
{
    md_update(c->h, c->block, &c->total, sizeof(c->block), compress256_block, data, len);
}

void tml_sha256_final(tml_sha256_t *c, uint8_t out[32])
{
    md_final(c->h, c->block, c->total, sizeof(c->block), compress256_block);
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

void tml_sha512_init(tml_sha512_t *c)
{
    memcpy(c->h, IV, sizeof(IV));
    c->total = 0;
}

void tml_sha512_update(tml_sha512_t *c, const void *data, size_t len)
{
    md_update(c->h, c->block, &c->total, sizeof(c->block), compress512, data, len);
}

void tml_sha512_final(tml_sha512_t *c, uint8_t out[64])
{
    md_final(c->h, c->block, c->total, sizeof(c->block), compress512);
    for (int i = 0; i < 64; i++) {
        out[i] = (uint8_t)(c->h[i / 8] >> (56 - 8 * (i % 8)));
    }
}

void tml_sha512(const void *data, size_t len, uint8_t out[64])
{
    tml_sha512_t c;
    tml_sha512_init(&c);
    tml_sha512_update(&c, data, len);
    tml_sha512_final(&c, out);
}
