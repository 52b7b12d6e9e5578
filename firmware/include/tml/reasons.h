/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file reasons.h
 * @brief Reason codes shared by the server, the Python device SDK and this firmware.
 *
 * Mirrors device_sdk/protocol/reasons.py: same names (with a TML_REASON_ prefix), same values.
 * Wire values: never renumber, never reuse. tests/firmware/test_contract.py compares the two
 * files by parsing both.
 */
#ifndef TML_REASONS_H
#define TML_REASONS_H

/** @brief Why a device or the server refused something. 0 means accepted. */
typedef enum {
    TML_REASON_OK = 0,

    /* Manifest checks (device side). */
    TML_REASON_MANIFEST_MALFORMED = 1,
    TML_REASON_MANIFEST_UNSUPPORTED_VERSION = 2,
    TML_REASON_MANIFEST_BAD_ALGORITHM = 3,
    TML_REASON_MANIFEST_UNKNOWN_KEY = 4,
    TML_REASON_MANIFEST_BAD_SIGNATURE = 5,
    TML_REASON_MANIFEST_SEQUENCE_REPLAY = 6,
    TML_REASON_MANIFEST_EXPIRED = 7,
    TML_REASON_MANIFEST_WRONG_HARDWARE = 8,
    TML_REASON_MANIFEST_TOO_LARGE = 9,
    TML_REASON_MANIFEST_ARENA_TOO_SMALL = 10,
    TML_REASON_MANIFEST_BAD_ROTATION = 11,

    /* Transfer and decode (device side, while streaming into the inactive slot). */
    TML_REASON_TRANSFER_OVERFLOW = 20,
    TML_REASON_TRANSFER_TRUNCATED = 21,
    TML_REASON_TRANSFER_DIGEST_MISMATCH = 22,
    TML_REASON_MODEL_DIGEST_MISMATCH = 23,
    TML_REASON_DELTA_BASE_MISMATCH = 24,
    TML_REASON_DECODE_ERROR = 25,
    TML_REASON_CHUNK_OUT_OF_ORDER = 26,
    TML_REASON_PACKAGE_NOT_OFFERED = 27,

    /* Install and trial (device side). */
    TML_REASON_FLASH_ERROR = 30,
    TML_REASON_TRIAL_FAILED = 31,
    TML_REASON_TRIAL_INTERRUPTED = 32,
    TML_REASON_MODEL_LOAD_FAILED = 33,
    TML_REASON_TIMEOUT = 34,
    TML_REASON_ABORTED = 35,
    TML_REASON_TRIAL_OUTPUT_MISMATCH = 36,

    /* Ingest (server side, untrusted device input). */
    TML_REASON_PAYLOAD_TOO_LARGE = 40,
    TML_REASON_CBOR_MALFORMED = 41,
    TML_REASON_SCHEMA_MISMATCH = 42,
    TML_REASON_VALUE_OUT_OF_RANGE = 43,
    TML_REASON_UNKNOWN_DEVICE = 44,
    TML_REASON_UNKNOWN_MODEL = 45,
    TML_REASON_SEQUENCE_REUSED = 46
} tml_reason_t;

/**
 * @brief Return the symbolic name of a reason code ("MANIFEST_EXPIRED"), or "UNKNOWN".
 * @param reason a reason code
 * @return a static string; never NULL
 */
const char *tml_reason_str(int reason);

#endif /* TML_REASONS_H */
