/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file link.h
 * @brief UART link framing: COBS frames with CRC-32, sequence numbers and ACKs (LINK.md).
 *
 *     wire  = COBS(body) 0x00
 *     body  = kind u8 | seq u8 | flags u8 | payload | crc32 u32le (over kind..payload)
 *
 * Each direction is stop-and-wait: one unacknowledged data frame at a time, retransmitted
 * unchanged after a timeout; the receiver acknowledges every good frame and delivers each seq
 * once. A lost or corrupted byte costs the one frame it was in. The Python side is
 * device_sdk/protocol/link.py. One tml_link_t per UART; not for interrupts (feed it bytes the
 * UART interrupt buffered).
 */
#ifndef TML_LINK_H
#define TML_LINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tml/config.h"
#include "tml/status.h"

/** @brief Message kinds. Wire values: never renumber (link.py Kind mirrors them). */
typedef enum {
    TML_LINK_ACK = 0,            /**< both: acknowledges seq; no payload */
    TML_LINK_HELLO = 1,          /**< dev->gw: {"uid", "link", "mtu"[, "key", "hardware"]} */
    TML_LINK_STATUS = 2,         /**< dev->gw: status.py map -> fleet/v1/{uid}/status */
    TML_LINK_EVENTS = 3,         /**< dev->gw: events.py batch/summary -> .../events */
    TML_LINK_OFFER = 4,          /**< gw->dev: COSE_Sign1 manifest <- .../ota/offer */
    TML_LINK_CHUNK_REQUEST = 5,  /**< dev->gw: [pkg, offset, length] -> .../ota/get */
    TML_LINK_CHUNK = 6,          /**< gw->dev: [pkg, offset, data] <- .../ota/chunk */
    TML_LINK_REPORT = 7,         /**< dev->gw: [pkg, state, detail] -> .../ota/report */
    TML_LINK_TIME = 8,           /**< gw->dev: uint, unix milliseconds */
    TML_LINK_STATUS_REQUEST = 9, /**< gw->dev: empty; the device answers STATUS */
    TML_LINK_ROTATION = 10,      /**< gw->dev: COSE_Sign1 trust record (rotation or policy) */
    TML_LINK_ENROLL_CHALLENGE = 11, /**< gw->dev: [nonce, token_sha256, caps_sha256, via] */
    TML_LINK_ENROLL_PROOF = 12,     /**< dev->gw: bstr .size 64, signed enroll-message */
    TML_LINK_WITHDRAW = 13          /**< gw->dev: [pkg, reason] <- .../ota/withdraw */
} tml_link_kind_t;

#define TML_LINK_FLAG_RST 0x01 /**< first frame of the sender's session (it restarted) */
#define TML_LINK_HEADER 3
#define TML_LINK_CRC 4
#define TML_LINK_RX_BODY (TML_LINK_HEADER + TML_LINK_MAX_PAYLOAD + TML_LINK_CRC)
#define TML_LINK_TX_BODY (TML_LINK_HEADER + TML_LINK_TX_MAX_PAYLOAD + TML_LINK_CRC)

/**
 * @brief Write bytes to the wire.
 * @param ctx the writer's context
 * @param data bytes
 * @param len count
 */
typedef void (*tml_write_fn)(void *ctx, const uint8_t *data, size_t len);

/** @brief A delivered frame; payload points into the link's receive buffer. */
typedef struct {
    uint8_t kind;
    uint8_t seq;
    uint8_t flags;
    const uint8_t *payload; /**< valid until the next tml_link_receive() */
    size_t len;
} tml_link_frame_t;

/** @brief Counters for the status and for tests. */
typedef struct {
    uint32_t delivered, duplicates, bad_crc, malformed, retransmits, acked;
} tml_link_stats_t;

/** @brief One end of the link. */
typedef struct {
    tml_write_fn write;
    void *write_ctx;
    /* receive */
    uint8_t rx[TML_LINK_RX_BODY];
    size_t rx_len;
    uint8_t cobs_left;  /**< bytes left in the current COBS block */
    bool cobs_zero;     /**< the current block ends with an implied zero */
    bool rx_discard;    /**< drop bytes until the next delimiter */
    bool rx_session;    /**< a frame was delivered since init */
    uint8_t rx_last_seq;
    uint32_t rx_last_crc;
    /* transmit */
    uint8_t tx[TML_LINK_TX_BODY];
    size_t tx_len;
    bool tx_pending;
    bool tx_rst; /**< no frame acknowledged yet: mark frames RST */
    uint8_t tx_seq;
    uint32_t tx_sent_at;
    uint32_t rto;
    tml_link_stats_t stats;
} tml_link_t;

/**
 * @brief Start a link endpoint (a new session: the first frame carries RST).
 * @param l the endpoint (owned by the caller)
 * @param write where encoded frames go
 * @param ctx passed to write
 */
void tml_link_init(tml_link_t *l, tml_write_fn write, void *ctx);

/**
 * @brief Return where the next payload is written (TML_LINK_TX_MAX_PAYLOAD bytes).
 * @param l the endpoint
 * @return the payload area; do not touch it while tml_link_busy()
 */
uint8_t *tml_link_payload(tml_link_t *l);

/**
 * @brief Return whether a frame awaits its ACK.
 * @param l the endpoint
 * @return true while busy
 */
bool tml_link_busy(const tml_link_t *l);

/**
 * @brief Frame and send the payload written at tml_link_payload().
 * @param l the endpoint
 * @param kind a tml_link_kind_t other than ACK
 * @param len payload bytes
 * @param now_ms tml_platform_millis()
 * @return TML_OK, TML_ERR_BUSY, TML_ERR_ARG
 */
tml_status_t tml_link_send(tml_link_t *l, uint8_t kind, size_t len, uint32_t now_ms);

/**
 * @brief Feed received bytes; stops after the first newly delivered frame.
 * @param l the endpoint
 * @param data bytes from the UART
 * @param len count
 * @param consumed receives how many bytes were used (call again with the rest)
 * @param frame receives the delivered frame
 * @param now_ms tml_platform_millis()
 * @return true when frame holds a new data frame to handle
 */
bool tml_link_receive(tml_link_t *l, const uint8_t *data, size_t len, size_t *consumed,
                      tml_link_frame_t *frame, uint32_t now_ms);

/**
 * @brief Retransmit the pending frame when its timeout passed.
 * @param l the endpoint
 * @param now_ms tml_platform_millis()
 */
void tml_link_poll(tml_link_t *l, uint32_t now_ms);

/**
 * @brief Return ms until tml_link_poll() has something to do (UINT32_MAX: nothing pending).
 * @param l the endpoint
 * @param now_ms tml_platform_millis()
 * @return milliseconds
 */
uint32_t tml_link_next_ms(const tml_link_t *l, uint32_t now_ms);

/**
 * @brief CRC-32/ISO-HDLC (zlib's crc32), continuing from crc (start with 0).
 * @param crc previous value
 * @param data bytes
 * @param len count
 * @return the updated CRC
 */
uint32_t tml_crc32(uint32_t crc, const void *data, size_t len);

/**
 * @brief COBS-encode (no trailing delimiter).
 * @param in bytes
 * @param len count
 * @param out destination (needs len + len / 254 + 1 bytes)
 * @param cap its size
 * @param out_len receives the encoded length
 * @return TML_OK or TML_ERR_NOSPACE
 */
tml_status_t tml_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t cap,
                             size_t *out_len);

/**
 * @brief Build a complete wire frame (body, CRC, COBS, delimiter), as the link sends it.
 * @param kind message kind
 * @param seq sequence number
 * @param flags TML_LINK_FLAG_*
 * @param payload bytes
 * @param len count
 * @param out destination
 * @param cap its size
 * @param out_len receives the frame length
 * @return TML_OK or TML_ERR_NOSPACE
 */
tml_status_t tml_link_build(uint8_t kind, uint8_t seq, uint8_t flags, const uint8_t *payload,
                            size_t len, uint8_t *out, size_t cap, size_t *out_len);

#endif /* TML_LINK_H */
