/* SPDX-License-Identifier: Apache-2.0 */
/* Shared pieces of the harnesses: the failure hook, the test keyring, a COSE signer, sinks. */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "monocypher.h"
#include "tml/cbor.h"
#include "tml/ed25519.h"
#include "tml/sha.h"
#include "trusted_keys.h"

void fuzz_fail(const char *file, int line, const char *what)
{
    fprintf(stderr, "FUZZ_CHECK failed: %s:%d: %s\n", file, line, what);
    abort();
}

const tml_keyring_t *fuzz_keyring(void)
{
    static const tml_key_t *ptrs[TML_MAX_BUILTIN_KEYS];
    static tml_keyring_t ring;
    if (!ring.keys) {
        size_t n;
        const tml_key_t *keys = tml_trusted_keys(&n);
        for (size_t i = 0; i < n && i < TML_MAX_BUILTIN_KEYS; i++) {
            ptrs[ring.count++] = &keys[i];
        }
        ring.keys = ptrs;
    }
    return &ring;
}

/* Ed25519 (RFC 8032 5.1.6) with Monocypher's table-driven base-point multiplication: the
 * device's own signing uses the compact one, slow by design (flash), and the fuzzer signs every
 * input. The device's verification checks the result. */
static void sign(uint8_t sig[64], const uint8_t h[64], const uint8_t pub[32], const uint8_t *msg,
                 size_t len)
{
    uint8_t digest[64], r[32], k[32];
    tml_sha512_t c;
    tml_sha512_init(&c);
    tml_sha512_update(&c, h + 32, 32);
    tml_sha512_update(&c, msg, len);
    tml_sha512_final(&c, digest);
    crypto_eddsa_reduce(r, digest);
    crypto_eddsa_scalarbase(sig, r);
    tml_sha512_init(&c);
    tml_sha512_update(&c, sig, 32);
    tml_sha512_update(&c, pub, 32);
    tml_sha512_update(&c, msg, len);
    tml_sha512_final(&c, digest);
    crypto_eddsa_reduce(k, digest);
    crypto_eddsa_mul_add(sig + 32, k, h, r);
}

/* The vectors' SIGNER: seed = SHA-256("tml test signing key 1") (generate.py private_key):
 * h = SHA-512(seed) with its scalar clamped, the public key and its kid. */
static void signer(uint8_t h[64], uint8_t pub[32], uint8_t kid[TML_KEY_ID_BYTES])
{
    static const char label[] = "tml test signing key 1";
    uint8_t seed[32];
    tml_sha256(label, sizeof(label) - 1, seed);
    tml_sha512(seed, 32, h);
    crypto_eddsa_trim_scalar(h, h);
    crypto_eddsa_scalarbase(pub, h);
    tml_key_id(pub, kid);
}

size_t fuzz_sign1(const uint8_t *payload, size_t len, uint8_t *out, size_t cap)
{
    static const uint8_t protected_hdr[] = {0xA1, 0x01, 0x27}; /* {1: -8} */
    static uint8_t h[64], pub[32], kid[TML_KEY_ID_BYTES], sig_structure[TML_MAX_OFFER_BYTES + 64];
    static int ready;
    uint8_t sig[64];
    size_t n = 0;
    if (!ready) {
        signer(h, pub, kid);
        /* The signer must be one the device trusts, its signatures ones it accepts: else the
         * payload decoders would silently never run. */
        const tml_keyring_t *ring = fuzz_keyring();
        int trusted = 0;
        for (size_t i = 0; i < ring->count; i++) {
            trusted |= memcmp(ring->keys[i]->kid, kid, sizeof(kid)) == 0;
        }
        FUZZ_CHECK(trusted);
        sign(sig, h, pub, kid, sizeof(kid));
        FUZZ_CHECK(tml_ed25519_verify(sig, pub, kid, sizeof(kid)));
        ready = 1;
    }
    /* Sig_structure = ["Signature1", protected, h'', payload] (RFC 9052 4.4) */
    tml_cbor_writer_t w;
    tml_cbor_writer_init(&w, sig_structure, sizeof(sig_structure));
    tml_cbor_put_head(&w, TML_CBOR_ARRAY, 4);
    tml_cbor_put_text(&w, "Signature1");
    tml_cbor_put_bytes(&w, protected_hdr, sizeof(protected_hdr));
    tml_cbor_put_bytes(&w, NULL, 0);
    tml_cbor_put_bytes(&w, payload, len);
    if (tml_cbor_finish(&w, &n) != TML_OK) {
        return 0;
    }
    sign(sig, h, pub, sig_structure, n);
    tml_cbor_writer_init(&w, out, cap);
    tml_cbor_put_head(&w, TML_CBOR_TAG, TML_COSE_SIGN1_TAG);
    tml_cbor_put_head(&w, TML_CBOR_ARRAY, 4);
    tml_cbor_put_bytes(&w, protected_hdr, sizeof(protected_hdr));
    tml_cbor_put_head(&w, TML_CBOR_MAP, 1);
    tml_cbor_put_uint(&w, TML_COSE_HEADER_KID);
    tml_cbor_put_bytes(&w, kid, sizeof(kid));
    tml_cbor_put_bytes(&w, payload, len);
    tml_cbor_put_bytes(&w, sig, sizeof(sig));
    return tml_cbor_finish(&w, &n) == TML_OK ? n : 0;
}

tml_reason_t fuzz_out_sink(void *ctx, const uint8_t *data, size_t len)
{
    fuzz_out_t *o = ctx;
    FUZZ_CHECK(len >= 1); /* transfer.h: a sink gets >= 1 byte */
    if (len > o->cap - o->len) {
        o->overflowed = 1;
        return TML_REASON_TRANSFER_OVERFLOW;
    }
    memcpy(o->buf + o->len, data, len);
    o->len += len;
    return TML_REASON_OK;
}

tml_reason_t fuzz_base_read(void *ctx, uint32_t offset, uint8_t *buf, size_t len)
{
    (void)ctx;
    FUZZ_CHECK(len <= 128); /* transfer.h: the delta reads pieces of at most 128 bytes */
    if ((uint64_t)offset + len > FUZZ_BASE_BYTES) {
        return TML_REASON_DELTA_BASE_MISMATCH;
    }
    memcpy(buf, fuzz_delta_base + offset, len);
    return TML_REASON_OK;
}

void fuzz_split_init(fuzz_split_t *s, uint8_t seed)
{
    s->state = 0x9E3779B9u ^ seed;
    s->max = seed == 0 ? 0 : 1u + (seed % 8u) * (seed % 8u) * 9u; /* 1 .. 442 bytes */
}

size_t fuzz_split_next(fuzz_split_t *s, size_t left)
{
    if (s->max == 0) {
        return left;
    }
    s->state ^= s->state << 13; /* xorshift32 */
    s->state ^= s->state >> 17;
    s->state ^= s->state << 5;
    size_t n = s->state % (s->max + 1u); /* 0: an empty call, as an empty chunk makes */
    return n < left ? n : left;
}

size_t fuzz_signed_input(const uint8_t *data, size_t size, uint8_t *cose, uint8_t *mode,
                         const uint8_t **msg)
{
    if (size < 1 || size > TML_MAX_OFFER_BYTES + 1) {
        return 0;
    }
    *mode = data[0];
    if (!(*mode & 1)) {
        *msg = data + 1;
        return size - 1;
    }
    *msg = cose;
    return fuzz_sign1(data + 1, size - 1, cose, TML_MAX_OFFER_BYTES + 256);
}
