/* SPDX-License-Identifier: Apache-2.0 */
/*
 * COSE_Sign1 manifest check (src/manifest.c tml_manifest_check, tml_manifest_peek_package).
 * Input: a mode byte, then either a whole COSE message (mode bit 0 clear) or a payload the
 * harness signs with the test key (set), so mutations reach the payload decoder, which runs
 * only after the signature verified. An accepted manifest must satisfy every rule of
 * manifest.h.
 */
#include <string.h>

#include "fuzz.h"
#include "tml/protocol.h"

#define PROFILE "mps2-an385"
#define NOW 1800000000ULL /* generate.py NOW */

static uint8_t cose[TML_MAX_OFFER_BYTES + 256];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t running[32] = {1, 2, 3};
    uint8_t mode;
    const uint8_t *msg;
    size_t len = fuzz_signed_input(data, size, cose, &mode, &msg);
    if (!len) {
        return 0;
    }
    uint32_t pkg = tml_manifest_peek_package(msg, len);
    FUZZ_CHECK(pkg <= TML_MAX_PACKAGE_ID);

    static const uint32_t revoked[2] = {1, 5};
    tml_manifest_policy_t policy = {
        .keyring = fuzz_keyring(),
        .current_sequence = (mode >> 2) & 3,
        .hardware_profile = PROFILE,
        .now = NOW,
        .slot_bytes = (mode & 16) ? 0 : 131072,
        .arena_bytes = (mode & 32) ? 0 : 16384,
        .running_model_sha256 = (mode & 2) ? running : NULL,
        .revoked = revoked, /* policy key 32: packages 1 and 5 revoked in half the runs */
        .revoked_count = (mode & 64) ? 2 : 0,
    };
    tml_manifest_t m;
    tml_reason_t why = tml_manifest_check(msg, len, &policy, &m);
    FUZZ_CHECK(why <= TML_MAX_REASON_CODE);
    if (why == TML_REASON_MANIFEST_MALFORMED || why == TML_REASON_MANIFEST_BAD_ALGORITHM ||
        why == TML_REASON_MANIFEST_UNKNOWN_KEY || why == TML_REASON_MANIFEST_BAD_SIGNATURE) {
        /* refused before (or at) the signature: nothing authenticated is left in m, so the
         * device reports package 0 (manifest.h) */
        static const tml_manifest_t zero;
        FUZZ_CHECK(memcmp(&m, &zero, sizeof(m)) == 0);
    }
    if (why != TML_REASON_OK) {
        return 0;
    }
    FUZZ_CHECK(m.sequence > policy.current_sequence);
    FUZZ_CHECK(m.expires_at > policy.now);
    FUZZ_CHECK(!policy.slot_bytes || m.model_size <= policy.slot_bytes);
    FUZZ_CHECK(!policy.arena_bytes || m.arena_bytes <= policy.arena_bytes);
    for (size_t i = 0; i < policy.revoked_count; i++) {
        FUZZ_CHECK(m.package_id != policy.revoked[i]);
    }
    FUZZ_CHECK(m.encoding <= TML_ENCODING_DELTA);
    FUZZ_CHECK(m.has_base == (m.encoding == TML_ENCODING_DELTA));
    FUZZ_CHECK(!m.has_base || !policy.running_model_sha256 ||
               memcmp(m.base_sha256, running, 32) == 0);
    FUZZ_CHECK(m.encoding != TML_ENCODING_RAW ||
               (m.transfer_size == m.model_size &&
                memcmp(m.transfer_sha256, m.model_sha256, 32) == 0));
    FUZZ_CHECK(m.trial_n <= TML_MAX_TRIAL_INPUTS);
    FUZZ_CHECK(m.trial_max_mismatches <= m.trial_n);
    for (unsigned i = 0; i < m.trial_n; i++) {
        FUZZ_CHECK(m.trial_labels[i] < TML_MAX_LABELS);
    }
    /* The package id a failure report would carry is the verified one when it fits. */
    FUZZ_CHECK(m.package_id > TML_MAX_PACKAGE_ID || pkg == m.package_id);
    return 0;
}
