/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Trust records (key rotation) as the device checks a ROTATION frame: tml_rotation_check, the
 * entry point device.c's handler calls, against the built-in keyring. Input: a mode byte, then
 * a whole COSE message (bit 0 clear) or a payload the harness signs with the test key (set).
 * An accepted record must satisfy manifest.h's rules for it.
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > TML_MAX_OFFER_BYTES + 1) {
        return 0;
    }
    uint8_t mode = data[0];
    const uint8_t *msg = data + 1;
    size_t len = size - 1;
    if (mode & 1) {
        len = fuzz_sign1(data + 1, size - 1, cose, sizeof(cose));
        msg = cose;
        if (!len) {
            return 0;
        }
    }
    const tml_keyring_t *ring = fuzz_keyring();
    uint64_t current = (mode >> 1) & 7;
    tml_rotation_t rot;
    if (tml_rotation_check(msg, len, ring, current, &rot) != TML_REASON_OK) {
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
