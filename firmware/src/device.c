/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The device loop: boot (trial resolution, model load), link frames in, OTA download and the
 * trial/confirm/revert that follows, inference events out, status and reports. Everything that
 * is due waits for the link's one transmit slot, in priority order: hello, reports, chunk
 * requests, status, events.
 */
#include "tml/device.h"

#include <string.h>

#include "tml/enroll.h"
#include "tml/golden.h"
#include "tml/messages.h"
#include "tml/platform.h"
#include "tml/trust.h"

/* x / 1000 in 16-bit steps: no 64-bit division routine gets linked in (700 bytes on an M3). */
static uint64_t div1000(uint64_t x)
{
    uint64_t q = 0;
    uint32_t r = 0;
    for (int shift = 48; shift >= 0; shift -= 16) {
        uint32_t cur = (r << 16) | (uint32_t)((x >> shift) & 0xFFFF);
        q = (q << 16) | (cur / 1000);
        r = cur % 1000;
    }
    return q;
}

static uint32_t running_pkg(const tml_device_t *d)
{
    return d->running == TML_SLOT_NONE ? 0 : d->slots.meta.slot[d->running].package_id;
}

static void rebuild_keyring(tml_device_t *d)
{
    tml_trust_keyring(&d->slots.meta, d->cfg.builtin_keys, d->cfg.builtin_count, d->keys,
                      &d->keyring);
}

static void queue_report(tml_device_t *d, uint32_t pkg, uint8_t state, tml_reason_t detail)
{
    if (d->report_count == TML_DEVICE_REPORTS) { /* keep the newest: they matter most */
        memmove(d->reports, d->reports + 1, sizeof(d->reports[0]) * (TML_DEVICE_REPORTS - 1));
        d->report_count--;
    }
    d->reports[d->report_count++] = (tml_report_t){pkg, (uint16_t)detail, state};
}

static bool load_slot(tml_device_t *d, uint8_t slot)
{
    tml_model_runner_t *r = d->cfg.runner;
    if (d->running != TML_SLOT_NONE) {
        r->unload(r);
        d->running = TML_SLOT_NONE;
    }
    if (slot == TML_SLOT_NONE) {
        return false;
    }
    const uint8_t *model = tml_platform_flash_map(TML_AREA_SLOT0 + slot);
    if (!model || r->load(r, model, d->slots.meta.slot[slot].size) != TML_OK) {
        return false;
    }
    d->running = slot;
    return true;
}

tml_status_t tml_device_init(tml_device_t *d, const tml_device_config_t *cfg, tml_write_fn write,
                             void *write_ctx)
{
    uint8_t run;
    memset(d, 0, sizeof(*d));
    d->cfg = *cfg;
    d->running = TML_SLOT_NONE;
    tml_link_init(&d->link, write, write_ctx);
    tml_ota_init(&d->ota, &d->slots);
    d->uptime_tick = tml_platform_millis();
    d->last_infer = d->uptime_tick;
    if (tml_slots_load(&d->slots) != TML_OK || tml_slots_boot(&d->slots, &run) != TML_OK) {
        return TML_ERR_FLASH;
    }
    rebuild_keyring(d);
    if (tml_slots_seq_floor(&d->slots) > 0) { /* seqs below the floor may have been sent */
        d->last_seq = tml_slots_seq_floor(&d->slots) - 1;
    }
    if (!load_slot(d, run) && run != TML_SLOT_NONE && run == d->slots.meta.trial) {
        /* The trial model does not load: revert now rather than at the next restart. */
        uint32_t pkg = d->slots.meta.slot[run].package_id;
        if (tml_slots_revert(&d->slots) == TML_OK) {
            queue_report(d, pkg, TML_STATE_ROLLED_BACK, TML_REASON_MODEL_LOAD_FAILED);
        }
        (void)load_slot(d, d->slots.meta.active);
    }
    tml_owed_report_t *owed = &d->slots.meta.owed;
    if (owed->state) {
        queue_report(d, owed->package_id, owed->state, (tml_reason_t)owed->detail);
        memset(owed, 0, sizeof(*owed));
        (void)tml_slots_save(&d->slots);
    }
    d->hello_due = true;
    d->status_due = true;
    return TML_OK;
}

uint64_t tml_device_unix_ms(const tml_device_t *d)
{
    if (!d->time_synced) {
        return 0;
    }
    return d->time_base_ms + (uint32_t)(tml_platform_millis() - d->time_base_tick);
}

/* Run the new model's trial; confirm it, or revert to the previous model. */
static void trial(tml_device_t *d)
{
    uint8_t slot = d->ota.slot;
    uint32_t pkg = d->slots.meta.slot[slot].package_id;
    tml_reason_t why = TML_REASON_OK;
    queue_report(d, pkg, TML_STATE_TRIAL, TML_REASON_OK);
    if (!load_slot(d, slot)) {
        why = TML_REASON_MODEL_LOAD_FAILED;
    }
    /* A runner without raw tensors (the test source in the Cortex-M image runs no model)
     * cannot judge key 15: it gets the legacy trial below, as before key 15. */
    if (why == TML_REASON_OK && d->ota.manifest.trial_n && d->cfg.runner->invoke_raw) {
        why = tml_golden_trial(d->cfg.runner, &d->ota.manifest, (uint8_t *)&d->ota.transfer,
                               sizeof(d->ota.transfer));
    }
    for (int i = 0; i < TML_TRIAL_INFERENCES && why == TML_REASON_OK; i++) {
        tml_inference_t out;
        if (d->cfg.runner->infer(d->cfg.runner, &out) != TML_OK) {
            why = TML_REASON_TRIAL_FAILED;
        }
    }
    if (why == TML_REASON_OK && tml_slots_confirm(&d->slots) == TML_OK) {
        queue_report(d, pkg, TML_STATE_CONFIRMED, TML_REASON_OK);
    } else {
        why = why == TML_REASON_OK ? TML_REASON_FLASH_ERROR : why;
        (void)tml_slots_revert(&d->slots);
        (void)load_slot(d, d->slots.meta.active); /* the confirmed model, valid by definition */
        queue_report(d, pkg, TML_STATE_ROLLED_BACK, why);
    }
    d->status_due = true;
}

static void finish_download(tml_device_t *d)
{
    uint32_t pkg = (uint32_t)d->ota.manifest.package_id;
    tml_reason_t why = tml_ota_finish(&d->ota);
    d->request_due = false;
    if (why != TML_REASON_OK) {
        queue_report(d, pkg, TML_STATE_FAILED, why);
        return;
    }
    queue_report(d, pkg, TML_STATE_VERIFIED, TML_REASON_OK);
    queue_report(d, pkg, TML_STATE_INSTALLED, TML_REASON_OK);
    trial(d);
}

static void handle_offer(tml_device_t *d, const uint8_t *cose, size_t len)
{
    uint32_t pkg;
    d->proof_due = false; /* its signature sits in the transfer decoder's memory */
    tml_manifest_policy_t policy = {
        .keyring = &d->keyring,
        .hardware_profile = d->cfg.hardware_profile,
        /* Before the gateway's TIME the device cannot tell that a manifest is unexpired: its
         * expiry check fails (MANIFEST_EXPIRED) rather than trusting the build time. */
        .now = d->time_synced ? div1000(tml_device_unix_ms(d)) : UINT64_MAX,
        .arena_bytes = d->cfg.runner->arena_bytes,
    };
    tml_reason_t why = tml_ota_offer(&d->ota, cose, len, &policy, &pkg);
    if (why != TML_REASON_OK) {
        queue_report(d, pkg, TML_STATE_FAILED, why); /* pkg: authenticated, or 0 */
        return;
    }
    if (d->ota.transfer.received == 0) {
        queue_report(d, (uint32_t)d->ota.manifest.package_id, TML_STATE_DOWNLOADING, 0);
    }
    d->request_retries = 0;
    if (tml_ota_complete(&d->ota)) {
        finish_download(d); /* an empty transfer */
    } else {
        d->request_due = true;
    }
}

static void handle_chunk(tml_device_t *d, const uint8_t *msg, size_t len)
{
    uint32_t pkg, offset;
    const uint8_t *data;
    size_t n;
    if (tml_chunk_decode(msg, len, &pkg, &offset, &data, &n) != TML_OK ||
        d->ota.state != TML_OTA_DOWNLOADING || pkg != d->ota.manifest.package_id) {
        return; /* malformed, or for a download that is over: nothing to do */
    }
    tml_reason_t why = tml_ota_chunk(&d->ota, offset, data, n);
    if (why == TML_REASON_CHUNK_OUT_OF_ORDER) {
        return; /* a late duplicate; the request timer asks again if needed */
    }
    if (why != TML_REASON_OK) {
        d->request_due = false;
        queue_report(d, pkg, TML_STATE_FAILED, why);
        return;
    }
    d->request_retries = 0;
    if (tml_ota_complete(&d->ota)) {
        finish_download(d);
    } else {
        d->request_due = true;
    }
}

/* Stop the download (a withdrawal, a revocation) and report it as the SDK's agent does. */
static void stop_download(tml_device_t *d, uint16_t reason)
{
    tml_ota_abort(&d->ota);
    d->request_due = false;
    queue_report(d, (uint32_t)d->ota.manifest.package_id, TML_STATE_FAILED, reason);
}

/* A rotation or policy record (each record of fleet/v1/keys): apply, persist, and stop a
 * download the new state forbids. Replays and refusals change nothing. */
static void handle_trust(tml_device_t *d, const uint8_t *cose, size_t len)
{
    tml_meta_t *m = &d->slots.meta;
    if (tml_trust_apply(m, &d->keyring, d->cfg.builtin_keys, d->cfg.builtin_count, cose, len) !=
        TML_REASON_OK) {
        return;
    }
    if (tml_slots_save(&d->slots) != TML_OK) {
        (void)tml_slots_load(&d->slots); /* back to what flash says */
    }
    rebuild_keyring(d);
    d->status_due = true; /* the keys it trusts changed: the server counts them */
    if (d->ota.state == TML_OTA_DOWNLOADING &&
        tml_trust_stops(m, d->ota.manifest.package_id, d->ota.manifest.sequence)) {
        stop_download(d, TML_REASON_ABORTED);
    }
}

/* TIME: never below the persisted floor (the build time, the last TIME accepted). The floor
 * is saved when it moves by a day or more (bounded flash wear), else with the next save. */
static void handle_time(tml_device_t *d, const uint8_t *msg, size_t len)
{
    uint64_t unix_ms;
    tml_meta_t *m = &d->slots.meta;
    uint32_t floor = m->time_floor > TML_BUILD_UNIX_TIME ? m->time_floor
                                                         : (uint32_t)TML_BUILD_UNIX_TIME;
    if (tml_time_decode(msg, len, &unix_ms) != TML_OK || unix_ms > TML_MAX_T0_MS ||
        div1000(unix_ms) < floor) {
        return; /* a clock going backwards could revive an expired manifest */
    }
    d->time_base_ms = unix_ms;
    d->time_base_tick = tml_platform_millis();
    d->time_synced = true;
    m->time_floor = (uint32_t)div1000(unix_ms);
    if (m->time_floor - floor >= TML_TIME_FLOOR_SAVE_S) {
        (void)tml_slots_save(&d->slots);
    }
}

static void handle_frame(tml_device_t *d, const tml_link_frame_t *f)
{
    uint32_t pkg;
    uint16_t reason;
    switch (f->kind) {
    case TML_LINK_OFFER: handle_offer(d, f->payload, f->len); break;
    case TML_LINK_CHUNK: handle_chunk(d, f->payload, f->len); break;
    case TML_LINK_ROTATION: handle_trust(d, f->payload, f->len); break;
    case TML_LINK_WITHDRAW:
        if (tml_withdraw_decode(f->payload, f->len, &pkg, &reason) == TML_OK &&
            d->ota.state == TML_OTA_DOWNLOADING && pkg == d->ota.manifest.package_id) {
            stop_download(d, reason);
        }
        break;
    case TML_LINK_STATUS_REQUEST: d->status_due = true; break;
    case TML_LINK_ENROLL_CHALLENGE:
        /* The signature waits for the link in the transfer decoder's memory, idle unless a
         * download runs (the gateway enrolls a child before it offers it anything; during a
         * download it asks again later). An offer cancels the answer: it reuses that memory. */
        d->proof_due = d->ota.state != TML_OTA_DOWNLOADING &&
                       tml_enroll_prove(f->payload, f->len, d->cfg.uid, d->cfg.hardware_profile,
                                        (uint8_t *)&d->ota.transfer) == TML_OK;
        break;
    case TML_LINK_TIME: handle_time(d, f->payload, f->len); break;
    default: break; /* kinds a device sends, or newer ones: ignored */
    }
}

void tml_device_input(tml_device_t *d, const uint8_t *data, size_t len)
{
    while (len) {
        size_t used = 0;
        tml_link_frame_t f;
        if (tml_link_receive(&d->link, data, len, &used, &f, tml_platform_millis())) {
            handle_frame(d, &f);
        }
        data += used;
        len -= used;
    }
}

static void infer(tml_device_t *d, uint32_t now)
{
    tml_inference_t out;
    tml_model_runner_t *r = d->cfg.runner;
    d->last_infer = now;
    if (d->running == TML_SLOT_NONE || r->infer(r, &out) != TML_OK) {
        return;
    }
    d->inferences++;
    if (!d->time_synced) {
        return; /* events need wall-clock time: wait for the gateway's TIME */
    }
    if (d->event_count == TML_EVENTS_PER_BATCH ||
        (d->event_count && d->batch_model != running_pkg(d))) {
        d->events_dropped++; /* the batch is waiting for the link */
        return;
    }
    if (!d->event_count) {
        d->batch_started = now;
        d->batch_model = running_pkg(d);
    }
    tml_event_t *e = &d->events[d->event_count++];
    e->t_ms = tml_device_unix_ms(d);
    e->label = out.label;
    e->score = out.score;
    e->latency_100us = out.latency_100us;
}

static bool batch_due(const tml_device_t *d, uint32_t now)
{
    return d->event_count &&
           (d->event_count == TML_EVENTS_PER_BATCH || d->batch_model != running_pkg(d) ||
            (uint32_t)(now - d->batch_started) >= TML_BATCH_MAX_AGE_MS);
}

static void send(tml_device_t *d, uint8_t kind, tml_status_t st, size_t len, uint32_t now)
{
    if (st == TML_OK) {
        (void)tml_link_send(&d->link, kind, len, now);
    }
}

static void send_status(tml_device_t *d, uint32_t now)
{
    tml_model_runner_t *r = d->cfg.runner;
    size_t len = 0;
    tml_status_msg_t s = {
        .has_model = d->running != TML_SLOT_NONE,
        .model = running_pkg(d),
        .slot = d->running == TML_SLOT_NONE ? 0 : d->running,
        .uptime_s = div1000(d->uptime_ms),
        .free_ram = tml_platform_free_ram(),
        .seq = tml_slots_floor(&d->slots),
        .firmware_version = TML_FIRMWARE_VERSION,
        .tflm_version = r->tflm_version,
        .ops = r->ops,
        .op_count = r->op_count,
        .arena_bytes = r->arena_bytes,
        .slot_bytes = tml_platform_flash_size(TML_AREA_SLOT0),
        .pointer_bits = d->cfg.pointer_bits,
        .keys = &d->keyring,
    };
    tml_status_t st = tml_status_encode(&s, tml_link_payload(&d->link), TML_LINK_TX_MAX_PAYLOAD,
                                        &len);
    send(d, TML_LINK_STATUS, st, len, now);
}

static void send_due(tml_device_t *d, uint32_t now)
{
    uint8_t *p = tml_link_payload(&d->link);
    size_t cap = TML_LINK_TX_MAX_PAYLOAD, len = 0;
    tml_status_t st;
    if (d->hello_due) {
        d->hello_due = false;
        st = tml_enroll_hello(d->cfg.uid, d->cfg.hardware_profile, TML_LINK_MAX_PAYLOAD, p, cap,
                              &len);
        send(d, TML_LINK_HELLO, st, len, now);
    } else if (d->proof_due) {
        d->proof_due = false;
        p[0] = 0x58; /* bstr, one length byte: 64 */
        p[1] = TML_ENROLL_SIGNATURE;
        memcpy(p + 2, &d->ota.transfer, TML_ENROLL_SIGNATURE);
        send(d, TML_LINK_ENROLL_PROOF, TML_OK, 2 + TML_ENROLL_SIGNATURE, now);
    } else if (d->report_count) {
        tml_report_t r = d->reports[0];
        memmove(d->reports, d->reports + 1, sizeof(r) * (size_t)(--d->report_count));
        st = tml_report_encode(r.pkg, r.state, r.detail, p, cap, &len);
        send(d, TML_LINK_REPORT, st, len, now);
    } else if (d->request_due && d->ota.state == TML_OTA_DOWNLOADING) {
        uint32_t offset, length;
        d->request_due = false;
        d->request_at = now;
        tml_ota_next_request(&d->ota, &offset, &length);
        st = tml_chunk_request_encode((uint32_t)d->ota.manifest.package_id, offset, length, p,
                                      cap, &len);
        send(d, TML_LINK_CHUNK_REQUEST, st, len, now);
    } else if (d->status_due) {
        d->status_due = false;
        send_status(d, now);
    } else if (batch_due(d, now)) {
        uint64_t seq = d->events[0].t_ms > d->last_seq ? d->events[0].t_ms : d->last_seq + 1;
        if (tml_slots_reserve_seq(&d->slots, seq, TML_SEQ_RESERVE_MS) != TML_OK) {
            return; /* not persisted: sending it could reuse it after a reboot; retry later */
        }
        st = tml_events_encode_batch(seq, d->batch_model, d->events, d->event_count, p, cap,
                                     &len);
        d->last_seq = seq;
        d->event_count = 0;
        send(d, TML_LINK_EVENTS, st, len, now);
    }
}

void tml_device_poll(tml_device_t *d)
{
    uint32_t now = tml_platform_millis();
    d->uptime_ms += (uint32_t)(now - d->uptime_tick);
    d->uptime_tick = now;
    tml_link_poll(&d->link, now);
    if (d->ota.state == TML_OTA_DOWNLOADING && !d->request_due &&
        (uint32_t)(now - d->request_at) >= TML_OTA_CHUNK_TIMEOUT_MS) {
        if (d->request_retries >= TML_OTA_MAX_RETRIES) {
            tml_ota_abort(&d->ota);
            queue_report(d, (uint32_t)d->ota.manifest.package_id, TML_STATE_FAILED,
                         TML_REASON_TIMEOUT);
        } else {
            d->request_retries++;
            d->request_due = true;
        }
    }
    if ((uint32_t)(now - d->last_infer) >= TML_INFER_PERIOD_MS) {
        infer(d, now);
    }
    if (!tml_link_busy(&d->link)) {
        send_due(d, now);
    }
}

/* Milliseconds from now until `period` has passed since `start` (0: it has). */
static uint32_t remaining(uint32_t now, uint32_t start, uint32_t period)
{
    uint32_t since = now - start;
    return since >= period ? 0 : period - since;
}

uint32_t tml_device_next_ms(const tml_device_t *d)
{
    uint32_t now = tml_platform_millis();
    uint32_t next = tml_link_next_ms(&d->link, now), t;
    bool free = !tml_link_busy(&d->link);
    if (free && (d->hello_due || d->proof_due || d->report_count || d->status_due ||
                 (d->request_due && d->ota.state == TML_OTA_DOWNLOADING) || batch_due(d, now))) {
        return 0;
    }
    t = remaining(now, d->last_infer, TML_INFER_PERIOD_MS);
    next = t < next ? t : next;
    if (free && d->event_count) {
        t = remaining(now, d->batch_started, TML_BATCH_MAX_AGE_MS);
        next = t < next ? t : next;
    }
    if (d->ota.state == TML_OTA_DOWNLOADING && !d->request_due) {
        t = remaining(now, d->request_at, TML_OTA_CHUNK_TIMEOUT_MS);
        next = t < next ? t : next;
    }
    return next;
}
