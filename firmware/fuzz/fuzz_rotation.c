/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Trust records (key rotation) from a ROTATION frame. Input: a mode byte, then a whole COSE
 * message (bit 0 clear) or a payload the harness signs with the test key (set). The record goes
 * to tml_rotation_check against the built-in keyring, and an accepted one must satisfy
 * manifest.h's rules for it; then, as a ROTATION frame, to a freshly booted device (whatever
 * device.c does with ROTATION frames, this reaches it), which must keep its invariants (across
 * a power cycle when it took the record) and must not change whom it trusts for a record whose
 * signature is bad.
 */
#include <string.h>

#include "fuzz.h"
#include "tml/protocol.h"

static uint8_t cose[TML_MAX_OFFER_BYTES + 256];

static int trusted(const tml_keyring_t *ring, const uint8_t *kid, size_t len)
{
    for (size_t i = 0; i < ring->count; i++) {
        if (len == TML_KEY_ID_BYTES && memcmp(ring->keys[i]->kid, kid, len) == 0) {
            return 1;
        }
    }
    return 0;
}

/* The record as a ROTATION frame to a fresh device. */
static void device(const uint8_t *msg, size_t len, int forged)
{
    static tml_meta_t before;
    fuzz_device_fresh();
    before = fuzz_dev.slots.meta;
    fuzz_device_frame(TML_LINK_ROTATION, msg, len);
    fuzz_device_exchange();
    const tml_meta_t *m = &fuzz_dev.slots.meta;
    int same = m->rotated_count == before.rotated_count &&
               m->retired_builtin == before.retired_builtin &&
               m->rotation_sequence == before.rotation_sequence &&
               memcmp(m->rotated, before.rotated, sizeof(m->rotated)) == 0;
    FUZZ_CHECK(same || !forged);
    if (!same) { /* the device took it: it must boot with it */
        fuzz_device_power_cycle();
        fuzz_device_exchange();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t mode;
    const uint8_t *msg;
    size_t len = fuzz_signed_input(data, size, cose, &mode, &msg);
    if (!len) {
        return 0;
    }
    const tml_keyring_t *ring = fuzz_keyring();
    uint64_t current = (mode >> 1) & 7;
    tml_rotation_t rot;
    tml_reason_t why = tml_rotation_check(msg, len, ring, current, &rot);
    if (len <= TML_LINK_MAX_PAYLOAD) {
        device(msg, len, why == TML_REASON_MANIFEST_BAD_SIGNATURE ||
                             why == TML_REASON_MANIFEST_BAD_ALGORITHM);
    }
    if (why != TML_REASON_OK) {
        return 0;
    }
    uint8_t kid[TML_KEY_ID_BYTES];
    tml_key_id(rot.new_public_key, kid);
    FUZZ_CHECK(memcmp(kid, rot.new_kid, sizeof(kid)) == 0);
    FUZZ_CHECK(rot.sequence > current);
    FUZZ_CHECK(!trusted(ring, rot.new_kid, TML_KEY_ID_BYTES));
    FUZZ_CHECK(!rot.has_retire || (rot.retire_kid_len >= 1 &&
                                   rot.retire_kid_len <= TML_MAX_KID_BYTES &&
                                   trusted(ring, rot.retire_kid, rot.retire_kid_len)));
    return 0;
}
