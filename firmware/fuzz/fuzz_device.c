/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The device as a whole (src/device.c) on the posix port with the test-source runner: a
 * sequence of steps from the gateway's side, each followed by the exchange a gateway makes
 * (the device polls, its frames are acknowledged). Input: steps, each an opcode byte and its
 * operands:
 *   0 FRAME  kind, len (u16 le), payload: a well-formed frame (CRC and seq right) for any kind
 *   1 RAW    len (u8), bytes: wire bytes as they are (noise, broken frames)
 *   2 TICK   n: n * 64 ms pass
 *   3 REBOOT a power cycle: RAM is lost, flash stays, the device boots again
 *   4 CUT    n: the power goes at the n-th next flash write or erase (torn); the flash fails
 *            from then on, until a REBOOT
 * Each run starts from erased flash. The device must never break its own invariants.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"
#include "posix_port.h"
#include "tml/device.h"
#include "tml/platform.h"
#include "trusted_keys.h"

static tml_device_t dev;
static tml_link_t gw; /* the gateway's end: acknowledges what the device sends */
static uint8_t to_dev[8192], to_gw[8192];
static size_t to_dev_len, to_gw_len;
static uint8_t gw_seq;
static char flash_path[512];

static void append(uint8_t *buf, size_t *n, size_t cap, const uint8_t *data, size_t len)
{
    if (len > cap - *n) {
        len = cap - *n; /* a full line drops bytes, as a UART overrun */
    }
    memcpy(buf + *n, data, len);
    *n += len;
}

static void dev_write(void *ctx, const uint8_t *data, size_t len)
{
    (void)ctx;
    append(to_gw, &to_gw_len, sizeof(to_gw), data, len);
}

static void gw_write(void *ctx, const uint8_t *data, size_t len)
{
    (void)ctx;
    append(to_dev, &to_dev_len, sizeof(to_dev), data, len);
}

static void remove_flash(void)
{
    unlink(flash_path);
}

static void boot(void)
{
    size_t n;
    const tml_key_t *keys = tml_trusted_keys(&n);
    tml_device_config_t cfg = {"mcu-fuzz", "mps2-an385", tml_runner_test_source(), keys, n, 64};
    to_dev_len = to_gw_len = 0;
    tml_link_init(&gw, gw_write, NULL);
    (void)tml_device_init(&dev, &cfg, dev_write, NULL); /* a dead flash boots to nothing */
}

static void power_cycle(void)
{
    tml_model_runner_t *r = tml_runner_test_source();
    r->unload(r);
    tml_posix_flash_close();
    FUZZ_CHECK(tml_posix_flash_open(flash_path, 64 * 1024, 1024) == TML_OK);
    boot();
}

static void check_invariants(void)
{
    const tml_meta_t *m = &dev.slots.meta;
    FUZZ_CHECK(dev.report_count <= TML_DEVICE_REPORTS);
    FUZZ_CHECK(dev.event_count <= TML_EVENTS_PER_BATCH);
    FUZZ_CHECK(m->rotated_count <= TML_MAX_ROTATED_KEYS);
    FUZZ_CHECK(dev.keyring.count <= TML_MAX_BUILTIN_KEYS + TML_MAX_ROTATED_KEYS);
    FUZZ_CHECK(dev.running == TML_SLOT_NONE || dev.running < 2);
    FUZZ_CHECK(dev.link.rx_len <= sizeof(dev.link.rx));
    FUZZ_CHECK(dev.ota.transfer.received <= dev.ota.manifest.transfer_size ||
               dev.ota.state != TML_OTA_DOWNLOADING);
}

/* The gateway's turn: the device polls; its frames are acknowledged; ACKs go back to it. */
static void exchange(void)
{
    static uint8_t copy[sizeof(to_gw)];
    for (int step = 0; step < 6; step++) {
        tml_device_poll(&dev);
        size_t n = to_gw_len, off = 0;
        memcpy(copy, to_gw, n);
        to_gw_len = 0;
        while (off < n) {
            size_t used = 0;
            tml_link_frame_t f;
            (void)tml_link_receive(&gw, copy + off, n - off, &used, &f, 0);
            FUZZ_CHECK(used > 0 || off == n);
            off += used;
        }
        if (!to_dev_len) {
            break;
        }
        n = to_dev_len;
        memcpy(copy, to_dev, n);
        to_dev_len = 0;
        tml_device_input(&dev, copy, n);
    }
    check_invariants();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        static const uint8_t seed[32] = {0x42};
        const char *tmp = getenv("TMPDIR");
        snprintf(flash_path, sizeof(flash_path), "%s/tml-fuzz-device-%ld.bin",
                 tmp && *tmp ? tmp : "/tmp", (long)getpid());
        atexit(remove_flash);
        tml_posix_seed_set(seed);
        tml_posix_clock_manual(true);
        ready = 1;
    }
    tml_posix_clock_advance(0u - tml_platform_millis()); /* back to 0: runs are repeatable */
    tml_model_runner_t *r = tml_runner_test_source();
    r->unload(r);
    tml_posix_flash_close();
    unlink(flash_path);
    FUZZ_CHECK(tml_posix_flash_open(flash_path, 64 * 1024, 1024) == TML_OK);
    gw_seq = 0;
    boot();
    exchange();

    size_t i = 0;
    while (i < size) {
        uint8_t op = data[i++] % 5;
        if (op == 0 && size - i >= 3) { /* FRAME */
            static uint8_t frame[2 * TML_LINK_RX_BODY + 8];
            uint8_t kind = data[i];
            size_t len = (size_t)data[i + 1] | (size_t)data[i + 2] << 8, n = 0;
            i += 3;
            len %= TML_LINK_MAX_PAYLOAD + 1;
            if (len > size - i) {
                len = size - i;
            }
            FUZZ_CHECK(tml_link_build(kind, gw_seq++, 0, data + i, len, frame, sizeof(frame),
                                      &n) == TML_OK);
            i += len;
            tml_device_input(&dev, frame, n);
        } else if (op == 1 && i < size) { /* RAW */
            size_t len = data[i++];
            if (len > size - i) {
                len = size - i;
            }
            tml_device_input(&dev, data + i, len);
            i += len;
        } else if (op == 2 && i < size) { /* TICK */
            tml_posix_clock_advance(64u * data[i++]);
        } else if (op == 3) { /* REBOOT */
            power_cycle();
        } else if (op == 4 && i < size) { /* CUT */
            tml_posix_flash_cut_after(data[i++] % 8);
        }
        exchange();
    }
    return 0;
}
