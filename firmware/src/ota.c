/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The OTA receiver: checks an offer, erases the inactive slot, streams chunks through the
 * transfer decoder into flash via a small staging buffer, re-reads the slot against the model
 * digest, and commits it as the trial slot with one metadata write.
 */
#include "tml/ota.h"

#include <string.h>

#include "tml/platform.h"

static tml_reason_t flush_stage(tml_ota_t *o)
{
    if (!o->stage_len) {
        return TML_REASON_OK;
    }
    if (tml_platform_flash_write(TML_AREA_SLOT0 + o->slot, o->written, o->stage, o->stage_len) !=
        TML_OK) {
        return TML_REASON_FLASH_ERROR;
    }
    o->written += o->stage_len;
    o->stage_len = 0;
    return TML_REASON_OK;
}

/* Sink of the transfer decoder: stage model bytes, program whole staging buffers. */
static tml_reason_t stage_write(void *ctx, const uint8_t *data, size_t len)
{
    tml_ota_t *o = ctx;
    while (len) {
        size_t n = sizeof(o->stage) - o->stage_len;
        if (n > len) {
            n = len;
        }
        memcpy(o->stage + o->stage_len, data, n);
        o->stage_len += (uint32_t)n;
        data += n;
        len -= n;
        if (o->stage_len == sizeof(o->stage)) {
            tml_reason_t why = flush_stage(o);
            if (why != TML_REASON_OK) {
                return why;
            }
        }
    }
    return TML_REASON_OK;
}

/* Base reader of a delta: the running model, never past its recorded size. */
static tml_reason_t base_read(void *ctx, uint32_t offset, uint8_t *buf, size_t len)
{
    tml_ota_t *o = ctx;
    const tml_slot_info_t *base = &o->slots->meta.slot[o->base_slot];
    if ((uint64_t)offset + len > base->size) {
        return TML_REASON_DELTA_BASE_MISMATCH; /* base model shorter than the delta */
    }
    if (tml_platform_flash_read(TML_AREA_SLOT0 + o->base_slot, offset, buf, len) != TML_OK) {
        return TML_REASON_FLASH_ERROR;
    }
    return TML_REASON_OK;
}

void tml_ota_init(tml_ota_t *o, tml_slots_t *slots)
{
    memset(o, 0, sizeof(*o));
    o->slots = slots;
    o->state = TML_OTA_IDLE;
}

tml_reason_t tml_ota_offer(tml_ota_t *o, const uint8_t *cose, size_t len,
                           const tml_manifest_policy_t *policy, uint32_t *pkg)
{
    tml_manifest_t m;
    tml_manifest_policy_t p = *policy;
    const tml_meta_t *meta = &o->slots->meta;
    uint8_t slot = tml_slots_inactive(o->slots);
    bool running = meta->active != TML_SLOT_NONE && meta->slot[meta->active].valid;
    p.current_sequence = tml_slots_floor(o->slots);
    if (meta->min_sequence > p.current_sequence) { /* policy key 31 */
        p.current_sequence = meta->min_sequence;
    }
    p.revoked = meta->revoked;
    p.revoked_count = meta->revoked_count;
    p.slot_bytes = tml_platform_flash_size(TML_AREA_SLOT0 + slot);
    p.running_model_sha256 = running ? meta->slot[meta->active].sha256 : NULL;
    tml_reason_t why = tml_manifest_check(cose, len, &p, &m);
    *pkg = m.package_id <= TML_MAX_PACKAGE_ID ? (uint32_t)m.package_id : 0; /* 0: unsigned */
    if (why != TML_REASON_OK) {
        return why;
    }
    if (o->state == TML_OTA_DOWNLOADING && m.package_id == o->manifest.package_id &&
        m.sequence == o->manifest.sequence) {
        return TML_REASON_OK; /* the same offer again: carry on where the download is */
    }
    if (m.encoding == TML_ENCODING_DELTA && !running) {
        return TML_REASON_DELTA_BASE_MISMATCH;
    }
    o->state = TML_OTA_IDLE;
    if (tml_slots_begin_write(o->slots, slot, m.model_size) != TML_OK) {
        return TML_REASON_FLASH_ERROR;
    }
    o->manifest = m;
    o->slot = slot;
    o->base_slot = meta->active;
    o->written = 0;
    o->stage_len = 0;
    why = tml_transfer_init(&o->transfer, &o->manifest, stage_write, o,
                            running ? base_read : NULL, o);
    if (why == TML_REASON_OK) {
        o->state = TML_OTA_DOWNLOADING;
    }
    return why;
}

tml_reason_t tml_ota_chunk(tml_ota_t *o, uint32_t offset, const uint8_t *data, size_t len)
{
    if (o->state != TML_OTA_DOWNLOADING) {
        return TML_REASON_PACKAGE_NOT_OFFERED;
    }
    if (offset != o->transfer.received) {
        return TML_REASON_CHUNK_OUT_OF_ORDER;
    }
    tml_reason_t why = tml_transfer_feed(&o->transfer, data, len);
    if (why != TML_REASON_OK) {
        o->state = TML_OTA_IDLE;
    }
    return why;
}

bool tml_ota_complete(const tml_ota_t *o)
{
    return o->state == TML_OTA_DOWNLOADING &&
           o->transfer.received == o->manifest.transfer_size;
}

tml_reason_t tml_ota_finish(tml_ota_t *o)
{
    if (o->state != TML_OTA_DOWNLOADING) {
        return TML_REASON_PACKAGE_NOT_OFFERED;
    }
    o->state = TML_OTA_IDLE;
    tml_reason_t why = tml_transfer_finish(&o->transfer);
    if (why == TML_REASON_OK) {
        why = flush_stage(o);
    }
    if (why != TML_REASON_OK) {
        return why;
    }
    /* Trust the flash, not the RAM copy: hash what was programmed. */
    tml_slot_info_t *info = &o->slots->meta.slot[o->slot];
    info->size = o->manifest.model_size;
    memcpy(info->sha256, o->manifest.model_sha256, 32);
    info->valid = 1;
    tml_status_t st = tml_slots_verify(o->slots, o->slot);
    info->valid = 0;
    if (st == TML_ERR_FLASH) {
        return TML_REASON_FLASH_ERROR;
    }
    if (st != TML_OK) {
        return TML_REASON_MODEL_DIGEST_MISMATCH;
    }
    if (tml_slots_install(o->slots, o->slot, &o->manifest) != TML_OK) {
        return TML_REASON_FLASH_ERROR;
    }
    o->state = TML_OTA_INSTALLED;
    return TML_REASON_OK;
}

void tml_ota_next_request(const tml_ota_t *o, uint32_t *offset, uint32_t *length)
{
    uint32_t left = o->manifest.transfer_size - o->transfer.received;
    *offset = o->transfer.received;
    *length = left < TML_OTA_CHUNK_BYTES ? left : TML_OTA_CHUNK_BYTES;
}

void tml_ota_abort(tml_ota_t *o)
{
    o->state = TML_OTA_IDLE;
}
