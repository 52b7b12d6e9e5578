/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file messages.h
 * @brief The small messages the device exchanges: status, hello, chunk request, chunk,
 *        report, time. Byte-identical to status.py and ota_messages.py. Reentrant.
 */
#ifndef TML_MESSAGES_H
#define TML_MESSAGES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tml/config.h"
#include "tml/manifest.h"
#include "tml/ops.h"
#include "tml/status.h"

/** Longest runner tflm_version the status bound allows ("tflite-micro@" + 12 hex digits). */
#ifndef TML_TFLM_VERSION_MAX_BYTES
#define TML_TFLM_VERSION_MAX_BYTES 25
#endif

/** Bytes of a CBOR head for argument n, and of a text of n bytes (RFC 8949 shortest form). */
#define TML_CBOR_HEAD_BYTES(n)                                                                 \
    ((n) < 24 ? 1 : (n) <= 0xFFULL ? 2 : (n) <= 0xFFFFULL ? 3 : (n) <= 0xFFFFFFFFULL ? 5 : 9)
#define TML_CBOR_TEXT_BYTES(n) (TML_CBOR_HEAD_BYTES(n) + (n))

#define TML_STATUS_OP_(name, method) +TML_CBOR_TEXT_BYTES(sizeof(#name) - 1)
#define TML_STATUS_OP_COUNT_(name, method) +1

/** The widest status tml_status_encode() writes for this build: every key trusted
 *  (TML_MAX_BUILTIN_KEYS + TML_MAX_ROTATED_KEYS), the registered ops (ops.h), the longest
 *  tflm_version and every number at its widest (messages.c asserts it fits the link frame). */
#define TML_STATUS_MAX_BYTES                                                                   \
    (1 + TML_CBOR_TEXT_BYTES(3) + TML_CBOR_HEAD_BYTES(0 TML_OPS(TML_STATUS_OP_COUNT_)) +      \
     (0 TML_OPS(TML_STATUS_OP_)) + TML_CBOR_TEXT_BYTES(3) + 9 + TML_CBOR_TEXT_BYTES(4) +      \
     TML_CBOR_HEAD_BYTES(TML_MAX_BUILTIN_KEYS + TML_MAX_ROTATED_KEYS) +                        \
     (TML_MAX_BUILTIN_KEYS + TML_MAX_ROTATED_KEYS) * (1 + TML_KEY_ID_BYTES) +                  \
     TML_CBOR_TEXT_BYTES(4) + 1 + TML_CBOR_TEXT_BYTES(5) + TML_CBOR_HEAD_BYTES(TML_MAX_MODEL_ID) + \
     TML_CBOR_TEXT_BYTES(5) + TML_CBOR_HEAD_BYTES(TML_LINK_STATE_ONLINE) +                     \
     2 * (TML_CBOR_TEXT_BYTES(8) + 9) + TML_CBOR_TEXT_BYTES(10) + 5 +                          \
     TML_CBOR_TEXT_BYTES(11) + 5 + TML_CBOR_TEXT_BYTES(12) + 2 + TML_CBOR_TEXT_BYTES(12) +     \
     TML_CBOR_TEXT_BYTES(TML_TFLM_VERSION_MAX_BYTES) + TML_CBOR_TEXT_BYTES(16) +               \
     TML_CBOR_TEXT_BYTES(sizeof(TML_FIRMWARE_VERSION) - 1))

/** @brief The device's status (status.py Status, online, with capabilities). */
typedef struct {
    bool has_model;
    uint32_t model; /**< package id of the running model */
    uint8_t slot;
    uint64_t uptime_s;
    uint64_t free_ram;
    uint64_t seq; /**< installed manifest sequence (anti-rollback floor) */
    const char *firmware_version;
    const char *tflm_version;
    const char *const *ops;
    size_t op_count;
    uint32_t arena_bytes;
    uint32_t slot_bytes;
    uint8_t pointer_bits;
    const tml_keyring_t *keys; /**< "keys": ids of the keys trusted; NULL: left out */
} tml_status_msg_t;

/**
 * @brief Encode an online status as status.py encode_status() does (canonical key order).
 * @param s the status
 * @param out destination
 * @param cap its size
 * @param out_len receives the length
 * @return TML_OK, TML_ERR_NOSPACE, TML_ERR_RANGE
 */
tml_status_t tml_status_encode(const tml_status_msg_t *s, uint8_t *out, size_t cap,
                               size_t *out_len);

/**
 * @brief Encode the HELLO payload {"uid": uid, "link": 1, "mtu": mtu}, with "key" (the device's
 *        Ed25519 public key) and "hardware" (its profile) when given (canonical order).
 * @param uid device id
 * @param hardware hardware profile, or NULL
 * @param key 32-byte public key, or NULL
 * @param mtu largest payload the device accepts
 * @param out destination
 * @param cap its size
 * @param out_len receives the length
 * @return TML_OK or TML_ERR_NOSPACE
 */
tml_status_t tml_hello_encode(const char *uid, const char *hardware, const uint8_t *key,
                              uint32_t mtu, uint8_t *out, size_t cap, size_t *out_len);

/**
 * @brief Encode [pkg, offset, length] (ota_messages.py encode_chunk_request).
 * @param pkg package id
 * @param offset first byte
 * @param length 1..32768
 * @param out destination
 * @param cap its size
 * @param out_len receives the length
 * @return TML_OK, TML_ERR_RANGE, TML_ERR_NOSPACE
 */
tml_status_t tml_chunk_request_encode(uint32_t pkg, uint32_t offset, uint32_t length,
                                      uint8_t *out, size_t cap, size_t *out_len);

/**
 * @brief Encode [pkg, state, detail] (ota_messages.py encode_report).
 * @param pkg package id
 * @param state tml_deployment_state_t
 * @param detail reason code
 * @param out destination
 * @param cap its size
 * @param out_len receives the length
 * @return TML_OK, TML_ERR_RANGE, TML_ERR_NOSPACE
 */
tml_status_t tml_report_encode(uint32_t pkg, uint8_t state, uint16_t detail, uint8_t *out,
                               size_t cap, size_t *out_len);

/**
 * @brief Decode [pkg, offset, data] (ota_messages.py decode_chunk).
 * @param msg the payload
 * @param len its length
 * @param pkg receives the package id
 * @param offset receives the offset
 * @param data receives a pointer into msg
 * @param data_len receives the data length
 * @return TML_OK, TML_ERR_MALFORMED, TML_ERR_RANGE
 */
tml_status_t tml_chunk_decode(const uint8_t *msg, size_t len, uint32_t *pkg, uint32_t *offset,
                              const uint8_t **data, size_t *data_len);

/**
 * @brief Decode a withdrawal [pkg, reason] (ota_messages.py decode_withdrawal; link kind 13).
 * @param msg the payload
 * @param len its length
 * @param pkg receives the package to stop
 * @param reason receives the reason to report (ABORTED from the server)
 * @return TML_OK, TML_ERR_MALFORMED, TML_ERR_RANGE
 */
tml_status_t tml_withdraw_decode(const uint8_t *msg, size_t len, uint32_t *pkg, uint16_t *reason);

/**
 * @brief Decode the TIME payload: one uint, unix milliseconds.
 * @param msg the payload
 * @param len its length
 * @param unix_ms receives the time
 * @return TML_OK or TML_ERR_MALFORMED
 */
tml_status_t tml_time_decode(const uint8_t *msg, size_t len, uint64_t *unix_ms);

#endif /* TML_MESSAGES_H */
