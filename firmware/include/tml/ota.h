/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file ota.h
 * @brief The OTA receiver: offer, chunks, decode into the inactive slot, verify, install.
 *
 * RAM: one tml_ota_t (the 4 KB transfer decoder, the manifest, and a TML_OTA_WRITE_BUF flash
 * staging buffer). Chunks are fed from the caller's buffer (the link's receive buffer), so the
 * OTA buffer is that frame buffer plus the staging buffer. Not for interrupts.
 */
#ifndef TML_OTA_H
#define TML_OTA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tml/manifest.h"
#include "tml/slots.h"
#include "tml/transfer.h"

/** @brief Where a download stands. */
typedef enum {
    TML_OTA_IDLE = 0,
    TML_OTA_DOWNLOADING = 1,
    TML_OTA_INSTALLED = 2 /**< committed; the trial is the device's business */
} tml_ota_state_t;

/** @brief The receiver. */
typedef struct {
    tml_manifest_t manifest;
    tml_transfer_t transfer;
    uint8_t stage[TML_OTA_WRITE_BUF];
    tml_slots_t *slots;
    uint32_t stage_len;
    uint32_t written; /**< model bytes programmed into the slot */
    uint8_t slot;
    uint8_t state; /**< tml_ota_state_t */
    uint8_t base_slot; /**< slot holding the delta's base */
} tml_ota_t;

/**
 * @brief Bind the receiver to the slots it writes.
 * @param o the receiver (owned by the caller)
 * @param slots the device's slots, must outlive o
 */
void tml_ota_init(tml_ota_t *o, tml_slots_t *slots);

/**
 * @brief Check an offer and, when accepted, erase the inactive slot and start the download.
 *        The policy's current_sequence, slot size and running digest are filled in from the
 *        slots. An offer while downloading replaces the download only with a higher sequence.
 * @param o the receiver
 * @param cose the COSE_Sign1 manifest
 * @param len its length
 * @param policy keys, hardware profile, clock, arena bytes (the minimum sequence and revoked
 *        packages come from the slots' trust state)
 * @param pkg receives the offer's package id once its signature verified, else 0: a refusal
 *        is never reported under an id nobody signed
 * @return TML_REASON_OK or why the offer is refused (FLASH_ERROR if the slot cannot be erased)
 */
tml_reason_t tml_ota_offer(tml_ota_t *o, const uint8_t *cose, size_t len,
                           const tml_manifest_policy_t *policy, uint32_t *pkg);

/**
 * @brief Feed the next chunk of the transfer stream.
 * @param o the receiver
 * @param offset the chunk's offset; must be the next expected byte
 * @param data bytes (owned by the caller)
 * @param len count
 * @return TML_REASON_OK, CHUNK_OUT_OF_ORDER (ignored: ask again), or a transfer refusal
 */
tml_reason_t tml_ota_chunk(tml_ota_t *o, uint32_t offset, const uint8_t *data, size_t len);

/**
 * @brief Return whether every transfer byte arrived.
 * @param o the receiver
 * @return true when the stream is complete
 */
bool tml_ota_complete(const tml_ota_t *o);

/**
 * @brief Finish the decode, flush, re-read the slot against the model digest, and commit it
 *        as the trial slot.
 * @param o the receiver
 * @return TML_REASON_OK, a transfer refusal, MODEL_DIGEST_MISMATCH or FLASH_ERROR
 */
tml_reason_t tml_ota_finish(tml_ota_t *o);

/**
 * @brief Say which bytes to ask for next.
 * @param o the receiver
 * @param offset receives the next offset
 * @param length receives the length (0 when complete)
 */
void tml_ota_next_request(const tml_ota_t *o, uint32_t *offset, uint32_t *length);

/** @brief Drop the download (the slot stays empty). @param o the receiver */
void tml_ota_abort(tml_ota_t *o);

#endif /* TML_OTA_H */
