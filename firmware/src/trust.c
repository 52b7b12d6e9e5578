/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The trust state in the metadata, and rotation and policy records applied to it in
 * manifest.py's TrustState.apply order: every check runs before the first change, so a
 * refused record leaves the state as it was.
 */
#include "tml/trust.h"

#include <string.h>

#include "tml/cbor.h"

void tml_trust_keyring(const tml_meta_t *m, const tml_key_t *builtin, size_t builtin_count,
                       const tml_key_t **keys, tml_keyring_t *ring)
{
    size_t n = 0;
    for (size_t i = 0; i < builtin_count && i < TML_MAX_BUILTIN_KEYS; i++) {
        if (!(m->retired_builtin & (1U << i))) {
            keys[n++] = &builtin[i];
        }
    }
    for (size_t i = 0; i < m->rotated_count; i++) {
        keys[n++] = &m->rotated[i];
    }
    ring->keys = keys;
    ring->count = n;
}

/* Index of kid in the keyring (the order the device came to trust its keys), or -1. */
static int ring_index(const tml_keyring_t *ring, const uint8_t *kid)
{
    for (size_t i = 0; i < ring->count; i++) {
        if (memcmp(ring->keys[i]->kid, kid, TML_KEY_ID_BYTES) == 0) {
            return (int)i;
        }
    }
    return -1;
}

/* Drop element i of an array of n elements of size bytes, keeping the others' order. */
static void drop(void *array, size_t i, size_t n, size_t size)
{
    uint8_t *a = array;
    memmove(a + i * size, a + (i + 1) * size, (n - i - 1) * size);
}

static bool was_retired(const tml_meta_t *m, const tml_key_t *builtin, size_t builtin_count,
                        const uint8_t *kid)
{
    for (size_t i = 0; i < builtin_count && i < TML_MAX_BUILTIN_KEYS; i++) {
        if ((m->retired_builtin & (1U << i)) && !memcmp(builtin[i].kid, kid, TML_KEY_ID_BYTES)) {
            return true;
        }
    }
    for (size_t i = 0; i < m->retired_count; i++) {
        if (!memcmp(m->retired[i], kid, TML_KEY_ID_BYTES)) {
            return true;
        }
    }
    return false;
}

/* Stop trusting kid (trusted now): a built-in key's bit, or a rotated key moved to retired[]. */
static void retire(tml_meta_t *m, const tml_key_t *builtin, size_t builtin_count,
                   const uint8_t *kid)
{
    for (size_t i = 0; i < builtin_count && i < TML_MAX_BUILTIN_KEYS; i++) {
        if (!memcmp(builtin[i].kid, kid, TML_KEY_ID_BYTES)) {
            m->retired_builtin |= (uint8_t)(1U << i);
            return;
        }
    }
    for (size_t i = 0; i < m->rotated_count; i++) {
        if (!memcmp(m->rotated[i].kid, kid, TML_KEY_ID_BYTES)) {
            drop(m->rotated, i, m->rotated_count--, sizeof(m->rotated[0]));
            if (m->retired_count == TML_MAX_RETIRED_KIDS) { /* forget the oldest */
                drop(m->retired, 0, m->retired_count--, TML_KEY_ID_BYTES);
            }
            memcpy(m->retired[m->retired_count++], kid, TML_KEY_ID_BYTES);
            return;
        }
    }
}

static void revoke(tml_meta_t *m, uint64_t pkg)
{
    for (size_t i = 0; i < m->revoked_count; i++) {
        if (m->revoked[i] == pkg) {
            return; /* already revoked: it keeps its place */
        }
    }
    if (pkg > UINT32_MAX) {
        return; /* no manifest this device accepts has such an id */
    }
    if (m->revoked_count == TML_MAX_REVOKED_PACKAGES) { /* keep the newest */
        drop(m->revoked, 0, m->revoked_count--, sizeof(m->revoked[0]));
    }
    m->revoked[m->revoked_count++] = (uint32_t)pkg;
}

tml_reason_t tml_trust_apply(tml_meta_t *m, const tml_keyring_t *ring, const tml_key_t *builtin,
                             size_t builtin_count, const uint8_t *cose, size_t len)
{
    tml_trust_record_t rec;
    uint32_t gone = 0;
    tml_reason_t why = tml_trust_check(cose, len, ring, m->rotation_sequence, &rec);
    if (why != TML_REASON_OK) {
        return why;
    }
    /* check_retirement: only trusted keys, none newer than the signer, never the last one. */
    for (size_t i = 0; i < rec.retire_count; i++) {
        int k = rec.retire_sized ? ring_index(ring, rec.retire + 9 * i) : -1;
        if (k < 0 || k > rec.signer) {
            return TML_REASON_MANIFEST_BAD_ROTATION;
        }
        gone |= 1UL << k;
    }
    if (rec.is_rotation ? ring_index(ring, rec.new_kid) >= 0 ||
                              was_retired(m, builtin, builtin_count, rec.new_kid)
                        : gone == (1UL << ring->count) - 1) {
        return TML_REASON_MANIFEST_BAD_ROTATION; /* known or returning key; no key left */
    }
    for (size_t i = 0; i < rec.retire_count; i++) {
        retire(m, builtin, builtin_count, rec.retire + 9 * i);
    }
    if (rec.is_rotation) {
        if (m->rotated_count == TML_MAX_ROTATED_KEYS) { /* keep the newest keys */
            drop(m->rotated, 0, m->rotated_count--, sizeof(m->rotated[0]));
        }
        tml_key_t *k = &m->rotated[m->rotated_count++];
        memcpy(k->kid, rec.new_kid, TML_KEY_ID_BYTES);
        memcpy(k->public_key, rec.new_public_key, 32);
    } else {
        tml_cbor_reader_t r;
        tml_cbor_item_t it;
        tml_cbor_reader_init(&r, rec.revoke, rec.revoke ? (size_t)(cose + len - rec.revoke) : 0);
        for (size_t i = 0; i < rec.revoke_count && tml_cbor_read(&r, &it) == TML_OK; i++) {
            revoke(m, it.arg);
        }
        if (rec.min_sequence > m->min_sequence) {
            m->min_sequence = rec.min_sequence;
        }
    }
    m->rotation_sequence = rec.sequence;
    return TML_REASON_OK;
}

bool tml_trust_stops(const tml_meta_t *m, uint64_t package_id, uint64_t sequence)
{
    for (size_t i = 0; i < m->revoked_count; i++) {
        if (m->revoked[i] == package_id) {
            return true;
        }
    }
    return sequence <= m->min_sequence;
}
