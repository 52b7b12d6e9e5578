/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file manifest.h
 * @brief Check a COSE_Sign1 OTA manifest or trust record (rotation, policy) as manifest.py and
 *        trust.py do.
 *
 * Checks run in manifest.py's order and refuse with its reason codes: envelope
 * (MANIFEST_MALFORMED), algorithm, key id, Ed25519 signature over the RFC 9052 Sig_structure,
 * format version, payload fields, sequence, revoked package (ABORTED), expiry, hardware
 * profile, sizes, delta base.
 * Nothing of the payload is interpreted before the signature verified. Not for interrupts
 * (Ed25519 needs 2-3 KB of stack).
 */
#ifndef TML_MANIFEST_H
#define TML_MANIFEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tml/protocol.h"
#include "tml/reasons.h"

/** @brief One trusted Ed25519 public key and its id (SHA-256 of the key, first 8 bytes). */
typedef struct {
    uint8_t kid[TML_KEY_ID_BYTES];
    uint8_t public_key[32];
} tml_key_t;

/**
 * @brief The keys a device trusts: pointers, so built-in keys stay in flash and rotated ones in
 * the metadata without a copy of either (the array and the keys are owned by the caller).
 */
typedef struct {
    const tml_key_t *const *keys;
    size_t count;
} tml_keyring_t;

/** @brief What the device knows about itself, to check a manifest against. */
typedef struct {
    const tml_keyring_t *keyring;
    uint64_t current_sequence;         /**< refuse a sequence <= this */
    const char *hardware_profile;      /**< NUL-terminated */
    uint64_t now;                      /**< unix seconds */
    uint32_t slot_bytes;               /**< 0: not checked */
    uint32_t arena_bytes;              /**< 0: not checked */
    const uint8_t *running_model_sha256; /**< 32 bytes, NULL: not checked */
    const uint32_t *revoked;           /**< revoked package ids (policy key 32): ABORTED */
    size_t revoked_count;
} tml_manifest_policy_t;

/** @brief The fields of a verified manifest that the device acts on (texts are not kept). */
typedef struct {
    uint64_t sequence;
    uint64_t expires_at;
    uint64_t package_id;
    uint32_t model_size;
    uint32_t transfer_size;
    uint32_t arena_bytes;
    uint8_t encoding; /**< tml_encoding_t */
    bool has_base;
    /* Key 15, the golden-input trial (golden.h). Bit-fields keep the struct at 184 bytes on a
     * Cortex-M (the RAM goal). */
    uint8_t trial_n;                  /**< golden inputs 0..n-1 (1..8); 0: no key 15 */
    uint8_t trial_max_mismatches : 4; /**< inputs whose label may differ, 0..n */
    uint8_t trial_output_type : 1;    /**< tml_golden_output_t: 0 int8, 1 uint8 */
    uint8_t trial_has_digest : 1;     /**< trial_outputs_sha256 is to be checked */
    uint16_t trial_labels[TML_MAX_TRIAL_INPUTS]; /**< expected top-1 label per input */
    uint8_t model_sha256[32];
    uint8_t transfer_sha256[32];
    uint8_t base_sha256[32];
    uint8_t trial_outputs_sha256[32];
} tml_manifest_t;

/**
 * @brief Verify a signed manifest and fill out.
 * @param cose the COSE_Sign1 bytes (owned by the caller)
 * @param len their length
 * @param policy the device's keys, sequence, profile, clock and limits
 * @param out receives the manifest when accepted; when refused after the signature verified,
 *        its fields are authenticated (a report may name out->package_id), else it is zeroed
 * @return TML_REASON_OK or the reason of the first check that failed
 */
tml_reason_t tml_manifest_check(const uint8_t *cose, size_t len,
                                const tml_manifest_policy_t *policy, tml_manifest_t *out);

/**
 * @brief A verified trust record (trust.py): a key rotation (keys 20/21/22) or a policy
 *        (keys 30/31/32). Lists point into the checked COSE bytes, which must outlive it.
 */
typedef struct {
    uint64_t sequence;     /**< record sequence (one counter for both kinds) */
    uint64_t min_sequence; /**< policy key 31; 0: absent */
    bool is_rotation;
    uint8_t signer;        /**< index of the signing key in the keyring */
    uint8_t retire_count;  /**< rotation: 0 or 1 (key 22); policy: key 30's count */
    bool retire_sized;     /**< every kid to retire is 8 bytes (else none can be trusted) */
    uint8_t revoke_count;  /**< policy key 32's count */
    uint8_t new_kid[TML_KEY_ID_BYTES];
    uint8_t new_public_key[32];
    const uint8_t *retire; /**< kid i at retire + 9 * i (a policy's bstr heads are 1 byte) */
    const uint8_t *revoke; /**< key 32's revoke_count CBOR uints (shortest heads) */
} tml_trust_record_t;

/**
 * @brief Verify a trust record signed by a trusted key, in trust.py's order: envelope,
 *        algorithm, signer trusted (else MANIFEST_BAD_ROTATION: a new key never vouches for
 *        itself), signature, payload (a rotation's kid must be its key's), sequence above
 *        record_sequence (else MANIFEST_SEQUENCE_REPLAY). The state rules (which keys may be
 *        retired, which retired keys are refused as new ones) are trust.h's.
 *
 *        One exception to "nothing before the signature": a payload that is a well-formed map
 *        whose key 2 is at or below record_sequence is refused MANIFEST_SEQUENCE_REPLAY before
 *        the signer is looked up or the signature checked (trust.py apply_bundle skips them so).
 *        A replay changes nothing, and the gateway resends the whole bundle (up to 64 records)
 *        at each HELLO: this spares an Ed25519 verification per record already applied.
 * @param cose the COSE_Sign1 bytes
 * @param len their length
 * @param keyring the keys trusted now, in the order the device came to trust them
 * @param record_sequence the last record sequence applied
 * @param out receives the record when accepted
 * @return TML_REASON_OK or the reason of the first failed check
 */
tml_reason_t tml_trust_check(const uint8_t *cose, size_t len, const tml_keyring_t *keyring,
                             uint64_t record_sequence, tml_trust_record_t *out);

/**
 * @brief Read the package id (key 14) from a manifest without verifying it: for tools and the
 *        fuzz harness. The device never reports it (it names only authenticated ids).
 * @param cose the COSE_Sign1 bytes
 * @param len their length
 * @return the package id if one can be read and is < 2^31, else 0
 */
uint32_t tml_manifest_peek_package(const uint8_t *cose, size_t len);

/**
 * @brief Compute a key id: SHA-256 of the raw 32-byte public key, first 8 bytes.
 * @param public_key 32 bytes
 * @param kid receives 8 bytes
 */
void tml_key_id(const uint8_t public_key[32], uint8_t kid[TML_KEY_ID_BYTES]);

#endif /* TML_MANIFEST_H */
