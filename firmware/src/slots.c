/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A/B slots and the metadata record. The record is kept twice, one erase sector each; a save
 * erases and writes the copy not in use with generation + 1, so a power cut leaves the other
 * copy, with its valid CRC, in force. Every state change is one save: the commit point.
 */
#include "tml/slots.h"

#include <stddef.h>
#include <string.h>

#include "tml/link.h"
#include "tml/platform.h"
#include "tml/sha.h"

static uint32_t meta_crc(const tml_meta_t *m)
{
    return tml_crc32(0, m, offsetof(tml_meta_t, crc));
}

/* Read one copy into s->meta and return whether it is intact: magic, CRC, sane fields. */
static bool read_copy(tml_slots_t *s, uint8_t copy)
{
    tml_meta_t *m = &s->meta;
    uint32_t sector = tml_platform_flash_sector(TML_AREA_META);
    return tml_platform_flash_read(TML_AREA_META, copy * sector, m, sizeof(*m)) == TML_OK &&
           m->magic == TML_META_MAGIC && m->crc == meta_crc(m) &&
           (m->active <= 1 || m->active == TML_SLOT_NONE) &&
           (m->trial <= 1 || m->trial == TML_SLOT_NONE) && m->rotated_count <= TML_MAX_ROTATED_KEYS &&
           m->retired_count <= TML_MAX_RETIRED_KIDS && m->revoked_count <= TML_MAX_REVOKED_PACKAGES;
}

tml_status_t tml_slots_load(tml_slots_t *s)
{
    /*
     * Both copies pass through the one record in RAM: copy 1 first, so that copy 0, read last,
     * needs no second read when it is the newer (generations wrap: compared signed).
     */
    tml_meta_t *m = &s->meta;
    bool ok1 = read_copy(s, 1);
    uint32_t g1 = m->generation;
    if (read_copy(s, 0) && (!ok1 || (int32_t)(g1 - m->generation) <= 0)) {
        s->copy = 0;
        return TML_OK;
    }
    if (ok1 && read_copy(s, 1)) {
        s->copy = 1;
        return TML_OK;
    }
    memset(m, 0, sizeof(*m));
    m->magic = TML_META_MAGIC;
    m->active = TML_SLOT_NONE;
    m->trial = TML_SLOT_NONE;
    s->copy = 1; /* the first save goes to copy 0 */
    return TML_OK;
}

tml_status_t tml_slots_save(tml_slots_t *s)
{
    uint8_t target = (uint8_t)(s->copy ^ 1);
    uint32_t sector = tml_platform_flash_sector(TML_AREA_META);
    tml_meta_t *m = &s->meta;
    m->generation++;
    m->crc = meta_crc(m);
    if (tml_platform_flash_erase(TML_AREA_META, target * sector, sector) != TML_OK ||
        tml_platform_flash_write(TML_AREA_META, target * sector, m, sizeof(*m)) != TML_OK) {
        m->generation--;
        return TML_ERR_FLASH;
    }
    s->copy = target;
    return TML_OK;
}

tml_status_t tml_slots_verify(const tml_slots_t *s, uint8_t slot)
{
    const tml_slot_info_t *info = &s->meta.slot[slot];
    uint8_t buf[64], digest[32];
    tml_sha256_t sha;
    if (slot > 1 || !info->valid || info->size > tml_platform_flash_size(TML_AREA_SLOT0 + slot)) {
        return TML_ERR_NOT_FOUND;
    }
    tml_sha256_init(&sha);
    for (uint32_t off = 0; off < info->size; off += sizeof(buf)) {
        size_t n = info->size - off < sizeof(buf) ? info->size - off : sizeof(buf);
        if (tml_platform_flash_read(TML_AREA_SLOT0 + slot, off, buf, n) != TML_OK) {
            return TML_ERR_FLASH;
        }
        tml_sha256_update(&sha, buf, n);
    }
    tml_sha256_final(&sha, digest);
    return memcmp(digest, info->sha256, 32) ? TML_ERR_CRC : TML_OK;
}

tml_status_t tml_slots_boot(tml_slots_t *s, uint8_t *run)
{
    tml_meta_t *m = &s->meta;
    *run = TML_SLOT_NONE;
    if (m->trial != TML_SLOT_NONE) {
        if (m->trial_started) {
            /* Restarted during the trial: revert, and owe the server the reason. */
            m->owed = (tml_owed_report_t){.package_id = m->slot[m->trial].package_id,
                                          .detail = TML_REASON_TRIAL_INTERRUPTED,
                                          .state = TML_STATE_ROLLED_BACK};
            m->slot[m->trial].valid = 0;
            m->trial = TML_SLOT_NONE;
            m->trial_started = 0;
        } else if (tml_slots_verify(s, m->trial) == TML_OK) {
            m->trial_started = 1;
            if (tml_slots_save(s) != TML_OK) {
                return TML_ERR_FLASH;
            }
            *run = m->trial;
            return TML_OK;
        } else {
            m->slot[m->trial].valid = 0;
            m->trial = TML_SLOT_NONE;
        }
        if (tml_slots_save(s) != TML_OK) {
            return TML_ERR_FLASH;
        }
    }
    if (m->active != TML_SLOT_NONE && tml_slots_verify(s, m->active) == TML_OK) {
        *run = m->active;
    } else if (m->active != TML_SLOT_NONE && tml_slots_verify(s, m->active ^ 1) == TML_OK) {
        /* The active copy is damaged: the previous one runs and becomes the active slot, so the
         * next update writes the damaged slot, never the running model (persisted when the
         * flash allows; in RAM for this boot either way). */
        m->slot[m->active].valid = 0;
        m->active ^= 1;
        *run = m->active;
        (void)tml_slots_save(s);
    }
    return TML_OK;
}

uint8_t tml_slots_inactive(const tml_slots_t *s)
{
    return s->meta.active == 0 ? 1 : 0;
}

tml_status_t tml_slots_begin_write(tml_slots_t *s, uint8_t slot, uint32_t size)
{
    int area = TML_AREA_SLOT0 + slot;
    uint32_t sector = tml_platform_flash_sector(area);
    if (slot > 1 || slot == s->meta.active || size > tml_platform_flash_size(area)) {
        return TML_ERR_ARG;
    }
    if (s->meta.slot[slot].valid || s->meta.trial == slot) {
        s->meta.slot[slot].valid = 0;
        if (s->meta.trial == slot) {
            s->meta.trial = TML_SLOT_NONE;
            s->meta.trial_started = 0;
        }
        if (tml_slots_save(s) != TML_OK) {
            return TML_ERR_FLASH;
        }
    }
    for (uint32_t off = 0; off < size; off += sector) { /* sector by sector, as drivers do */
        if (tml_platform_flash_erase(area, off, sector) != TML_OK) {
            return TML_ERR_FLASH;
        }
    }
    return TML_OK;
}

tml_status_t tml_slots_install(tml_slots_t *s, uint8_t slot, const tml_manifest_t *m)
{
    tml_slot_info_t *info = &s->meta.slot[slot];
    memset(info, 0, sizeof(*info));
    info->sequence = m->sequence;
    info->size = m->model_size;
    info->package_id = m->package_id <= 0xFFFFFFFFULL ? (uint32_t)m->package_id : 0;
    memcpy(info->sha256, m->model_sha256, 32);
    info->valid = 1;
    s->meta.trial = slot;
    s->meta.trial_started = 1; /* the caller starts the trial right away */
    return tml_slots_save(s);
}

tml_status_t tml_slots_confirm(tml_slots_t *s)
{
    tml_meta_t *m = &s->meta;
    if (m->trial == TML_SLOT_NONE) {
        return TML_ERR_STATE;
    }
    m->active = m->trial;
    if (m->slot[m->active].sequence > m->floor_sequence) {
        m->floor_sequence = m->slot[m->active].sequence;
    }
    m->trial = TML_SLOT_NONE;
    m->trial_started = 0;
    return tml_slots_save(s);
}

tml_status_t tml_slots_revert(tml_slots_t *s)
{
    tml_meta_t *m = &s->meta;
    if (m->trial == TML_SLOT_NONE) {
        return TML_ERR_STATE;
    }
    m->slot[m->trial].valid = 0;
    m->trial = TML_SLOT_NONE;
    m->trial_started = 0;
    return tml_slots_save(s);
}

uint64_t tml_slots_floor(const tml_slots_t *s)
{
    return s->meta.floor_sequence;
}

tml_status_t tml_slots_reserve_seq(tml_slots_t *s, uint64_t seq, uint64_t block)
{
    uint64_t before = s->meta.seq_reserved;
    if (seq < before) {
        return TML_OK;
    }
    s->meta.seq_reserved = seq + block;
    if (tml_slots_save(s) != TML_OK) {
        s->meta.seq_reserved = before;
        return TML_ERR_FLASH;
    }
    return TML_OK;
}

uint64_t tml_slots_seq_floor(const tml_slots_t *s)
{
    return s->meta.seq_reserved;
}
