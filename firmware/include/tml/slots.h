/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file slots.h
 * @brief A/B model slots, the metadata record, trial/confirm/revert and anti-rollback.
 *
 * The metadata record lives twice in TML_AREA_META (one erase sector each). A save writes the
 * copy not in use with generation + 1 and a CRC-32, so a power cut at any point leaves the
 * previous copy intact: the single metadata write is the commit point of every transition.
 * Slot contents are checked against their SHA-256 at boot. Not for interrupts.
 */
#ifndef TML_SLOTS_H
#define TML_SLOTS_H

#include <stdbool.h>
#include <stdint.h>

#include "tml/config.h"
#include "tml/manifest.h"
#include "tml/status.h"

#define TML_SLOT_NONE 0xFF   /**< no slot */
#define TML_META_MAGIC 0x544D4C32UL /* "TML2": the trust state joined the record */

/** @brief A slot's contents as the metadata records them. */
typedef struct {
    uint64_t sequence;   /**< manifest sequence that installed it */
    uint32_t size;       /**< model bytes */
    uint32_t package_id; /**< manifest key 14: reported as "model" */
    uint8_t sha256[32];
    uint8_t valid; /**< 1: complete and verified; 0: empty or being written */
    uint8_t pad[7];
} tml_slot_info_t;

/** @brief A report the device still owes the server (e.g. a revert found at boot). */
typedef struct {
    uint32_t package_id;
    uint16_t detail; /**< reason code */
    uint8_t state;   /**< tml_deployment_state_t; 0: nothing owed */
    uint8_t pad;
} tml_owed_report_t;

/** @brief The persisted record (both copies have this layout). */
typedef struct {
    uint32_t magic;
    uint32_t generation;
    tml_slot_info_t slot[2];
    uint64_t floor_sequence;    /**< anti-rollback: highest confirmed manifest sequence */
    uint64_t rotation_sequence; /**< last trust record applied (rotations and policies) */
    uint64_t seq_reserved;      /**< events seqs below this may have been sent: the floor */
    uint64_t min_sequence;      /**< policy key 31: offers at or below it are refused */
    uint8_t active;             /**< confirmed slot, or TML_SLOT_NONE */
    uint8_t trial;              /**< slot on trial, or TML_SLOT_NONE */
    uint8_t trial_started;      /**< 1: the trial began; a restart now reverts it */
    uint8_t retired_builtin;    /**< bit i: built-in key i retired (it never returns) */
    uint8_t rotated_count;
    uint8_t retired_count;      /**< entries of retired[] */
    uint8_t revoked_count;      /**< entries of revoked[] */
    uint8_t pad;
    uint32_t time_floor;        /**< unix s: the device's clock never goes below it */
    uint32_t revoked[TML_MAX_REVOKED_PACKAGES]; /**< policy key 32, oldest first */
    tml_key_t rotated[TML_MAX_ROTATED_KEYS];    /**< in the order they were trusted */
    uint8_t retired[TML_MAX_RETIRED_KIDS][TML_KEY_ID_BYTES]; /**< newest retired rotated keys */
    tml_owed_report_t owed;
    uint32_t crc; /**< CRC-32 of everything before it */
} tml_meta_t;

/** @brief The metadata in RAM and which copy it came from. */
typedef struct {
    tml_meta_t meta;
    uint8_t copy; /**< 0 or 1: sector holding the current record */
} tml_slots_t;

/**
 * @brief Read the newest valid metadata copy, or start from the factory state (no model).
 * @param s the state (owned by the caller)
 * @return TML_OK or TML_ERR_FLASH
 */
tml_status_t tml_slots_load(tml_slots_t *s);

/**
 * @brief Persist the metadata into the other copy (the commit point of every change).
 * @param s the state
 * @return TML_OK or TML_ERR_FLASH (the previous copy stays in force)
 */
tml_status_t tml_slots_save(tml_slots_t *s);

/**
 * @brief Decide which slot to run after a reset: start a pending trial, revert an interrupted
 *        one (owing ROLLED_BACK / TRIAL_INTERRUPTED), else the active slot if its digest holds,
 *        else the other valid slot.
 * @param s the loaded state
 * @param run receives the slot to run, or TML_SLOT_NONE
 * @return TML_OK or TML_ERR_FLASH
 */
tml_status_t tml_slots_boot(tml_slots_t *s, uint8_t *run);

/**
 * @brief Check a slot's bytes against its recorded size and SHA-256.
 * @param s the state
 * @param slot 0 or 1
 * @return TML_OK, TML_ERR_NOT_FOUND (not valid), TML_ERR_CRC (digest differs), TML_ERR_FLASH
 */
tml_status_t tml_slots_verify(const tml_slots_t *s, uint8_t slot);

/**
 * @brief Return the slot an update writes: the one not active (after a fallback boot the
 *        slot that runs is the active one, so this is never the running model's).
 * @param s the state
 * @return 0 or 1
 */
uint8_t tml_slots_inactive(const tml_slots_t *s);

/**
 * @brief Mark a slot empty (persisted) and erase the sectors a model of size bytes needs.
 * @param s the state
 * @param slot the inactive slot
 * @param size bytes that will be written
 * @return TML_OK, TML_ERR_ARG (too large or the active slot), TML_ERR_FLASH
 */
tml_status_t tml_slots_begin_write(tml_slots_t *s, uint8_t slot, uint32_t size);

/**
 * @brief Commit a written and verified slot and start its trial (one metadata write).
 * @param s the state
 * @param slot the slot written
 * @param m the manifest it came from
 * @return TML_OK or TML_ERR_FLASH
 */
tml_status_t tml_slots_install(tml_slots_t *s, uint8_t slot, const tml_manifest_t *m);

/**
 * @brief Make the trial slot the active one and raise the anti-rollback floor.
 * @param s the state
 * @return TML_OK, TML_ERR_STATE (no trial), TML_ERR_FLASH
 */
tml_status_t tml_slots_confirm(tml_slots_t *s);

/**
 * @brief Abandon the trial: the active slot stays, the trial slot is marked empty.
 * @param s the state
 * @return TML_OK, TML_ERR_STATE (no trial), TML_ERR_FLASH
 */
tml_status_t tml_slots_revert(tml_slots_t *s);

/**
 * @brief Return the anti-rollback floor: offers must carry a higher sequence.
 * @param s the state
 * @return the highest confirmed sequence (0 on a new device)
 */
uint64_t tml_slots_floor(const tml_slots_t *s);

/**
 * @brief Make sure the persisted events-sequence floor covers seq before it is sent: when seq
 *        reaches the reservation, reserve up to seq + block and save (one erase per block).
 * @param s the state
 * @param seq the sequence about to be sent
 * @param block how many sequences to reserve past seq (TML_SEQ_RESERVE_MS)
 * @return TML_OK (seq is covered) or TML_ERR_FLASH (it is not: do not send it)
 */
tml_status_t tml_slots_reserve_seq(tml_slots_t *s, uint64_t seq, uint64_t block);

/**
 * @brief Return the persisted events-sequence floor: the next batch's seq is at least this.
 * @param s the state
 * @return 0 on a new device
 */
uint64_t tml_slots_seq_floor(const tml_slots_t *s);

#endif /* TML_SLOTS_H */
