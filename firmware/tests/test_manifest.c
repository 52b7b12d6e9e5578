/* SPDX-License-Identifier: Apache-2.0 */
/* Every manifest and rotation vector gets manifest.py's verdict (manifests.vec, rotations.vec). */
#include <string.h>

#include "tml/manifest.h"
#include "tml/reasons.h"
#include "tml/trust.h"
#include "tml_test.h"
#include "trusted_keys.h"

size_t load_keys(tml_key_t *keys, size_t cap);
size_t load_keys(tml_key_t *keys, size_t cap)
{
    uint8_t text[512];
    size_t n = vec_file("keys/trusted_public.hex", text, sizeof(text) - 1), count = 0;
    text[n] = 0;
    for (char *line = (char *)text; *line && count < cap;) {
        if (vec_parse_hex(line, keys[count].public_key, 32) == 32) {
            tml_key_id(keys[count].public_key, keys[count].kid);
            count++;
        }
        char *nl = strchr(line, '\n');
        if (!nl) {
            break;
        }
        line = nl + 1;
    }
    return count;
}

static void expect_reason(int got, const vec_record_t *r)
{
    int want = (int)vec_u64(r, "reason");
    if (got != want) {
        char m[128];
        snprintf(m, sizeof(m), "reason %s, expected %s", tml_reason_str(got),
                 tml_reason_str(want));
        tml_fail(__FILE__, __LINE__, m);
    }
}

void suite_manifest(void)
{
    static uint8_t cose[20000];
    tml_key_t keys[4];
    const tml_key_t *refs[4] = {&keys[0], &keys[1], &keys[2], &keys[3]};
    tml_keyring_t ring = {refs, load_keys(keys, 4)};
    vec_file_t f;
    vec_record_t r;
    tml_case("manifest", "trusted_keys_loaded");
    CHECK_EQ(ring.count, 2);
    tml_case("manifest", "builtin_key_ids_computed_at_build_time_match_tml_key_id");
    size_t nbuiltin;
    const tml_key_t *builtin = tml_trusted_keys(&nbuiltin);
    CHECK(nbuiltin >= 1);
    for (size_t i = 0; i < nbuiltin; i++) {
        uint8_t kid[TML_KEY_ID_BYTES];
        tml_key_id(builtin[i].public_key, kid);
        CHECK(memcmp(kid, builtin[i].kid, TML_KEY_ID_BYTES) == 0);
    }
    if (!vec_open(&f, "manifests.vec")) {
        return;
    }
    while (vec_next(&f, &r)) {
        uint8_t running[32], digest[32];
        tml_manifest_t m;
        size_t n = vec_hex(&r, "cose", cose, sizeof(cose));
        vec_hex(&r, "running_sha256", running, 32);
        tml_manifest_policy_t p = {
            .keyring = &ring,
            .current_sequence = vec_u64(&r, "current_sequence"),
            .hardware_profile = vec_get(&r, "hardware_profile"),
            .now = vec_u64(&r, "now"),
            .slot_bytes = (uint32_t)vec_u64(&r, "slot_bytes"),
            .arena_bytes = (uint32_t)vec_u64(&r, "arena_bytes"),
            .running_model_sha256 = running,
        };
        tml_case("manifest", vec_get(&r, "name"));
        memset(&m, 0xA5, sizeof(m));
        tml_reason_t why = tml_manifest_check(cose, n, &p, &m);
        expect_reason(why, &r);
        if (why == TML_REASON_MANIFEST_MALFORMED || why == TML_REASON_MANIFEST_BAD_ALGORITHM ||
            why == TML_REASON_MANIFEST_UNKNOWN_KEY || why == TML_REASON_MANIFEST_BAD_SIGNATURE ||
            why == TML_REASON_MANIFEST_UNSUPPORTED_VERSION) {
            /* no manifest: nothing, not even a package id, for a report to name (LINK.md) */
            static const tml_manifest_t zero;
            CHECK(memcmp(&m, &zero, sizeof(m)) == 0);
        }
        if (why >= TML_REASON_MANIFEST_UNSUPPORTED_VERSION &&
            why <= TML_REASON_MANIFEST_BAD_SIGNATURE) {
            CHECK_EQ(m.package_id, 0); /* unauthenticated: nothing for a report to name */
        }
        if (why == TML_REASON_OK && vec_u64(&r, "reason") == 0) {
            CHECK_EQ(m.sequence, vec_u64(&r, "sequence"));
            CHECK_EQ(m.package_id, vec_u64(&r, "package_id"));
            CHECK_EQ(m.model_size, vec_u64(&r, "model_size"));
            CHECK_EQ(m.transfer_size, vec_u64(&r, "transfer_size"));
            CHECK_EQ(m.encoding, vec_u64(&r, "encoding"));
            CHECK_EQ(m.arena_bytes, vec_u64(&r, "arena"));
            CHECK_EQ(m.expires_at, vec_u64(&r, "expires_at"));
            vec_hex(&r, "model_sha256", digest, 32);
            CHECK(memcmp(digest, m.model_sha256, 32) == 0);
            vec_hex(&r, "transfer_sha256", digest, 32);
            CHECK(memcmp(digest, m.transfer_sha256, 32) == 0);
            CHECK_EQ(tml_manifest_peek_package(cose, n), m.package_id);
            /* key 15: present exactly when the vector has a trial, with its fields */
            uint64_t labels[TML_MAX_TRIAL_INPUTS + 1];
            size_t count = (size_t)vec_u64(&r, "trial_n");
            CHECK_EQ(m.trial_n, count);
            if (count) {
                CHECK_EQ(vec_list(&r, "trial_labels", labels, TML_MAX_TRIAL_INPUTS + 1), count);
                for (size_t i = 0; i < count && i < TML_MAX_TRIAL_INPUTS; i++) {
                    CHECK_EQ(m.trial_labels[i], labels[i]);
                }
                CHECK_EQ(m.trial_max_mismatches, vec_u64(&r, "trial_max"));
                CHECK_EQ(m.trial_output_type, vec_u64(&r, "trial_output_type"));
                size_t d = vec_hex(&r, "trial_digest", digest, 32);
                CHECK_EQ(m.trial_has_digest, d == 32);
                CHECK(d == 0 || memcmp(digest, m.trial_outputs_sha256, 32) == 0);
            }
        }
    }
    vec_close(&f);
    if (!vec_open(&f, "rotations.vec")) {
        return;
    }
    while (vec_next(&f, &r)) {
        /* A device trusting the two keys of trusted_public.hex, at the vector's sequence. */
        static tml_meta_t meta;
        const tml_key_t *slots[TML_MAX_BUILTIN_KEYS + TML_MAX_ROTATED_KEYS];
        tml_keyring_t state;
        memset(&meta, 0, sizeof(meta));
        meta.rotation_sequence = vec_u64(&r, "current_sequence");
        tml_trust_keyring(&meta, keys, ring.count, slots, &state);
        size_t n = vec_hex(&r, "cose", cose, sizeof(cose));
        tml_case("rotation", vec_get(&r, "name"));
        tml_reason_t why = tml_trust_apply(&meta, &state, keys, ring.count, cose, n);
        expect_reason(why, &r);
        if (why == TML_REASON_OK) {
            uint8_t key[32], kid[8];
            vec_hex(&r, "new_public_key", key, 32);
            vec_hex(&r, "new_kid", kid, 8);
            CHECK_EQ(meta.rotated_count, 1);
            CHECK(memcmp(key, meta.rotated[0].public_key, 32) == 0);
            CHECK(memcmp(kid, meta.rotated[0].kid, 8) == 0);
            CHECK_EQ(meta.rotation_sequence, vec_u64(&r, "sequence"));
        }
    }
    vec_close(&f);
}
