/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file enroll.h
 * @brief The MCU's own identity: its Ed25519 key (a 32-byte seed from the port), the HELLO that
 *        announces its public key, and the proof of possession it signs for its gateway.
 *
 * The gateway relays enrollment (LINK.md ENROLL_CHALLENGE / ENROLL_PROOF): it sends the
 * server's nonce, SHA-256 of the claim token, SHA-256 of the capabilities and its own uid; the
 * MCU builds the enroll-message (device_sdk/protocol/enrollment.py, CDDL.md "Enrollment") with
 * its *own* uid and hardware profile, so it only ever signs for itself, and answers with the
 * signature. The seed is read from the port for each use and wiped after it. Not reentrant.
 */
#ifndef TML_ENROLL_H
#define TML_ENROLL_H

#include <stddef.h>
#include <stdint.h>

#include "tml/status.h"

#define TML_ENROLL_MAX_NONCE 64   /**< enrollment.MAX_NONCE_BYTES */
#define TML_ENROLL_MAX_VIA 64     /**< limits.MAX_UID_CHARS: a gateway uid */
#define TML_ENROLL_MESSAGE_MAX 384 /**< enroll-message bytes, built on the stack */
#define TML_ENROLL_SIGNATURE 64   /**< ENROLL_PROOF: bstr .size 64 */

/**
 * @brief Encode the HELLO: with the device's public key and hardware profile when the port has
 *        a seed ({"key", "mtu", "uid", "link", "hardware"}), else the v1 HELLO.
 * @param uid device id
 * @param hardware hardware profile
 * @param mtu largest payload the device accepts
 * @param out destination
 * @param cap its size
 * @param out_len receives the length
 * @return TML_OK or TML_ERR_NOSPACE
 */
tml_status_t tml_enroll_hello(const char *uid, const char *hardware, uint32_t mtu, uint8_t *out,
                              size_t cap, size_t *out_len);

/**
 * @brief Build the enroll-message for an ENROLL_CHALLENGE payload
 *        [nonce: bstr 1..64, token_sha256: bstr .size 32, capabilities_sha256: bstr .size 32,
 *        via: tstr 1..64] (canonical CBOR), with the device's uid and hardware.
 * @param challenge the payload
 * @param len its length
 * @param uid device id
 * @param hardware hardware profile
 * @param out destination
 * @param cap its size
 * @param out_len receives the length
 * @return TML_OK, TML_ERR_MALFORMED (not such a challenge), TML_ERR_NOSPACE
 */
tml_status_t tml_enroll_message(const uint8_t *challenge, size_t len, const char *uid,
                                const char *hardware, uint8_t *out, size_t cap, size_t *out_len);

/**
 * @brief Answer an ENROLL_CHALLENGE: sign its enroll-message with the device's key.
 * @param challenge the payload
 * @param len its length
 * @param uid device id
 * @param hardware hardware profile
 * @param signature receives the 64-byte Ed25519 signature
 * @return TML_OK, TML_ERR_MALFORMED, TML_ERR_NOSPACE, or the port's error (no key)
 */
tml_status_t tml_enroll_prove(const uint8_t *challenge, size_t len, const char *uid,
                              const char *hardware, uint8_t signature[64]);

#endif /* TML_ENROLL_H */
