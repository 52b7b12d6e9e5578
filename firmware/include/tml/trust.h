/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file trust.h
 * @brief The device's trust state (trust.py TrustState): which keys it trusts, in the order
 *        it came to trust them, the keys it retired, the fleet's minimum sequence and the
 *        revoked packages, all in the persisted metadata; rotation and policy records applied.
 *
 * Rules (trust.py, "Trust rules"): a record is signed by a key trusted now; a record may
 * retire its signer or keys older than it, never a newer one, and never the last trusted key;
 * key 31 only raises the minimum; key 32 adds to the revoked packages (the newest
 * TML_MAX_REVOKED_PACKAGES are kept). A rotation when TML_MAX_ROTATED_KEYS keys were rotated
 * in is refused (MANIFEST_BAD_ROTATION) unless it retires one of them: a key is never evicted.
 *
 * Retired keys, bounded memory: a retired built-in key never returns (a bit each). A retired
 * rotated key is refused as a new key while its id is among the TML_MAX_RETIRED_KIDS most
 * recently retired ones; once later retirements push it out, a NEW record (a sequence above
 * the device's, signed by a key trusted now) may bring it back. No record already applied can
 * (the record sequence refuses replays), and a retired key signs nothing the device accepts
 * (records: MANIFEST_BAD_ROTATION, manifests: MANIFEST_UNKNOWN_KEY) unless so brought back.
 * Not for interrupts.
 */
#ifndef TML_TRUST_H
#define TML_TRUST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tml/manifest.h"
#include "tml/slots.h"

/**
 * @brief Build the keyring: the built-in keys not retired, then the rotated ones.
 * @param m the metadata (the rotated keys stay in it: the ring points at them)
 * @param builtin the built-in keys (static)
 * @param builtin_count how many (at most TML_MAX_BUILTIN_KEYS are used)
 * @param keys room for TML_MAX_BUILTIN_KEYS + TML_MAX_ROTATED_KEYS pointers
 * @param ring receives the keyring over keys
 */
void tml_trust_keyring(const tml_meta_t *m, const tml_key_t *builtin, size_t builtin_count,
                       const tml_key_t **keys, tml_keyring_t *ring);

/**
 * @brief Verify a rotation or policy record and apply it to the metadata in RAM (the caller
 *        saves it and rebuilds the keyring). A refused record changes nothing.
 * @param m the metadata
 * @param ring the keyring built from m by tml_trust_keyring()
 * @param builtin the built-in keys
 * @param builtin_count how many
 * @param cose the record's COSE_Sign1 bytes
 * @param len their length
 * @return TML_REASON_OK, or MANIFEST_* as trust.py's TrustState.apply refuses it
 */
tml_reason_t tml_trust_apply(tml_meta_t *m, const tml_keyring_t *ring, const tml_key_t *builtin,
                             size_t builtin_count, const uint8_t *cose, size_t len);

/**
 * @brief Whether the trust state stops a download of this package: revoked, or its sequence
 *        at or below the fleet's minimum (trust.py; the SDK's Updater.stop_revoked).
 * @param m the metadata
 * @param package_id the manifest's key 14
 * @param sequence the manifest's key 2
 * @return true when the download must stop
 */
bool tml_trust_stops(const tml_meta_t *m, uint64_t package_id, uint64_t sequence);

#endif /* TML_TRUST_H */
