/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file protocol.h
 * @brief Wire constants of protocol v1, mirrored from device_sdk/protocol (the reference).
 *
 * Every value here crosses a process boundary. tests/firmware/test_contract.py reads this file
 * and the Python modules and fails when they differ. Wire values: never renumber.
 */
#ifndef TML_PROTOCOL_H
#define TML_PROTOCOL_H

/* Manifest payload keys (manifest.py K_*). */
#define TML_K_VERSION 1
#define TML_K_SEQUENCE 2
#define TML_K_MODEL_NAME 3
#define TML_K_MODEL_VERSION 4
#define TML_K_HARDWARE 5
#define TML_K_MODEL_SHA256 6
#define TML_K_MODEL_SIZE 7
#define TML_K_ENCODING 8
#define TML_K_TRANSFER_SHA256 9
#define TML_K_TRANSFER_SIZE 10
#define TML_K_BASE_SHA256 11
#define TML_K_ARENA_BYTES 12
#define TML_K_EXPIRES_AT 13
#define TML_K_PACKAGE_ID 14
#define TML_K_TRIAL 15
#define TML_K_NEW_KID 20
#define TML_K_NEW_PUBLIC_KEY 21
#define TML_K_RETIRE_KID 22
/* Policy records (trust.py). */
#define TML_K_RETIRE_KIDS 30
#define TML_K_MIN_SEQUENCE 31
#define TML_K_REVOKE_PACKAGES 32

/* manifest.py */
#define TML_MANIFEST_FORMAT_VERSION 1 /* FORMAT_VERSION */
#define TML_MANIFEST_MAX_TEXT_BYTES 64 /* MAX_TEXT_BYTES */
#define TML_DIGEST_BYTES 32           /* DIGEST_BYTES */

/* cose.py */
#define TML_COSE_SIGN1_TAG 18   /* COSE_SIGN1_TAG */
#define TML_COSE_HEADER_ALG 1   /* HEADER_ALG */
#define TML_COSE_HEADER_KID 4   /* HEADER_KID */
#define TML_COSE_ALG_EDDSA (-8) /* ALG_EDDSA */
#define TML_SIGNATURE_BYTES 64  /* SIGNATURE_BYTES */
#define TML_KEY_ID_BYTES 8      /* KEY_ID_BYTES */
#define TML_MAX_KID_BYTES 32    /* MAX_KID_BYTES */

/** @brief How a package's model bytes travel (manifest.py Encoding). */
typedef enum {
    TML_ENCODING_RAW = 0,
    TML_ENCODING_COMPRESSED = 1,
    TML_ENCODING_DELTA = 2
} tml_encoding_t;

/** @brief Per-device deployment states (ota_messages.py DeploymentState). */
typedef enum {
    TML_STATE_PENDING = 0,
    TML_STATE_OFFERED = 1,
    TML_STATE_DOWNLOADING = 2,
    TML_STATE_VERIFIED = 3,
    TML_STATE_INSTALLED = 4,
    TML_STATE_TRIAL = 5,
    TML_STATE_CONFIRMED = 6,
    TML_STATE_FAILED = 7,
    TML_STATE_ROLLED_BACK = 8
} tml_deployment_state_t;

/** @brief Kinds of message on the events topic (events.py MessageKind). */
typedef enum {
    TML_EVENTS_KIND_BATCH = 0,    /**< four byte-string columns, full seq: older firmware */
    TML_EVENTS_KIND_SUMMARY = 1,  /**< full seq: older firmware */
    TML_EVENTS_KIND_BATCH2 = 2,   /**< seq - t0, the columns in one byte string: what we send */
    TML_EVENTS_KIND_SUMMARY2 = 3  /**< seq - t0, otherwise as SUMMARY: what we send */
} tml_events_kind_t;

/* limits.py: what the firmware must never produce. */
#define TML_MAX_EVENTS_BYTES 16384
#define TML_MAX_EVENTS_PER_BATCH 1024
#define TML_MAX_LABELS 1024
#define TML_MAX_SCORE 255
#define TML_MAX_LATENCY_100US 600000
#define TML_MAX_DELTA_MS 86400000
#define TML_MAX_WINDOW_S 86400
#define TML_MIN_T0_MS 1577836800000ULL
#define TML_MAX_T0_MS 4102444800000ULL
#define TML_MAX_PACKED_WIDTH 32
#define TML_MAX_STATUS_BYTES 8192
#define TML_MAX_OPS 256
#define TML_MAX_OP_NAME 64
#define TML_MAX_VERSION_TEXT 64
#define TML_MAX_CHUNK_BYTES 32768
#define TML_MAX_TRANSFER_BYTES 67108864UL
#define TML_MAX_CHUNK_REQUEST_BYTES 32
#define TML_MAX_REPORT_BYTES 32
#define TML_MAX_OFFER_BYTES 16384
#define TML_MAX_PACKAGE_ID 2147483647UL
#define TML_MAX_MODEL_ID 2147483647UL
#define TML_MAX_REASON_CODE 65535
#define TML_MAX_TRIAL_INPUTS 8

/* status.py LinkState */
#define TML_LINK_STATE_OFFLINE 0
#define TML_LINK_STATE_ONLINE 1

#endif /* TML_PROTOCOL_H */
