/* SPDX-License-Identifier: Apache-2.0 */
/*
 * COSE_Sign1 envelopes and their deterministic CBOR payload maps (cose.py, manifest.py's
 * _decode_map), shared by manifests and trust records. Private to src/.
 */
#include "tml/manifest.h"

#include <stddef.h>
#include <string.h>

#include "cose.h"
#include "tml/cbor.h"
#include "tml/ed25519.h"
#include "tml/sha.h"

tml_reason_t tml_cose_parse(const uint8_t *cose, size_t len, tml_sign1_t *m)
{
    tml_cbor_reader_t r, check;
    tml_cbor_item_t it, k, v;
    if (len > TML_MAX_OFFER_BYTES) {
        return TML_REASON_MANIFEST_MALFORMED;
    }
    tml_cbor_reader_init(&check, cose, len);
    if (tml_cbor_skip(&check, TML_COSE_DEPTH) != TML_OK || check.p != check.end) {
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
        (void)tml_cbor_skip(&rest, TML_COSE_DEPTH);
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
            (void)tml_cbor_skip(&scan, TML_COSE_DEPTH);
        }
        r = rest;
    }
    return false;
}

/* cose.tml_cose_check_algorithm: the protected header must decode as exactly {1: -8}. */
tml_reason_t tml_cose_check_algorithm(const tml_sign1_t *m)
{
    tml_cbor_reader_t r;
    tml_cbor_item_t map, k, v;
    tml_cbor_reader_init(&r, m->protected_hdr, m->protected_len);
    tml_cbor_reader_t check = r;
    if (tml_cbor_skip(&check, TML_COSE_DEPTH) != TML_OK || check.p != check.end) {
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
int tml_cose_find_key(const tml_keyring_t *ring, const uint8_t *kid, size_t len)
{
    for (size_t i = 0; len == TML_KEY_ID_BYTES && i < ring->count; i++) {
        if (memcmp(ring->keys[i]->kid, kid, TML_KEY_ID_BYTES) == 0) {
            return (int)i;
        }
    }
    return -1;
}

static uint32_t key_bit(uint64_t k)
{
    return (k < 24 || (k >= 30 && k <= TML_COSE_MAX_KEY)) ? KEY_BIT(k) : 0;
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
tml_reason_t tml_cose_verify(const tml_sign1_t *m, const tml_key_t *key)
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
tml_reason_t tml_cose_decode_map(const uint8_t *payload, size_t len, uint32_t allowed, tml_fields_t *f)
{
    tml_cbor_reader_t r, check;
    tml_cbor_item_t map, k, v;
    memset(f, 0, sizeof(*f));
    f->end = payload + len;
    tml_cbor_reader_init(&check, payload, len);
    if (tml_cbor_skip(&check, TML_COSE_DEPTH) != TML_OK || check.p != check.end) {
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
        (void)tml_cbor_skip(&scan, TML_COSE_DEPTH);
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
bool tml_cose_field(const tml_fields_t *f, int key, int major, tml_cbor_item_t *it)
{
    tml_cbor_reader_t r;
    if (!f->val[key]) {
        return false;
    }
    tml_cbor_reader_init(&r, f->val[key], (size_t)(f->end - f->val[key]));
    return tml_cbor_expect(&r, major, it) == TML_OK;
}

bool tml_cose_uint(const tml_fields_t *f, int key, uint64_t max, uint64_t *out)
{
    tml_cbor_item_t it;
    if (!tml_cose_field(f, key, TML_CBOR_UINT, &it) || it.arg > max) {
        return false;
    }
    *out = it.arg;
    return true;
}

bool tml_cose_bytes(const tml_fields_t *f, int key, size_t size, uint8_t *out)
{
    tml_cbor_item_t it;
    if (!tml_cose_field(f, key, TML_CBOR_BYTES, &it) || it.arg != size) {
        return false;
    }
    memcpy(out, it.data, size);
    return true;
}

/* Read the next item of a key-15 array: a shortest-encoded uint <= max. */
bool tml_cose_next_uint(tml_cbor_reader_t *r, uint64_t max, uint64_t *out)
{
    tml_cbor_item_t it;
    if (tml_cbor_expect(r, TML_CBOR_UINT, &it) != TML_OK || !it.shortest || it.arg > max) {
        return false;
    }
    *out = it.arg;
    return true;
}

void tml_key_id(const uint8_t public_key[32], uint8_t kid[TML_KEY_ID_BYTES])
{
    uint8_t digest[32];
    tml_sha256(public_key, 32, digest);
    memcpy(kid, digest, TML_KEY_ID_BYTES);
}
