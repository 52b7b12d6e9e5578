/* SPDX-License-Identifier: Apache-2.0 */
/* SHA-256/512 against FIPS 180-4 examples; Ed25519 against RFC 8032 section 7.1. */
#include <string.h>

#include "monocypher.h"
#include "tml/ed25519.h"
#include "tml/sha.h"
#include "tml_test.h"

static const char *const sha256_msgs[] = {"abc", "",
                                          "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"};
static const char *const sha256_out[] = {
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
    "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"};
static const char *const sha512_msgs[] = {
    "abc", "",
    "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmn"
    "opqrsmnopqrstnopqrstu"};
static const char *const sha512_out[] = {
    "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3fe"
    "ebbd454d4423643ce80e2a9ac94fa54ca49f",
    "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877e"
    "ec2f63b931bd47417a81a538327af927da3e",
    "8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018501d289e4900f7e4331b99dec4b5"
    "433ac7d329eeb6dd26545e96e55b874be909",
    "e718483d0ce769644e2e42c7bc15b4638e1f98b13b2044285632a803afa973ebde0ff244877ea60a4cb0432ce577"
    "c31beb009c5c2c49aa2e4eadb217ad8cc09b"};

/* Padding boundaries: "a" * n for these n (a length field that no longer fits, exact blocks),
 * digests from Python's hashlib. */
static const size_t pad_lens[] = {55, 56, 64, 111, 112, 128};
static const char *const pad_sha256[] = {
    "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318",
    "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a",
    "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb",
    "6374f73208854473827f6f6a3f43b1f53eaa3b82c21c1a6d69a2110b2a79baad",
    "f54353008a2553262ecdc4a34749563ba0950e8b0fc8652780b0a614b99683c1",
    "6836cf13bac400e9105071cd6af47084dfacad4e5e302c94bfed24e013afb73e",
};
static const char *const pad_sha512[] = {
    "b0220c772cbf6c1822e2cb38a437d0e1d58772417a4bbb21c961364f8b6143e0"
    "5aa6316dca8d1d7b19e16448419076395f6086cb55101fbd6d5497b148e1745f",
    "962b64aae357d2a4fee3ded8b539bdc9d325081822b0bfc55583133aab44f18b"
    "afe11d72a7ae16c79ce2ba620ae2242d5144809161945f1367f41b3972e26e04",
    "01d35c10c6c38c2dcf48f7eebb3235fb5ad74a65ec4cd016e2354c637a8fb49b"
    "695ef3c1d6f7ae4cd74d78cc9c9bcac9d4f23a73019998a7f73038a5c9b2dbde",
    "fa9121c7b32b9e01733d034cfc78cbf67f926c7ed83e82200ef8681819692176"
    "0b4beff48404df811b953828274461673c68d04e297b0eb7b2b4d60fc6b566a2",
    "c01d080efd492776a1c43bd23dd99d0a2e626d481e16782e75d54c2503b5dc32"
    "bd05f0f1ba33e568b88fd2d970929b719ecbb152f58f130a407c8830604b70ca",
    "b73d1929aa615934e61a871596b3f3b33359f42b8175602e89f7e06e5f658a24"
    "3667807ed300314b95cacdd579f3e33abdfbe351909519a846d465c59582f321",
};

/* RFC 8032 7.1: TEST 1, 2, 3 and TEST SHA(abc): public key, message, signature. */
static const char *const ed_secret[] = {
    "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
    "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
    "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
};
static const char *const ed[][3] = {
    {"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701c"
     "f9b46bd25bf5f0595bbe24655141438e7a100b"},
    {"3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0"
     "f11d8c387b2eaeb4302aeeb00d291612bb0c00"},
    {"fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f76098"
     "4dc6594a7c15e9716ed28dc027beceea1ec40a"},
    {"ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
     "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3fe"
     "ebbd454d4423643ce80e2a9ac94fa54ca49f",
     "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c664"
     "31e0303dca179c138ac17ad9bef1177331a704"},
};

static void hex_eq(const uint8_t *got, const char *hex, size_t n)
{
    uint8_t want[64];
    CHECK_EQ(vec_parse_hex(hex, want, sizeof(want)), n);
    CHECK(memcmp(got, want, n) == 0);
}

/* The small fixed-base multiplication gives crypto_eddsa_scalarbase()'s bytes: edge scalars
 * (0, 1, L - 1, L, 2^255 - 1 clamped and not, all ones) and SHA-512-derived ones. */
static void scalarbase_matches_monocypher(void)
{
    static const char *const edges[] = {
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010",
        "edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010",
        "f8ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    };
    uint8_t s[64], want[32], got[32];
    for (int i = 0; i < 70; i++) {
        tml_case("crypto", "ed25519_small_scalarbase_matches_monocypher");
        if (i < 6) {
            vec_parse_hex(edges[i], s, 32);
        } else {
            uint8_t seed = (uint8_t)i;
            tml_sha512(&seed, 1, s);
            if (i & 1) {
                crypto_eddsa_trim_scalar(s, s);
            }
        }
        crypto_eddsa_scalarbase(want, s);
        tml_eddsa_scalarbase_small(got, s);
        CHECK(memcmp(got, want, 32) == 0);
    }
}

/* The small equation check against Monocypher's own on valid, mutated and edge inputs: the
 * same verdict every time (s >= L, R or A off the curve, any flipped bit). */
static void check_matches_monocypher(void)
{
    uint8_t seed[32], pub[32], sig[64], msg[3] = {'a', 'b', 'c'}, h[32], hash[64];
    for (int i = 0; i < 48; i++) {
        tml_case("crypto", "ed25519_small_check_matches_monocypher");
        memset(seed, i, sizeof(seed));
        tml_ed25519_public_key(pub, seed);
        tml_ed25519_sign(sig, seed, msg, sizeof(msg));
        tml_sha512_t c;
        tml_sha512_init(&c);
        tml_sha512_update(&c, sig, 32);
        tml_sha512_update(&c, pub, 32);
        tml_sha512_update(&c, msg, sizeof(msg));
        tml_sha512_final(&c, hash);
        crypto_eddsa_reduce(h, hash);
        if (i >= 8 && i < 40) { /* one flipped bit: in R, s, A or h */
            uint8_t *where[] = {sig, sig + 32, pub, h};
            where[i % 4][(i * 7) % 32] ^= (uint8_t)(1U << (i % 8));
        } else if (i >= 40 && i < 44) { /* s + L: above the group order */
            static const uint8_t l[32] = {0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58,
                                          0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
                                          [31] = 0x10};
            unsigned carry = 0;
            for (int k = 0; k < 32; k++) {
                carry += sig[32 + k] + l[k];
                sig[32 + k] = (uint8_t)carry;
                carry >>= 8;
            }
        } else if (i >= 44) { /* R not on the curve (y = 2 has no x) */
            memset(sig, 0, 32);
            sig[0] = 2;
        }
        int want = crypto_eddsa_check_equation(sig, pub, h);
        CHECK_EQ(tml_eddsa_check_small(sig, pub, h), want);
        CHECK_EQ(want == 0, i < 8);
    }
}

void suite_crypto(void)
{
    scalarbase_matches_monocypher();
    check_matches_monocypher();
    static uint8_t million[1000000];
    uint8_t d[64];
    memset(million, 'a', sizeof(million));
    for (int i = 0; i < 4; i++) {
        tml_case("crypto", "sha256_fips180");
        if (i < 3) {
            tml_sha256(sha256_msgs[i], strlen(sha256_msgs[i]), d);
        } else {
            tml_sha256_t c; /* in uneven pieces, to cross block boundaries */
            tml_sha256_init(&c);
            for (size_t off = 0; off < sizeof(million); off += 997) {
                size_t n = sizeof(million) - off < 997 ? sizeof(million) - off : 997;
                tml_sha256_update(&c, million + off, n);
            }
            tml_sha256_final(&c, d);
        }
        hex_eq(d, sha256_out[i], 32);
        tml_case("crypto", "sha512_fips180");
        if (i < 3) {
            tml_sha512(sha512_msgs[i], strlen(sha512_msgs[i]), d);
        } else {
            tml_sha512_t c;
            tml_sha512_init(&c);
            for (size_t off = 0; off < sizeof(million); off += 1013) {
                size_t n = sizeof(million) - off < 1013 ? sizeof(million) - off : 1013;
                tml_sha512_update(&c, million + off, n);
            }
            tml_sha512_final(&c, d);
        }
        hex_eq(d, sha512_out[i], 64);
    }
    for (size_t i = 0; i < sizeof(pad_lens) / sizeof(pad_lens[0]); i++) {
        tml_sha256_t c256;
        tml_sha512_t c512;
        tml_case("crypto", "sha256_padding_boundaries");
        tml_sha256(million, pad_lens[i], d);
        hex_eq(d, pad_sha256[i], 32);
        tml_sha256_init(&c256); /* byte by byte: every split of the block buffer */
        for (size_t k = 0; k < pad_lens[i]; k++) {
            tml_sha256_update(&c256, million + k, 1);
        }
        tml_sha256_final(&c256, d);
        hex_eq(d, pad_sha256[i], 32);
        tml_case("crypto", "sha512_padding_boundaries");
        tml_sha512(million, pad_lens[i], d);
        hex_eq(d, pad_sha512[i], 64);
        tml_sha512_init(&c512);
        for (size_t k = 0; k < pad_lens[i]; k++) {
            tml_sha512_update(&c512, million + k, 1);
        }
        tml_sha512_final(&c512, d);
        hex_eq(d, pad_sha512[i], 64);
    }
    for (size_t i = 0; i < sizeof(ed) / sizeof(ed[0]); i++) {
        uint8_t pk[32], sig[64], msg[64];
        size_t n;
        vec_parse_hex(ed[i][0], pk, 32);
        n = vec_parse_hex(ed[i][1], msg, 64);
        vec_parse_hex(ed[i][2], sig, 64);
        tml_case("crypto", "ed25519_rfc8032_valid");
        CHECK(tml_ed25519_verify(sig, pk, msg, n));
        uint8_t seed[32], got_pk[32], got_sig[64];
        vec_parse_hex(ed_secret[i], seed, 32);
        tml_case("crypto", "ed25519_rfc8032_public_key");
        tml_ed25519_public_key(got_pk, seed);
        CHECK(memcmp(got_pk, pk, 32) == 0);
        tml_case("crypto", "ed25519_rfc8032_sign");
        tml_ed25519_sign(got_sig, seed, msg, n);
        CHECK(memcmp(got_sig, sig, 64) == 0);
        tml_case("crypto", "ed25519_rfc8032_tampered_message_refused");
        msg[0] ^= 1;
        CHECK(!tml_ed25519_verify(sig, pk, msg, n ? n : 1));
        msg[0] ^= 1;
        tml_case("crypto", "ed25519_rfc8032_tampered_signature_refused");
        sig[63] ^= 0x10;
        CHECK(!tml_ed25519_verify(sig, pk, msg, n));
        sig[63] ^= 0x10;
        tml_case("crypto", "ed25519_s_not_reduced_refused");
        uint8_t bad[64];
        memcpy(bad, sig, 64);
        bad[63] |= 0xF0; /* S >= L: malleable, must be refused */
        CHECK(!tml_ed25519_verify(bad, pk, msg, n));
    }
}
