/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Manifests and trust records (rotation, policy): their payloads, checked in the order of
 * manifest.py and trust.py with their reason codes, over the COSE_Sign1 envelope of cose.c.
 */
#include "tml/manifest.h"

#include <stddef.h>
#include <string.h>

#include "cose.h"
#include "tml/cbor.h"

#define RETIRE_MAX 8  /* trust.py MAX_RETIRE_KIDS: kids one policy record retires */
#define REVOKE_MAX 16 /* trust.py MAX_REVOKED_PACKAGES: packages one record revokes */

static bool text_field(const tml_fields_t *f, int key, tml_cbor_item_t *it)
{
    return tml_cose_field(f, key, TML_CBOR_TEXT, it) && it->arg >= 1 &&
           it->arg <= TML_MANIFEST_MAX_TEXT_BYTES;
}

/* Key 15, TrialSpec.from_wire: [n, [n labels], bstr 32 / null, max <= n, output_type 0/1]. */
static bool trial_field(const tml_fields_t *f, tml_manifest_t *m)
{
    tml_cbor_reader_t r;
    tml_cbor_item_t it;
    uint64_t n, v;
    tml_cbor_reader_init(&r, f->val[TML_K_TRIAL], (size_t)(f->end - f->val[TML_K_TRIAL]));
    if (tml_cbor_expect(&r, TML_CBOR_ARRAY, &it) != TML_OK || it.arg != 5 ||
        !tml_cose_next_uint(&r, TML_MAX_TRIAL_INPUTS, &n) || n == 0 ||
        tml_cbor_expect(&r, TML_CBOR_ARRAY, &it) != TML_OK || !it.shortest || it.arg != n) {
        return false;
    }
    for (uint64_t i = 0; i < n; i++) {
        if (!tml_cose_next_uint(&r, TML_MAX_LABELS - 1, &v)) {
            return false;
        }
        m->trial_labels[i] = (uint16_t)v;
    }
    if (tml_cbor_read(&r, &it) != TML_OK || !it.shortest) {
        return false;
    }
    if (it.major == TML_CBOR_BYTES && it.arg == 32) {
        memcpy(m->trial_outputs_sha256, it.data, 32);
        m->trial_has_digest = 1;
    } else if (it.major != TML_CBOR_SIMPLE || it.arg != 22) { /* null */
        return false;
    }
    m->trial_n = (uint8_t)n;
    if (!tml_cose_next_uint(&r, n, &v)) {
        return false;
    }
    m->trial_max_mismatches = (uint8_t)v;
    if (!tml_cose_next_uint(&r, 1, &v)) {
        return false;
    }
    m->trial_output_type = (uint8_t)v;
    return true;
}

/* Kinds of payload field, as Manifest.decode reads them. */
enum { F_U64, F_U32, F_ENCODING, F_TEXT, F_DIGEST, F_BASE_DIGEST };

/* The v1 payload fields: key, kind and place in tml_manifest_t (texts are checked, not kept).
 * A table rather than a call per field: the same checks in less code. */
static const struct {
    uint8_t key, kind, offset;
} manifest_fields[] = {
    {TML_K_SEQUENCE, F_U64, offsetof(tml_manifest_t, sequence)},
    {TML_K_MODEL_NAME, F_TEXT, 0},
    {TML_K_MODEL_VERSION, F_TEXT, 0},
    {TML_K_HARDWARE, F_TEXT, 0},
    {TML_K_MODEL_SHA256, F_DIGEST, offsetof(tml_manifest_t, model_sha256)},
    {TML_K_MODEL_SIZE, F_U32, offsetof(tml_manifest_t, model_size)},
    {TML_K_ENCODING, F_ENCODING, offsetof(tml_manifest_t, encoding)},
    {TML_K_TRANSFER_SHA256, F_DIGEST, offsetof(tml_manifest_t, transfer_sha256)},
    {TML_K_TRANSFER_SIZE, F_U32, offsetof(tml_manifest_t, transfer_size)},
    {TML_K_BASE_SHA256, F_BASE_DIGEST, offsetof(tml_manifest_t, base_sha256)},
    {TML_K_ARENA_BYTES, F_U32, offsetof(tml_manifest_t, arena_bytes)},
    {TML_K_EXPIRES_AT, F_U64, offsetof(tml_manifest_t, expires_at)},
    {TML_K_PACKAGE_ID, F_U64, offsetof(tml_manifest_t, package_id)},
};

/* Manifest.decode: every required field present and of its wire type. */
static tml_reason_t decode_manifest(const tml_fields_t *f, tml_manifest_t *m, tml_cbor_item_t *hw)
{
    memset(m, 0, sizeof(*m));
    for (size_t i = 0; i < sizeof(manifest_fields) / sizeof(manifest_fields[0]); i++) {
        int key = manifest_fields[i].key, kind = manifest_fields[i].kind;
        uint8_t *dst = (uint8_t *)m + manifest_fields[i].offset;
        tml_cbor_item_t text;
        uint64_t v = 0;
        bool ok;
        if (kind == F_BASE_DIGEST && !f->val[key]) {
            continue; /* the one optional field */
        }
        if (kind == F_TEXT) {
            ok = text_field(f, key, &text);
            if (key == TML_K_HARDWARE) {
                *hw = text;
            }
        } else if (kind >= F_DIGEST) {
            ok = tml_cose_bytes(f, key, 32, dst);
        } else {
            ok = tml_cose_uint(f, key,
                            kind == F_U64   ? UINT64_MAX
                            : kind == F_U32 ? UINT32_MAX
                                            : TML_ENCODING_DELTA,
                            &v);
        }
        if (!ok) {
            return TML_REASON_MANIFEST_MALFORMED;
        }
        if (kind == F_U64) {
            *(uint64_t *)(void *)dst = v;
        } else if (kind == F_U32) {
            *(uint32_t *)(void *)dst = (uint32_t)v;
        } else if (kind == F_ENCODING) {
            *dst = (uint8_t)v;
        }
    }
    if (f->val[TML_K_TRIAL] && !trial_field(f, m)) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    m->has_base = f->val[TML_K_BASE_SHA256] != NULL;
    if ((m->encoding == TML_ENCODING_DELTA) != m->has_base) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    if (m->encoding == TML_ENCODING_RAW &&
        (m->transfer_size != m->model_size ||
         memcmp(m->transfer_sha256, m->model_sha256, 32) != 0)) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    return TML_REASON_OK;
}

#define MANIFEST_KEYS 0xFFFEUL /* keys 1..15 */
#define TRUST_KEYS                                                                               \
    (KEY_BIT(1) | KEY_BIT(2) | KEY_BIT(20) | KEY_BIT(21) | KEY_BIT(22) | KEY_BIT(30) |          \
     KEY_BIT(31) | KEY_BIT(32))

tml_reason_t tml_manifest_check(const uint8_t *cose, size_t len,
                                const tml_manifest_policy_t *policy, tml_manifest_t *out)
{
    tml_sign1_t msg;
    tml_fields_t f;
    tml_cbor_item_t hw = {0};
    memset(out, 0, sizeof(*out)); /* nothing unauthenticated is left for a report to name */
    tml_reason_t why = tml_cose_parse(cose, len, &msg);
    if (why == TML_REASON_OK) {
        why = tml_cose_check_algorithm(&msg);
    }
    if (why != TML_REASON_OK) {
        return why;
    }
    int key = tml_cose_find_key(policy->keyring, msg.kid, msg.kid_len);
    if (key < 0) {
        return TML_REASON_MANIFEST_UNKNOWN_KEY;
    }
    why = tml_cose_verify(&msg, policy->keyring->keys[key]);
    if (why == TML_REASON_OK) {
        why = tml_cose_decode_map(msg.payload, msg.payload_len, MANIFEST_KEYS, &f);
    }
    if (why == TML_REASON_OK) {
        why = decode_manifest(&f, out, &hw);
    }
    if (why != TML_REASON_OK) {
        memset(out, 0, sizeof(*out)); /* a payload decoded in part is no manifest: package 0 */
        return why;
    }
    if (out->sequence <= policy->current_sequence) {
        return TML_REASON_MANIFEST_SEQUENCE_REPLAY;
    }
    for (size_t i = 0; i < policy->revoked_count; i++) {
        if (out->package_id == policy->revoked[i]) {
            return TML_REASON_ABORTED; /* revoked by a policy record (key 32) */
        }
    }
    if (policy->now >= out->expires_at) {
        return TML_REASON_MANIFEST_EXPIRED;
    }
    if (hw.arg != strlen(policy->hardware_profile) ||
        memcmp(hw.data, policy->hardware_profile, (size_t)hw.arg) != 0) {
        return TML_REASON_MANIFEST_WRONG_HARDWARE;
    }
    if (policy->slot_bytes && out->model_size > policy->slot_bytes) {
        return TML_REASON_MANIFEST_TOO_LARGE;
    }
    if (policy->arena_bytes && out->arena_bytes > policy->arena_bytes) {
        return TML_REASON_MANIFEST_ARENA_TOO_SMALL;
    }
    if (out->encoding == TML_ENCODING_DELTA && policy->running_model_sha256 &&
        memcmp(out->base_sha256, policy->running_model_sha256, 32) != 0) {
        return TML_REASON_DELTA_BASE_MISMATCH;
    }
    return TML_REASON_OK;
}

uint32_t tml_manifest_peek_package(const uint8_t *cose, size_t len)
{
    tml_sign1_t msg;
    tml_cbor_reader_t r;
    tml_cbor_item_t map, k, v;
    if (tml_cose_parse(cose, len, &msg) != TML_REASON_OK) {
        return 0;
    }
    tml_cbor_reader_init(&r, msg.payload, msg.payload_len);
    tml_cbor_reader_t check = r;
    if (tml_cbor_skip(&check, TML_COSE_DEPTH) != TML_OK || tml_cbor_read(&r, &map) != TML_OK ||
        map.major != TML_CBOR_MAP) {
        return 0;
    }
    for (uint64_t i = 0; i < map.arg; i++) {
        if (tml_cbor_read(&r, &k) != TML_OK) {
            return 0;
        }
        tml_cbor_reader_t val = r;
        if (k.major == TML_CBOR_UINT && k.arg == TML_K_PACKAGE_ID &&
            tml_cbor_read(&val, &v) == TML_OK && v.major == TML_CBOR_UINT &&
            v.arg <= TML_MAX_PACKAGE_ID) {
            return (uint32_t)v.arg;
        }
        if (tml_cbor_skip(&r, TML_COSE_DEPTH) != TML_OK) {
            return 0;
        }
    }
    return 0;
}

/* Read a key-30 or key-32 array head: shortest, 1..max items; r is left at the first item. */
static bool list_field(const tml_fields_t *f, int key, uint64_t max, tml_cbor_reader_t *r,
                       uint8_t *count)
{
    tml_cbor_item_t it;
    tml_cbor_reader_init(r, f->val[key], (size_t)(f->end - f->val[key]));
    if (tml_cbor_expect(r, TML_CBOR_ARRAY, &it) != TML_OK || !it.shortest || it.arg < 1 ||
        it.arg > max) {
        return false;
    }
    *count = (uint8_t)it.arg;
    return true;
}

/* TrustPolicy.decode: keys 30 (kids), 31 (uint), 32 (uints), at least one of them. */
static bool decode_policy(const tml_fields_t *f, tml_trust_record_t *out)
{
    tml_cbor_reader_t r;
    tml_cbor_item_t it;
    uint64_t v;
    if (f->val[TML_K_NEW_PUBLIC_KEY] || f->val[TML_K_RETIRE_KID] ||
        !(f->val[TML_K_RETIRE_KIDS] || f->val[TML_K_MIN_SEQUENCE] ||
          f->val[TML_K_REVOKE_PACKAGES])) {
        return false;
    }
    if (f->val[TML_K_RETIRE_KIDS]) {
        if (!list_field(f, TML_K_RETIRE_KIDS, RETIRE_MAX, &r, &out->retire_count)) {
            return false;
        }
        out->retire = r.p + 1;
        out->retire_sized = true;
        for (uint8_t i = 0; i < out->retire_count; i++) {
            if (tml_cbor_expect(&r, TML_CBOR_BYTES, &it) != TML_OK || !it.shortest ||
                it.arg != TML_KEY_ID_BYTES) {
                return false;
            }
        }
    }
    if (f->val[TML_K_MIN_SEQUENCE] &&
        !tml_cose_uint(f, TML_K_MIN_SEQUENCE, UINT64_MAX, &out->min_sequence)) {
        return false;
    }
    if (f->val[TML_K_REVOKE_PACKAGES]) {
        if (!list_field(f, TML_K_REVOKE_PACKAGES, REVOKE_MAX, &r,
                        &out->revoke_count)) {
            return false;
        }
        out->revoke = r.p;
        for (uint8_t i = 0; i < out->revoke_count; i++) {
            if (!tml_cose_next_uint(&r, UINT64_MAX, &v)) {
                return false;
            }
        }
    }
    return true;
}

/* KeyRotation.decode: keys 20 and 21 (the kid must be the key's), optional 22. */
static tml_reason_t decode_rotation(const tml_fields_t *f, tml_trust_record_t *out)
{
    tml_cbor_item_t it;
    uint8_t kid[TML_KEY_ID_BYTES];
    if (f->val[TML_K_RETIRE_KIDS] || f->val[TML_K_MIN_SEQUENCE] ||
        f->val[TML_K_REVOKE_PACKAGES] ||
        !tml_cose_bytes(f, TML_K_NEW_KID, TML_KEY_ID_BYTES, out->new_kid) ||
        !tml_cose_bytes(f, TML_K_NEW_PUBLIC_KEY, 32, out->new_public_key)) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    if (f->val[TML_K_RETIRE_KID]) {
        if (!tml_cose_field(f, TML_K_RETIRE_KID, TML_CBOR_BYTES, &it) || it.arg < 1 ||
            it.arg > TML_MAX_KID_BYTES) {
            return TML_REASON_MANIFEST_MALFORMED;
        }
        out->retire_count = 1;
        out->retire_sized = it.arg == TML_KEY_ID_BYTES;
        out->retire = it.data;
    }
    tml_key_id(out->new_public_key, kid);
    return memcmp(kid, out->new_kid, TML_KEY_ID_BYTES) ? TML_REASON_MANIFEST_BAD_ROTATION
                                                       : TML_REASON_OK;
}

tml_reason_t tml_trust_check(const uint8_t *cose, size_t len, const tml_keyring_t *keyring,
                             uint64_t record_sequence, tml_trust_record_t *out)
{
    tml_sign1_t msg;
    tml_fields_t f;
    memset(out, 0, sizeof(*out));
    tml_reason_t why = tml_cose_parse(cose, len, &msg);
    if (why == TML_REASON_OK) {
        why = tml_cose_check_algorithm(&msg);
    }
    if (why != TML_REASON_OK) {
        return why;
    }
    /* A replay is skipped before the signature (manifest.h): it changes nothing either way. */
    tml_reason_t shape = tml_cose_decode_map(msg.payload, msg.payload_len, TRUST_KEYS, &f);
    bool sequenced = shape == TML_REASON_OK &&
                     tml_cose_uint(&f, TML_K_SEQUENCE, UINT64_MAX, &out->sequence);
    if (sequenced && out->sequence <= record_sequence) {
        return TML_REASON_MANIFEST_SEQUENCE_REPLAY;
    }
    int signer = tml_cose_find_key(keyring, msg.kid, msg.kid_len);
    if (signer < 0) {
        return TML_REASON_MANIFEST_BAD_ROTATION; /* a new or unknown key cannot vouch for itself */
    }
    out->signer = (uint8_t)signer;
    why = tml_cose_verify(&msg, keyring->keys[signer]);
    if (why == TML_REASON_OK) {
        why = shape;
    }
    if (why != TML_REASON_OK) {
        return why;
    }
    if (!sequenced) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    out->is_rotation = f.val[TML_K_NEW_KID] != NULL; /* decode_trust_record tells them apart so */
    if (out->is_rotation) {
        why = decode_rotation(&f, out);
    } else if (!decode_policy(&f, out)) {
        why = TML_REASON_MANIFEST_MALFORMED;
    }
    return why; /* the sequence is above record_sequence (checked first) */
}
