/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The trust state in the metadata, and rotation and policy records applied to it in
 * trust.py's TrustState.apply order: every check runs before the first change, so a
 * refused record leaves the state as it was.
 */
#include "tml/trust.h"

#include <string.h>

#include "tml/cbor.h"

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

/* Index of the item starting with kid in an array of n items of size bytes, or -1. One search
 * for the built-in keys, the rotated keys and the retired ids (smaller code than three). */
static int find(const void *array, size_t n, size_t size, const uint8_t *kid)
{
    for (size_t i = 0; i < n; i++) {
        if (!memcmp((const uint8_t *)array + i * size, kid, TML_KEY_ID_BYTES)) {
            return (int)i;
        }
    }
    return -1;
}

/* Drop item i of an array of *n items, keeping the others' order. */
static void drop(void *array, uint8_t *n, size_t i, size_t size)
{
    uint8_t *a = array;
    memmove(a + i * size, a + (i + 1) * size, (--*n - i) * size);
}

/* Append an item to an array of *n items holding max: the oldest goes when it is full (retired
 * ids, revoked packages; never a rotated key: tml_trust_apply refuses a rotation then). */
static void push(void *array, uint8_t *n, size_t max, size_t size, const void *item)
{
    if (*n == max) {
        drop(array, n, 0, size);
    }
    memcpy((uint8_t *)array + (*n)++ * size, item, size);
}

static bool revoked(const tml_meta_t *m, uint64_t pkg)
{
    for (size_t i = 0; i < m->revoked_count; i++) {
        if (m->revoked[i] == pkg) {
            return true;
        }
    }
    return false;
}

static size_t builtins(size_t count)
{
    return count < TML_MAX_BUILTIN_KEYS ? count : TML_MAX_BUILTIN_KEYS;
}

void tml_trust_keyring(const tml_meta_t *m, const tml_key_t *builtin, size_t builtin_count,
                       const tml_key_t **keys, tml_keyring_t *ring)
{
    size_t n = 0;
    for (size_t i = 0; i < builtins(builtin_count); i++) {
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
    int b = find(builtin, builtins(builtin_count), sizeof(*builtin), rec.new_kid);
    /* A full rotated list takes a new key only if the record retires one of them (the rotated
     * keys end the ring): never by evicting one, which could be newer than the signer. */
    bool full = m->rotated_count == TML_MAX_ROTATED_KEYS &&
                !(gone >> (ring->count - m->rotated_count));
    if (rec.is_rotation ? ring_index(ring, rec.new_kid) >= 0 || b >= 0 || full ||
                              find(m->retired, m->retired_count, TML_KEY_ID_BYTES, rec.new_kid) >= 0
                        : gone == (1UL << ring->count) - 1) {
        return TML_REASON_MANIFEST_BAD_ROTATION; /* known or returning key; full; no key left */
    }
    for (size_t i = 0; i < rec.retire_count; i++) {
        const uint8_t *kid = rec.retire + 9 * i;
        int k = find(builtin, builtins(builtin_count), sizeof(*builtin), kid);
        if (k >= 0) {
            m->retired_builtin |= (uint8_t)(1U << k);
        } else if ((k = find(m->rotated, m->rotated_count, sizeof(m->rotated[0]), kid)) >= 0) {
            drop(m->rotated, &m->rotated_count, (size_t)k, sizeof(m->rotated[0]));
            push(m->retired, &m->retired_count, TML_MAX_RETIRED_KIDS, TML_KEY_ID_BYTES, kid);
        }
    }
    if (rec.is_rotation) {
        tml_key_t key;
        memcpy(key.kid, rec.new_kid, TML_KEY_ID_BYTES);
        memcpy(key.public_key, rec.new_public_key, 32);
        push(m->rotated, &m->rotated_count, TML_MAX_ROTATED_KEYS, sizeof(key), &key);
    } else {
        tml_cbor_reader_t r;
        tml_cbor_item_t it;
        if (rec.revoke) { /* never NULL + 0: pointer arithmetic on NULL is undefined (fuzzing) */
            tml_cbor_reader_init(&r, rec.revoke, (size_t)(cose + len - rec.revoke));
        }
        for (size_t i = 0; rec.revoke && i < rec.revoke_count && tml_cbor_read(&r, &it) == TML_OK;
             i++) {
            uint32_t pkg = (uint32_t)it.arg;
            if (it.arg <= UINT32_MAX && !revoked(m, pkg)) { /* a known one keeps its place */
                push(m->revoked, &m->revoked_count, TML_MAX_REVOKED_PACKAGES, sizeof(pkg), &pkg);
            }
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
    return revoked(m, package_id) || sequence <= m->min_sequence;
}
