/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Private to src/ (manifest.c and cose.c): the COSE_Sign1 envelope of manifests and trust
 * records, checked in cose.py's order, and their payload maps (manifest.py _decode_map).
 */
#ifndef TML_COSE_PRIVATE_H
#define TML_COSE_PRIVATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tml/cbor.h"
#include "tml/manifest.h"

#define TML_COSE_MAX_KEY 32 /* every payload key of v1 is a one-byte uint: 1..15, 20..22, 30..32 */
#define TML_COSE_DEPTH 8    /* cbor2's max_depth in cose.loads_strict */
/* A payload key's bit in an allowed-keys mask: keys 30..32 take the unused bits 24..26. */
#define KEY_BIT(k) (1UL << ((k) < 24 ? (k) : (k) - 6))

/* The parts of a COSE_Sign1 message (pointers into it). */
typedef struct {
    const uint8_t *protected_hdr, *kid, *payload, *sig;
    size_t protected_len, kid_len, payload_len, sig_len;
} tml_sign1_t;

/* Values of a decoded payload map, by key (NULL: absent). */
typedef struct {
    const uint8_t *val[TML_COSE_MAX_KEY + 1];
    const uint8_t *end;
} tml_fields_t;

/* Split the envelope (cose.parse_sign1): any deviation is MANIFEST_MALFORMED. */
tml_reason_t tml_cose_parse(const uint8_t *cose, size_t len, tml_sign1_t *m);
/* cose.check_algorithm: the protected header must decode as exactly {1: -8}. */
tml_reason_t tml_cose_check_algorithm(const tml_sign1_t *m);
/* Index of the key with this id in the keyring, or -1. */
int tml_cose_find_key(const tml_keyring_t *ring, const uint8_t *kid, size_t len);
/* Verify the signature over Sig_structure = ["Signature1", protected, h'', payload]. */
tml_reason_t tml_cose_verify(const tml_sign1_t *m, const tml_key_t *key);
/* manifest._decode_map: strict CBOR, integer keys, version 1, deterministic, keys in allowed. */
tml_reason_t tml_cose_decode_map(const uint8_t *payload, size_t len, uint32_t allowed,
                                 tml_fields_t *f);
/* Read field key as a given major type; false when absent or of another type. */
bool tml_cose_field(const tml_fields_t *f, int key, int major, tml_cbor_item_t *it);
/* A uint field <= max. */
bool tml_cose_uint(const tml_fields_t *f, int key, uint64_t max, uint64_t *out);
/* A bstr field of exactly size bytes, copied to out. */
bool tml_cose_bytes(const tml_fields_t *f, int key, size_t size, uint8_t *out);
/* The next item of an array: a shortest-encoded uint <= max. */
bool tml_cose_next_uint(tml_cbor_reader_t *r, uint64_t max, uint64_t *out);

#endif /* TML_COSE_PRIVATE_H */
