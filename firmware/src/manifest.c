/* SPDX-License-Identifier: Apache-2.0 */
/*
 * COSE_Sign1 manifests and trust records (rotation, policy), checked in manifest.py's order with its
 * reason codes. The Sig_structure is hashed in pieces straight from the message, so checking
 * needs no copy of it.
 */
#include "tml/manifest.h"

#include <stddef.h>
#include <string.h>

#include "tml/cbor.h"
#include "tml/ed25519.h"
#include "tml/sha.h"

#define MAX_KEY 32 /* every payload key of v1 is a one-byte uint: 1..15, 20..22, 30..32 */
#define DEPTH 8    /* cbor2's max_depth in cose.loads_strict */
#define RETIRE_MAX 8  /* manifest.py MAX_RETIRE_KIDS: kids one policy record retires */
#define REVOKE_MAX 16 /* manifest.py MAX_REVOKED_PACKAGES: packages one record revokes */

typedef struct {
    const uint8_t *protected_hdr, *kid, *payload, *sig;
    size_t protected_len, kid_len, payload_len, sig_len;
} sign1_t;

/* Values of a decoded payload map, by key (NULL: absent). */
typedef struct {
    const uint8_t *val[MAX_KEY + 1];
    const uint8_t *end;
} fields_t;

/* Split the envelope (cose.parse_sign1): any deviation is MANIFEST_MALFORMED. */
static tml_reason_t parse_sign1(const uint8_t *cose, size_t len, sign1_t *m)
{
    tml_cbor_reader_t r, check;
    tml_cbor_item_t it, k, v;
    if (len > TML_MAX_OFFER_BYTES) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    tml_cbor_reader_init(&check, cose, len);
    if (tml_cbor_skip(&check, DEPTH) != TML_OK || check.p != check.end) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    tml_cbor_reader_init(&r, cose, len);
    if (tml_cbor_read(&r, &it) != TML_OK) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    if (it.major == TML_CBOR_TAG) {
        if (it.arg != TML_COSE_SIGN1_TAG || tml_cbor_read(&r, &it) != TML_OK) {
            return TML_REASON_MANIFEST_MALFORMED;
        }
    }
    if (it.major != TML_CBOR_ARRAY || it.arg != 4) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    if (tml_cbor_expect(&r, TML_CBOR_BYTES, &it) != TML_OK || it.arg == 0) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    m->protected_hdr = it.data;
    m->protected_len = (size_t)it.arg;
    /* unprotected = exactly {4: kid}, kid a bstr of 1..32 bytes */
    if (tml_cbor_expect(&r, TML_CBOR_MAP, &it) != TML_OK || it.arg != 1 ||
        tml_cbor_expect(&r, TML_CBOR_UINT, &k) != TML_OK || k.arg != TML_COSE_HEADER_KID ||
        tml_cbor_expect(&r, TML_CBOR_BYTES, &v) != TML_OK || v.arg < 1 ||
        v.arg > TML_MAX_KID_BYTES) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    m->kid = v.data;
    m->kid_len = (size_t)v.arg;
    if (tml_cbor_expect(&r, TML_CBOR_BYTES, &it) != TML_OK) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    m->payload = it.data;
    m->payload_len = (size_t)it.arg;
    if (tml_cbor_expect(&r, TML_CBOR_BYTES, &it) != TML_OK) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    m->sig = it.data;
    m->sig_len = (size_t)it.arg;
    return TML_REASON_OK;
}

static bool is_int(const tml_cbor_item_t *it)
{
    return it->major == TML_CBOR_UINT || it->major == TML_CBOR_NINT;
}

/* Return whether the n map entries at r hold two equal integer keys (cbor2 refuses them). */
static bool duplicate_int_keys(tml_cbor_reader_t r, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        tml_cbor_item_t a, b;
        (void)tml_cbor_read(&r, &a);
        tml_cbor_reader_t rest = r;
        (void)tml_cbor_skip(&rest, DEPTH);
        tml_cbor_reader_t scan = rest;
        for (uint64_t j = i + 1; j < n; j++) {
            (void)tml_cbor_read(&scan, &b);
            if (is_int(&a) && a.major == b.major && a.arg == b.arg) {
                return true;
            }
            if (!is_int(&a) && (size_t)(scan.p - b.start) == (size_t)(r.p - a.start) &&
                memcmp(a.start, b.start, (size_t)(r.p - a.start)) == 0) {
                return true;
            }
            (void)tml_cbor_skip(&scan, DEPTH);
        }
        r = rest;
    }
    return false;
}

/* cose.check_algorithm: the protected header must decode as exactly {1: -8}. */
static tml_reason_t check_algorithm(const sign1_t *m)
{
    tml_cbor_reader_t r;
    tml_cbor_item_t map, k, v;
    tml_cbor_reader_init(&r, m->protected_hdr, m->protected_len);
    tml_cbor_reader_t check = r;
    if (tml_cbor_skip(&check, DEPTH) != TML_OK || check.p != check.end) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    if (tml_cbor_read(&r, &map) != TML_OK || map.major != TML_CBOR_MAP) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    if (duplicate_int_keys(r, map.arg)) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    if (map.arg != 1 || tml_cbor_read(&r, &k) != TML_OK || k.major != TML_CBOR_UINT ||
        k.arg != TML_COSE_HEADER_ALG || tml_cbor_read(&r, &v) != TML_OK ||
        v.major != TML_CBOR_NINT || v.arg != (uint64_t)(-1 - TML_COSE_ALG_EDDSA)) {
        return TML_REASON_MANIFEST_BAD_ALGORITHM;
    }
    return TML_REASON_OK;
}

/* Index of the key with this id in the keyring, or -1. */
static int find_key(const tml_keyring_t *ring, const uint8_t *kid, size_t len)
{
    for (size_t i = 0; len == TML_KEY_ID_BYTES && i < ring->count; i++) {
        if (memcmp(ring->keys[i]->kid, kid, TML_KEY_ID_BYTES) == 0) {
            return (int)i;
        }
    }
    return -1;
}

/* A payload key's bit in an allowed-keys mask: keys 30..32 take the unused bits 24..26. */
#define KEY_BIT(k) (1UL << ((k) < 24 ? (k) : (k) - 6))
static uint32_t key_bit(uint64_t k)
{
    return (k < 24 || (k >= 30 && k <= MAX_KEY)) ? KEY_BIT(k) : 0;
}

static void hash_bstr_head(tml_ed25519_verify_t *v, size_t len)
{
    uint8_t head[9];
    tml_cbor_writer_t w;
    size_t n = 0;
    tml_cbor_writer_init(&w, head, sizeof(head));
    tml_cbor_put_head(&w, TML_CBOR_BYTES, len);
    (void)tml_cbor_finish(&w, &n);
    tml_ed25519_verify_update(v, head, n);
}

/* Verify the signature over Sig_structure = ["Signature1", protected, h'', payload]. */
static tml_reason_t verify_signature(const sign1_t *m, const tml_key_t *key)
{
    static const uint8_t context[] = {0x84, 0x6A, 'S', 'i', 'g', 'n', 'a', 't', 'u', 'r', 'e', '1'};
    static const uint8_t empty_bstr = 0x40;
    tml_ed25519_verify_t v;
    if (m->sig_len != TML_SIGNATURE_BYTES) {
        return TML_REASON_MANIFEST_BAD_SIGNATURE;
    }
    tml_ed25519_verify_start(&v, m->sig, key->public_key);
    tml_ed25519_verify_update(&v, context, sizeof(context));
    hash_bstr_head(&v, m->protected_len);
    tml_ed25519_verify_update(&v, m->protected_hdr, m->protected_len);
    tml_ed25519_verify_update(&v, &empty_bstr, 1);
    hash_bstr_head(&v, m->payload_len);
    tml_ed25519_verify_update(&v, m->payload, m->payload_len);
    return tml_ed25519_verify_finish(&v) ? TML_REASON_OK : TML_REASON_MANIFEST_BAD_SIGNATURE;
}

/*
 * manifest._decode_map: strict CBOR, a map with integer keys, key 1 == 1 (else
 * UNSUPPORTED_VERSION), then deterministic encoding and only keys in `allowed` (a bit mask).
 */
static tml_reason_t decode_map(const uint8_t *payload, size_t len, uint32_t allowed, fields_t *f)
{
    tml_cbor_reader_t r, check;
    tml_cbor_item_t map, k, v;
    memset(f, 0, sizeof(*f));
    f->end = payload + len;
    tml_cbor_reader_init(&check, payload, len);
    if (tml_cbor_skip(&check, DEPTH) != TML_OK || check.p != check.end) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    tml_cbor_reader_init(&r, payload, len);
    if (tml_cbor_read(&r, &map) != TML_OK || map.major != TML_CBOR_MAP) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    if (duplicate_int_keys(r, map.arg)) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    /* First pass: integer keys only; find the version. */
    tml_cbor_reader_t scan = r;
    bool have_version = false, version_ok = false;
    for (uint64_t i = 0; i < map.arg; i++) {
        (void)tml_cbor_read(&scan, &k);
        if (!is_int(&k)) {
            return TML_REASON_MANIFEST_MALFORMED;
        }
        tml_cbor_reader_t val = scan;
        (void)tml_cbor_read(&val, &v);
        if (k.major == TML_CBOR_UINT && k.arg == TML_K_VERSION) {
            if (!is_int(&v)) {
                return TML_REASON_MANIFEST_MALFORMED;
            }
            have_version = true;
            version_ok = v.major == TML_CBOR_UINT && v.arg == TML_MANIFEST_FORMAT_VERSION;
        }
        (void)tml_cbor_skip(&scan, DEPTH);
    }
    if (!have_version) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    if (!version_ok) {
        return TML_REASON_MANIFEST_UNSUPPORTED_VERSION;
    }
    /* Second pass: deterministic encoding, known keys, ascending. */
    if (!map.shortest) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    int last = -1;
    for (uint64_t i = 0; i < map.arg; i++) {
        (void)tml_cbor_read(&r, &k);
        if (k.major != TML_CBOR_UINT || !(allowed & key_bit(k.arg)) || !k.shortest ||
            (int)k.arg <= last) {
            return TML_REASON_MANIFEST_MALFORMED;
        }
        last = (int)k.arg;
        f->val[k.arg] = r.p;
        tml_cbor_item_t val;
        (void)tml_cbor_read(&r, &val);
        if (!val.shortest || (val.major != TML_CBOR_UINT && val.major != TML_CBOR_BYTES &&
                              val.major != TML_CBOR_TEXT && val.major != TML_CBOR_ARRAY)) {
            return TML_REASON_MANIFEST_MALFORMED; /* no v1 field has another type */
        }
    }
    return TML_REASON_OK;
}

/* Read field `key` as a given major type; false when absent or of another type. */
static bool field(const fields_t *f, int key, int major, tml_cbor_item_t *it)
{
    tml_cbor_reader_t r;
    if (!f->val[key]) {
        return false;
    }
    tml_cbor_reader_init(&r, f->val[key], (size_t)(f->end - f->val[key]));
    return tml_cbor_expect(&r, major, it) == TML_OK;
}

static bool uint_field(const fields_t *f, int key, uint64_t max, uint64_t *out)
{
    tml_cbor_item_t it;
    if (!field(f, key, TML_CBOR_UINT, &it) || it.arg > max) {
        return false;
    }
    *out = it.arg;
    return true;
}

static bool bytes_field(const fields_t *f, int key, size_t size, uint8_t *out)
{
    tml_cbor_item_t it;
    if (!field(f, key, TML_CBOR_BYTES, &it) || it.arg != size) {
        return false;
    }
    memcpy(out, it.data, size);
    return true;
}

static bool text_field(const fields_t *f, int key, tml_cbor_item_t *it)
{
    return field(f, key, TML_CBOR_TEXT, it) && it->arg >= 1 &&
           it->arg <= TML_MANIFEST_MAX_TEXT_BYTES;
}

/* Read the next item of a key-15 array: a shortest-encoded uint <= max. */
static bool next_uint(tml_cbor_reader_t *r, uint64_t max, uint64_t *out)
{
    tml_cbor_item_t it;
    if (tml_cbor_expect(r, TML_CBOR_UINT, &it) != TML_OK || !it.shortest || it.arg > max) {
        return false;
    }
    *out = it.arg;
    return true;
}

/* Key 15, TrialSpec.from_wire: [n, [n labels], bstr 32 / null, max <= n, output_type 0/1]. */
static bool trial_field(const fields_t *f, tml_manifest_t *m)
{
    tml_cbor_reader_t r;
    tml_cbor_item_t it;
    uint64_t n, v;
    tml_cbor_reader_init(&r, f->val[TML_K_TRIAL], (size_t)(f->end - f->val[TML_K_TRIAL]));
    if (tml_cbor_expect(&r, TML_CBOR_ARRAY, &it) != TML_OK || it.arg != 5 ||
        !next_uint(&r, TML_MAX_TRIAL_INPUTS, &n) || n == 0 ||
        tml_cbor_expect(&r, TML_CBOR_ARRAY, &it) != TML_OK || !it.shortest || it.arg != n) {
        return false;
    }
    for (uint64_t i = 0; i < n; i++) {
        if (!next_uint(&r, TML_MAX_LABELS - 1, &v)) {
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
    if (!next_uint(&r, n, &v)) {
        return false;
    }
    m->trial_max_mismatches = (uint8_t)v;
    if (!next_uint(&r, 1, &v)) {
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
static tml_reason_t decode_manifest(const fields_t *f, tml_manifest_t *m, tml_cbor_item_t *hw)
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
            ok = bytes_field(f, key, 32, dst);
        } else {
            ok = uint_field(f, key,
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
    sign1_t msg;
    fields_t f;
    tml_cbor_item_t hw = {0};
    memset(out, 0, sizeof(*out)); /* nothing unauthenticated is left for a report to name */
    tml_reason_t why = parse_sign1(cose, len, &msg);
    if (why == TML_REASON_OK) {
        why = check_algorithm(&msg);
    }
    if (why != TML_REASON_OK) {
        return why;
    }
    int key = find_key(policy->keyring, msg.kid, msg.kid_len);
    if (key < 0) {
        return TML_REASON_MANIFEST_UNKNOWN_KEY;
    }
    why = verify_signature(&msg, policy->keyring->keys[key]);
    if (why == TML_REASON_OK) {
        why = decode_map(msg.payload, msg.payload_len, MANIFEST_KEYS, &f);
    }
    if (why == TML_REASON_OK) {
        why = decode_manifest(&f, out, &hw);
    }
    if (why != TML_REASON_OK) {
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
    sign1_t msg;
    tml_cbor_reader_t r;
    tml_cbor_item_t map, k, v;
    if (parse_sign1(cose, len, &msg) != TML_REASON_OK) {
        return 0;
    }
    tml_cbor_reader_init(&r, msg.payload, msg.payload_len);
    tml_cbor_reader_t check = r;
    if (tml_cbor_skip(&check, DEPTH) != TML_OK || tml_cbor_read(&r, &map) != TML_OK ||
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
        if (tml_cbor_skip(&r, DEPTH) != TML_OK) {
            return 0;
        }
    }
    return 0;
}

void tml_key_id(const uint8_t public_key[32], uint8_t kid[TML_KEY_ID_BYTES])
{
    uint8_t digest[32];
    tml_sha256(public_key, 32, digest);
    memcpy(kid, digest, TML_KEY_ID_BYTES);
}

/* Read a key-30 or key-32 array head: shortest, 1..max items; r is left at the first item. */
static bool list_field(const fields_t *f, int key, uint64_t max, tml_cbor_reader_t *r,
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
static bool decode_policy(const fields_t *f, tml_trust_record_t *out)
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
        !uint_field(f, TML_K_MIN_SEQUENCE, UINT64_MAX, &out->min_sequence)) {
        return false;
    }
    if (f->val[TML_K_REVOKE_PACKAGES]) {
        if (!list_field(f, TML_K_REVOKE_PACKAGES, REVOKE_MAX, &r,
                        &out->revoke_count)) {
            return false;
        }
        out->revoke = r.p;
        for (uint8_t i = 0; i < out->revoke_count; i++) {
            if (!next_uint(&r, UINT64_MAX, &v)) {
                return false;
            }
        }
    }
    return true;
}

/* KeyRotation.decode: keys 20 and 21 (the kid must be the key's), optional 22. */
static tml_reason_t decode_rotation(const fields_t *f, tml_trust_record_t *out)
{
    tml_cbor_item_t it;
    uint8_t kid[TML_KEY_ID_BYTES];
    if (f->val[TML_K_RETIRE_KIDS] || f->val[TML_K_MIN_SEQUENCE] ||
        f->val[TML_K_REVOKE_PACKAGES] ||
        !bytes_field(f, TML_K_NEW_KID, TML_KEY_ID_BYTES, out->new_kid) ||
        !bytes_field(f, TML_K_NEW_PUBLIC_KEY, 32, out->new_public_key)) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    if (f->val[TML_K_RETIRE_KID]) {
        if (!field(f, TML_K_RETIRE_KID, TML_CBOR_BYTES, &it) || it.arg < 1 ||
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
    sign1_t msg;
    fields_t f;
    memset(out, 0, sizeof(*out));
    tml_reason_t why = parse_sign1(cose, len, &msg);
    if (why == TML_REASON_OK) {
        why = check_algorithm(&msg);
    }
    if (why != TML_REASON_OK) {
        return why;
    }
    int signer = find_key(keyring, msg.kid, msg.kid_len);
    if (signer < 0) {
        return TML_REASON_MANIFEST_BAD_ROTATION; /* a new or unknown key cannot vouch for itself */
    }
    out->signer = (uint8_t)signer;
    why = verify_signature(&msg, keyring->keys[signer]);
    if (why == TML_REASON_OK) {
        why = decode_map(msg.payload, msg.payload_len, TRUST_KEYS, &f);
    }
    if (why != TML_REASON_OK) {
        return why;
    }
    if (!uint_field(&f, TML_K_SEQUENCE, UINT64_MAX, &out->sequence)) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    out->is_rotation = f.val[TML_K_NEW_KID] != NULL; /* decode_trust_record tells them apart so */
    if (out->is_rotation) {
        why = decode_rotation(&f, out);
    } else if (!decode_policy(&f, out)) {
        why = TML_REASON_MANIFEST_MALFORMED;
    }
    if (why == TML_REASON_OK && out->sequence <= record_sequence) {
        why = TML_REASON_MANIFEST_SEQUENCE_REPLAY;
    }
    return why;
}
