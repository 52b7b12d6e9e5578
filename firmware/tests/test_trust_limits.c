/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The trust state's bounds, with records signed here by the vectors' test keys (seed =
 * SHA-256 of the label, as tests/vectors/generate.py): a full rotated-key list never evicts a
 * key, and a replayed record is refused before its signature is looked at.
 */
#include <string.h>

#include "tml/cbor.h"
#include "tml/ed25519.h"
#include "tml/messages.h"
#include "tml/runner.h"
#include "tml/sha.h"
#include "tml/trust.h"
#include "tml_test.h"

size_t load_keys(tml_key_t *keys, size_t cap); /* test_manifest.c: trusted_public.hex */

static tml_key_t builtin[TML_MAX_BUILTIN_KEYS];
static size_t builtin_count;
static tml_meta_t meta;
static const tml_key_t *ring_keys[TML_MAX_BUILTIN_KEYS + TML_MAX_ROTATED_KEYS];
static tml_keyring_t ring;

/* The seed and public key of "tml test signing key <n>" (1 and 2 are built in). */
static void test_key(int n, uint8_t seed[32], tml_key_t *key)
{
    char label[] = "tml test signing key 0";
    label[sizeof(label) - 2] = (char)('0' + n);
    tml_sha256(label, sizeof(label) - 1, seed);
    tml_ed25519_public_key(key->public_key, seed);
    tml_key_id(key->public_key, key->kid);
}

/* A rotation record {1: 1, 2: seq, 20: kid, 21: key, ?22: retire} signed by key `by`, as
 * trust.py sign_rotation (canonical CBOR); returns its length. */
static size_t rotation(int by, uint64_t seq, int new_key, const uint8_t *retire, uint8_t *out,
                       size_t cap)
{
    static const uint8_t protected_hdr[] = {0xA1, 0x01, 0x27}; /* {1: -8} */
    uint8_t seed[32], payload[96], tbs[160], sig[64];
    tml_key_t signer, added;
    size_t plen = 0, tlen = 0, n = 0;
    tml_cbor_writer_t w;
    test_key(by, seed, &signer);
    {
        uint8_t unused[32];
        test_key(new_key, unused, &added);
    }
    tml_cbor_writer_init(&w, payload, sizeof(payload));
    tml_cbor_put_head(&w, TML_CBOR_MAP, retire ? 5 : 4);
    tml_cbor_put_uint(&w, 1);
    tml_cbor_put_uint(&w, 1);
    tml_cbor_put_uint(&w, 2);
    tml_cbor_put_uint(&w, seq);
    tml_cbor_put_uint(&w, 20);
    tml_cbor_put_bytes(&w, added.kid, TML_KEY_ID_BYTES);
    tml_cbor_put_uint(&w, 21);
    tml_cbor_put_bytes(&w, added.public_key, 32);
    if (retire) {
        tml_cbor_put_uint(&w, 22);
        tml_cbor_put_bytes(&w, retire, TML_KEY_ID_BYTES);
    }
    CHECK(tml_cbor_finish(&w, &plen) == TML_OK);
    tml_cbor_writer_init(&w, tbs, sizeof(tbs)); /* RFC 9052 Sig_structure */
    tml_cbor_put_head(&w, TML_CBOR_ARRAY, 4);
    tml_cbor_put_text(&w, "Signature1");
    tml_cbor_put_bytes(&w, protected_hdr, sizeof(protected_hdr));
    tml_cbor_put_bytes(&w, NULL, 0);
    tml_cbor_put_bytes(&w, payload, plen);
    CHECK(tml_cbor_finish(&w, &tlen) == TML_OK);
    tml_ed25519_sign(sig, seed, tbs, tlen);
    tml_cbor_writer_init(&w, out, cap);
    tml_cbor_put_head(&w, TML_CBOR_TAG, TML_COSE_SIGN1_TAG);
    tml_cbor_put_head(&w, TML_CBOR_ARRAY, 4);
    tml_cbor_put_bytes(&w, protected_hdr, sizeof(protected_hdr));
    tml_cbor_put_head(&w, TML_CBOR_MAP, 1);
    tml_cbor_put_uint(&w, TML_COSE_HEADER_KID);
    tml_cbor_put_bytes(&w, signer.kid, TML_KEY_ID_BYTES);
    tml_cbor_put_bytes(&w, payload, plen);
    tml_cbor_put_bytes(&w, sig, sizeof(sig));
    CHECK(tml_cbor_finish(&w, &n) == TML_OK);
    return n;
}

static tml_reason_t apply(const uint8_t *cose, size_t len)
{
    tml_reason_t why = tml_trust_apply(&meta, &ring, builtin, builtin_count, cose, len);
    tml_trust_keyring(&meta, builtin, builtin_count, ring_keys, &ring);
    return why;
}

static uint8_t *kid_of(int n)
{
    static tml_key_t key;
    uint8_t seed[32];
    test_key(n, seed, &key);
    return key.kid;
}

/* Keys 1 and 2 built in; key 1 rotates in keys 3 and 4 (records 1, 2): the list is full. */
static void full_state(void)
{
    static uint8_t cose[256];
    memset(&meta, 0, sizeof(meta));
    tml_trust_keyring(&meta, builtin, builtin_count, ring_keys, &ring);
    for (int k = 3; k < 3 + TML_MAX_ROTATED_KEYS; k++) {
        CHECK_EQ(apply(cose, rotation(1, (uint64_t)k - 2, k, NULL, cose, sizeof(cose))),
                 TML_REASON_OK);
    }
    CHECK_EQ(meta.rotated_count, TML_MAX_ROTATED_KEYS);
}

void suite_trust_limits(void)
{
    static uint8_t cose[256];
    static tml_meta_t before;
    size_t n;
    builtin_count = load_keys(builtin, TML_MAX_BUILTIN_KEYS);
    CHECK_EQ(builtin_count, 2);
    CHECK(memcmp(builtin[0].kid, kid_of(1), 8) == 0); /* the keys signed with are built in */

    tml_case("trust_limits", "full_rotated_list_refuses_a_rotation_that_retires_none");
    full_state();
    before = meta;
    n = rotation(1, 3, 5, NULL, cose, sizeof(cose)); /* an old, maybe stolen, built-in key */
    CHECK_EQ(apply(cose, n), TML_REASON_MANIFEST_BAD_ROTATION);
    CHECK(memcmp(&meta, &before, sizeof(meta)) == 0); /* key 3 stays: nothing evicted */
    CHECK(memcmp(ring.keys[2]->kid, kid_of(3), 8) == 0);

    tml_case("trust_limits", "retiring_a_built_in_key_frees_no_rotated_slot");
    n = rotation(1, 3, 5, kid_of(1), cose, sizeof(cose));
    CHECK_EQ(apply(cose, n), TML_REASON_MANIFEST_BAD_ROTATION);
    CHECK(memcmp(&meta, &before, sizeof(meta)) == 0);

    tml_case("trust_limits", "old_key_cannot_free_a_slot_by_retiring_a_newer_key");
    n = rotation(1, 3, 5, kid_of(3), cose, sizeof(cose));
    CHECK_EQ(apply(cose, n), TML_REASON_MANIFEST_BAD_ROTATION);
    CHECK(memcmp(&meta, &before, sizeof(meta)) == 0);

    tml_case("trust_limits", "full_rotated_list_takes_a_key_that_replaces_a_retired_one");
    n = rotation(3, 3, 5, kid_of(3), cose, sizeof(cose)); /* key 3 hands over to key 5 */
    CHECK_EQ(apply(cose, n), TML_REASON_OK);
    CHECK_EQ(meta.rotated_count, TML_MAX_ROTATED_KEYS);
    CHECK_EQ(ring.count, 2 + TML_MAX_ROTATED_KEYS);
    CHECK(memcmp(ring.keys[2]->kid, kid_of(4), 8) == 0);
    CHECK(memcmp(ring.keys[3]->kid, kid_of(5), 8) == 0);
    CHECK_EQ(meta.retired_count, 1);
    CHECK(memcmp(meta.retired[0], kid_of(3), 8) == 0);
    CHECK_EQ(meta.rotation_sequence, 3);

    tml_case("trust_limits", "replay_is_refused_before_the_signature");
    full_state();
    n = rotation(1, 2, 4, NULL, cose, sizeof(cose)); /* record 2, applied already */
    CHECK_EQ(apply(cose, n), TML_REASON_MANIFEST_SEQUENCE_REPLAY);
    cose[n - 1] ^= 1; /* a bad signature: still only a replay, nothing verified */
    before = meta;
    CHECK_EQ(apply(cose, n), TML_REASON_MANIFEST_SEQUENCE_REPLAY);
    CHECK(memcmp(&meta, &before, sizeof(meta)) == 0);

    tml_case("trust_limits", "replay_signed_by_an_untrusted_key_is_a_replay");
    n = rotation(9, 1, 6, NULL, cose, sizeof(cose)); /* a signer the device never trusted */
    CHECK_EQ(apply(cose, n), TML_REASON_MANIFEST_SEQUENCE_REPLAY);
    CHECK(memcmp(&meta, &before, sizeof(meta)) == 0);

    tml_case("trust_limits", "new_record_is_still_verified");
    n = rotation(9, 3, 6, NULL, cose, sizeof(cose));
    CHECK_EQ(apply(cose, n), TML_REASON_MANIFEST_BAD_ROTATION); /* untrusted signer */
    n = rotation(3, 3, 6, kid_of(3), cose, sizeof(cose));
    cose[n - 1] ^= 1;
    CHECK_EQ(apply(cose, n), TML_REASON_MANIFEST_BAD_SIGNATURE);
    CHECK(memcmp(&meta, &before, sizeof(meta)) == 0);

    tml_case("trust_limits", "largest_status_bound_is_the_encoders");
    {
        static uint8_t out[TML_STATUS_MAX_BYTES + 16];
        static char tflm[TML_TFLM_VERSION_MAX_BYTES + 1];
        tml_key_t ks[TML_MAX_BUILTIN_KEYS + TML_MAX_ROTATED_KEYS];
        const tml_key_t *refs[TML_MAX_BUILTIN_KEYS + TML_MAX_ROTATED_KEYS];
        for (size_t i = 0; i < TML_MAX_BUILTIN_KEYS + TML_MAX_ROTATED_KEYS; i++) {
            refs[i] = &ks[i];
        }
        memset(tflm, 'v', TML_TFLM_VERSION_MAX_BYTES);
        tml_keyring_t kr = {refs, TML_MAX_BUILTIN_KEYS + TML_MAX_ROTATED_KEYS};
        size_t len = 0;
        tml_status_msg_t s = {.has_model = true, .model = TML_MAX_MODEL_ID, .slot = 1,
                              .uptime_s = INT64_MAX, .free_ram = INT64_MAX, .seq = INT64_MAX,
                              .firmware_version = TML_FIRMWARE_VERSION, .tflm_version = tflm,
                              .ops = tml_registered_ops, .op_count = tml_registered_op_count,
                              .arena_bytes = UINT32_MAX, .slot_bytes = UINT32_MAX,
                              .pointer_bits = 64, .keys = &kr};
        CHECK(tml_status_encode(&s, out, sizeof(out), &len) == TML_OK);
        CHECK_EQ(len, TML_STATUS_MAX_BYTES); /* the compile-time bound is exact */
        CHECK(TML_STATUS_MAX_BYTES <= TML_LINK_TX_MAX_PAYLOAD);
    }
}
