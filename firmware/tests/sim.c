/* SPDX-License-Identifier: Apache-2.0 */
/* A scripted gateway for the posix port: answers chunk requests, records reports. */
#include "sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "posix_port.h"
#include "tml/cbor.h"
#include "tml/messages.h"
#include "tml/platform.h"
#include "tml_test.h"
#include "trusted_keys.h"

tml_device_t sim_device;
sim_seen_t sim_seen;
tml_model_runner_t *sim_runner;

static uint8_t to_dev[70000], to_gw[70000];
static size_t to_dev_len, to_gw_len;
static tml_link_t gw; /* the gateway's receiving side (it acknowledges the device's frames) */
static uint8_t gw_seq;

static void dev_write(void *ctx, const uint8_t *data, size_t len)
{
    (void)ctx;
    if (to_gw_len + len <= sizeof(to_gw)) {
        memcpy(to_gw + to_gw_len, data, len);
        to_gw_len += len;
    }
}

static void gw_write(void *ctx, const uint8_t *data, size_t len)
{
    (void)ctx;
    if (to_dev_len + len <= sizeof(to_dev)) {
        memcpy(to_dev + to_dev_len, data, len);
        to_dev_len += len;
    }
}

size_t sim_load_updates(sim_update_t *u, size_t cap)
{
    return sim_load_update_file("ota.vec", u, cap);
}

size_t sim_load_update_file(const char *name, sim_update_t *u, size_t cap)
{
    vec_file_t f;
    vec_record_t r;
    size_t n = 0;
    if (!vec_open(&f, name)) {
        return 0;
    }
    while (n < cap && vec_next(&f, &r)) {
        sim_update_t *x = &u[n++];
        snprintf(x->name, sizeof(x->name), "%s", vec_get(&r, "name"));
        x->cose_len = vec_hex(&r, "cose", x->cose, sizeof(x->cose));
        x->transfer_len = vec_file(vec_get(&r, "transfer_file"), x->transfer,
                                   sizeof(x->transfer));
        x->package_id = (uint32_t)vec_u64(&r, "package_id");
        x->model_size = (uint32_t)vec_u64(&r, "model_size");
        vec_hex(&r, "model_sha256", x->model_sha256, 32);
        x->state = (uint8_t)vec_u64(&r, "state_value");
        x->reason = (uint16_t)vec_u64(&r, "reason");
    }
    vec_close(&f);
    return n;
}

/* A power cycle clears RAM: the runner forgets its model before the flash under it changes
 * (TFLM's interpreter reads the model when it is torn down). */
static void sim_power_off(void)
{
    if (sim_runner) {
        sim_runner->unload(sim_runner);
    }
    tml_posix_flash_close();
}

void sim_flash_fresh(void)
{
    sim_power_off();
    unlink(tml_flash_path);
    tml_posix_flash_open(tml_flash_path, 64 * 1024, 1024);
}

void sim_flash_reopen(void)
{
    sim_power_off();
    tml_posix_flash_open(tml_flash_path, 64 * 1024, 1024);
}

tml_status_t sim_boot(void)
{
    tml_posix_clock_manual(true);
    size_t n;
    const tml_key_t *keys = tml_trusted_keys(&n);
    tml_device_config_t cfg = {"sim-0001", "mps2-an385",
                                 sim_runner ? sim_runner : tml_runner_test_source(), keys, n, 64};
    to_dev_len = to_gw_len = 0;
    memset(&sim_seen, 0, sizeof(sim_seen));
    tml_link_init(&gw, gw_write, NULL);
    return tml_device_init(&sim_device, &cfg, dev_write, NULL);
}

void sim_send(uint8_t kind, const uint8_t *payload, size_t len)
{
    uint8_t frame[1200];
    size_t n;
    if (tml_link_build(kind, gw_seq++, 0, payload, len, frame, sizeof(frame), &n) == TML_OK) {
        gw_write(NULL, frame, n);
    }
}

void sim_send_time(uint64_t unix_ms)
{
    uint8_t t[9] = {0x1b};
    for (int i = 0; i < 8; i++) {
        t[1 + i] = (uint8_t)(unix_ms >> (56 - 8 * i));
    }
    sim_send(TML_LINK_TIME, t, sizeof(t));
}

static void answer_request(const sim_update_t *u, const uint8_t *msg, size_t len)
{
    /* [pkg, offset, length]: small uints, decoded with the firmware's own reader */
    tml_cbor_reader_t r;
    tml_cbor_item_t a, p, o, l;
    uint8_t reply[1100];
    tml_cbor_reader_init(&r, msg, len);
    if (!u || tml_cbor_read(&r, &a) || tml_cbor_read(&r, &p) || tml_cbor_read(&r, &o) ||
        tml_cbor_read(&r, &l)) {
        return;
    }
    size_t off = (size_t)o.arg, n = (size_t)l.arg;
    if (off > u->transfer_len) {
        return;
    }
    if (n > u->transfer_len - off) {
        n = u->transfer_len - off;
    }
    tml_cbor_writer_t w;
    size_t out;
    tml_cbor_writer_init(&w, reply, sizeof(reply));
    tml_cbor_put_head(&w, TML_CBOR_ARRAY, 3);
    tml_cbor_put_uint(&w, p.arg);
    tml_cbor_put_uint(&w, off);
    tml_cbor_put_bytes(&w, u->transfer + off, n);
    if (tml_cbor_finish(&w, &out) == TML_OK) {
        sim_send(TML_LINK_CHUNK, reply, out);
    }
}

static void gateway(const sim_update_t *u)
{
    static uint8_t copy[sizeof(to_gw)];
    size_t n = to_gw_len, off = 0;
    memcpy(copy, to_gw, n);
    to_gw_len = 0;
    while (off < n) {
        size_t used = 0;
        tml_link_frame_t f;
        if (tml_link_receive(&gw, copy + off, n - off, &used, &f, 0)) {
            sim_seen.frames++;
            if (getenv("SIM_DEBUG")) printf("gw got kind %d seq %d len %zu\n", f.kind, f.seq, f.len);
            switch (f.kind) {
            case TML_LINK_HELLO: /* as the bridge does: the time, at every HELLO */
                sim_seen.hellos++;
                sim_send_time(SIM_TIME_MS);
                break;
            case TML_LINK_EVENTS: sim_seen.events++; break;
            case TML_LINK_STATUS:
                sim_seen.statuses++;
                if (f.len <= sizeof(sim_seen.last_status)) {
                    memcpy(sim_seen.last_status, f.payload, f.len);
                    sim_seen.last_status_len = f.len;
                }
                break;
            case TML_LINK_CHUNK_REQUEST:
                sim_seen.chunk_requests++;
                answer_request(u, f.payload, f.len);
                break;
            case TML_LINK_REPORT: {
                tml_cbor_reader_t r;
                tml_cbor_item_t a, p, s, d;
                tml_cbor_reader_init(&r, f.payload, f.len);
                if (!tml_cbor_read(&r, &a) && !tml_cbor_read(&r, &p) && !tml_cbor_read(&r, &s) &&
                    !tml_cbor_read(&r, &d)) {
                    sim_seen.reports++;
                    sim_seen.last_pkg = (uint32_t)p.arg;
                    sim_seen.last_state = (uint8_t)s.arg;
                    sim_seen.last_detail = (uint16_t)d.arg;
                }
                break;
            }
            default: break;
            }
        }
        off += used;
    }
}

void sim_run(const sim_update_t *u, int steps)
{
    static uint8_t copy[sizeof(to_dev)];
    for (int i = 0; i < steps; i++) {
        tml_device_poll(&sim_device);
        if (to_gw_len) {
            gateway(u);
        }
        if (to_dev_len) {
            size_t n = to_dev_len;
            memcpy(copy, to_dev, n);
            to_dev_len = 0;
            tml_device_input(&sim_device, copy, n);
        } else if (!to_gw_len && tml_device_next_ms(&sim_device) > 0) {
            tml_posix_clock_advance(50); /* nothing to do now: let time pass */
        }
    }
}

static bool final_state(uint8_t s)
{
    return s == TML_STATE_CONFIRMED || s == TML_STATE_FAILED || s == TML_STATE_ROLLED_BACK;
}

void sim_update(const sim_update_t *u)
{
    sim_run(NULL, 20); /* hello and status out first */
    sim_seen.last_state = 0;
    sim_send(TML_LINK_OFFER, u->cose, u->cose_len);
    for (int i = 0; i < 2000 && !tml_posix_flash_dead(); i++) {
        sim_run(u, 10);
        if (sim_seen.last_pkg == u->package_id && final_state(sim_seen.last_state) &&
            !sim_device.report_count && !tml_link_busy(&sim_device.link)) {
            break;
        }
    }
}
