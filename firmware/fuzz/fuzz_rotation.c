/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Trust records (rotation, policy) from a ROTATION frame. Input: a mode byte, then a whole COSE
 * message (bit 0 clear) or a payload the harness signs with the test key (set). The record goes
 * to tml_trust_apply, the device's own path, on a state the mode byte picks (record sequence,
 * rotated keys up to a full list, remembered retired ids, a retired built-in key), which must
 * keep trust.h's rules; then, as a ROTATION frame, to a freshly booted device (whatever
 * device.c does with ROTATION frames, this reaches it), which must keep its invariants (across
 * a power cycle when it took the record) and must not change whom it trusts for a record whose
 * signature is bad.
 */
#include <string.h>

#include "fuzz.h"
#include "tml/protocol.h"
#include "tml/trust.h"
#include "trusted_keys.h"

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

/* A state to apply the record to, from mode bits 1-7: record sequence 0..7, rotated keys
 * (0..TML_MAX_ROTATED_KEYS, made-up keys no one can sign with), the retired-id list full or
 * empty, built-in key 2 retired or not (key 1 signs the harness's records). */
static void state(uint8_t mode, tml_meta_t *m)
{
    memset(m, 0, sizeof(*m));
    m->rotation_sequence = (mode >> 1) & 7;
    m->rotated_count = (uint8_t)(((mode >> 4) & 3) % (TML_MAX_ROTATED_KEYS + 1));
    for (uint8_t i = 0; i < m->rotated_count; i++) {
        memset(m->rotated[i].public_key, 0x50 + i, 32);
        tml_key_id(m->rotated[i].public_key, m->rotated[i].kid);
    }
    if (mode & 64) {
        m->retired_count = TML_MAX_RETIRED_KIDS;
        for (uint8_t i = 0; i < TML_MAX_RETIRED_KIDS; i++) {
            memset(m->retired[i], 0x60 + i, TML_KEY_ID_BYTES);
        }
    }
    m->retired_builtin = (mode & 128) ? 2 : 0;
    m->min_sequence = 3;
}

static int retired_now(const tml_meta_t *m, const tml_key_t *builtin, size_t nb,
                       const uint8_t *kid)
{
    for (size_t i = 0; i < nb && i < TML_MAX_BUILTIN_KEYS; i++) {
        if ((m->retired_builtin & (1U << i)) && !memcmp(builtin[i].kid, kid, TML_KEY_ID_BYTES)) {
            return 1;
        }
    }
    for (size_t i = 0; i < m->retired_count; i++) {
        if (!memcmp(m->retired[i], kid, TML_KEY_ID_BYTES)) {
            return 1;
        }
    }
    return 0;
}

/* Whether kid is among the ids the record retires. */
static int in_record(const tml_trust_record_t *rec, const uint8_t *kid)
{
    for (size_t i = 0; rec->retire_sized && i < rec->retire_count; i++) {
        if (!memcmp(rec->retire + 9 * i, kid, TML_KEY_ID_BYTES)) {
            return 1;
        }
    }
    return 0;
}

/* The record through tml_trust_apply: trust.h's rules hold whether it is taken or refused. */
static void apply(uint8_t mode, const uint8_t *msg, size_t len)
{
    enum { MAX = TML_MAX_BUILTIN_KEYS + TML_MAX_ROTATED_KEYS };
    static tml_meta_t m, before;
    static const tml_key_t *ring_keys[MAX], *old_keys[MAX], *after_keys[MAX];
    size_t nb;
    const tml_key_t *builtin = tml_trusted_keys(&nb);
    tml_keyring_t ring, after, old;
    tml_trust_record_t rec;
    state(mode, &m);
    before = m;
    tml_trust_keyring(&m, builtin, nb, ring_keys, &ring);
    tml_trust_keyring(&before, builtin, nb, old_keys, &old); /* the ring before, kept */
    tml_reason_t why = tml_trust_apply(&m, &ring, builtin, nb, msg, len);
    FUZZ_CHECK(why <= TML_MAX_REASON_CODE);
    if (why != TML_REASON_OK) {
        FUZZ_CHECK(memcmp(&m, &before, sizeof(m)) == 0); /* a refused record changes nothing */
        return;
    }
    FUZZ_CHECK(tml_trust_check(msg, len, &old, before.rotation_sequence, &rec) == TML_REASON_OK);
    FUZZ_CHECK(m.rotation_sequence == rec.sequence && rec.sequence > before.rotation_sequence);
    FUZZ_CHECK(m.min_sequence >= before.min_sequence);
    FUZZ_CHECK(m.rotated_count <= TML_MAX_ROTATED_KEYS && m.retired_count <= TML_MAX_RETIRED_KIDS);
    tml_trust_keyring(&m, builtin, nb, after_keys, &after);
    FUZZ_CHECK(after.count >= 1);
    for (size_t i = 0; i < old.count; i++) {
        /* A key leaves only retired by this record, never one newer than its signer (no
         * eviction when the rotated list is full), and is then remembered as retired. */
        const uint8_t *kid = old.keys[i]->kid;
        FUZZ_CHECK(trusted(&after, kid, TML_KEY_ID_BYTES) ||
                   (i <= rec.signer && in_record(&rec, kid) && retired_now(&m, builtin, nb, kid)));
    }
    for (size_t i = 0; i < after.count; i++) { /* a retired id is not trusted afterwards */
        FUZZ_CHECK(!retired_now(&m, builtin, nb, after.keys[i]->kid));
    }
    if (rec.is_rotation) {
        uint8_t kid[TML_KEY_ID_BYTES];
        tml_key_id(rec.new_public_key, kid);
        FUZZ_CHECK(memcmp(kid, rec.new_kid, sizeof(kid)) == 0);
        FUZZ_CHECK(!memcmp(after.keys[after.count - 1]->kid, rec.new_kid, TML_KEY_ID_BYTES));
        FUZZ_CHECK(!trusted(&old, rec.new_kid, TML_KEY_ID_BYTES));
        FUZZ_CHECK(!retired_now(&before, builtin, nb, rec.new_kid));
    } else {
        FUZZ_CHECK(after.count <= old.count);
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
    apply(mode, msg, len);
    if (len <= TML_LINK_MAX_PAYLOAD) {
        tml_trust_record_t rec;
        tml_reason_t why = tml_trust_check(msg, len, fuzz_keyring(), 0, &rec);
        device(msg, len, why == TML_REASON_MANIFEST_BAD_SIGNATURE ||
                             why == TML_REASON_MANIFEST_BAD_ALGORITHM);
    }
    return 0;
}
