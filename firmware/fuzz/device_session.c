/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A device on the posix port (test-source runner, built-in test keys) and the gateway's end of
 * its link, for the harnesses that go through the device (fuzz_device, fuzz_rotation).
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"
#include "posix_port.h"
#include "tml/platform.h"
#include "trusted_keys.h"

tml_device_t fuzz_dev;
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

/* libFuzzer ends its runs with _Exit (no atexit): remove the images of processes now gone. */
static void remove_stale_images(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        long pid;
        char path[512];
        if (sscanf(e->d_name, "tml-fuzz-device-%ld.bin", &pid) == 1 && pid > 0 &&
            kill((pid_t)pid, 0) != 0 && errno == ESRCH) {
            snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
            unlink(path);
        }
    }
    if (d) {
        closedir(d);
    }
}

static void boot(void)
{
    size_t n;
    const tml_key_t *keys = tml_trusted_keys(&n);
    tml_device_config_t cfg = {"mcu-fuzz", "mps2-an385", tml_runner_test_source(), keys, n, 64};
    to_dev_len = to_gw_len = 0;
    tml_link_init(&gw, gw_write, NULL);
    (void)tml_device_init(&fuzz_dev, &cfg, dev_write, NULL); /* a dead flash boots to nothing */
}

static void power_off(void)
{
    tml_model_runner_t *r = tml_runner_test_source();
    r->unload(r);
    tml_posix_flash_close();
}

void fuzz_device_fresh(void)
{
    static int ready;
    if (!ready) {
        static const uint8_t seed[32] = {0x42};
        /* In RAM where there is a tmpfs: the image is rewritten at every run. */
        const char *tmp = getenv("TMPDIR");
        const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : tmp && *tmp ? tmp : "/tmp";
        snprintf(flash_path, sizeof(flash_path), "%s/tml-fuzz-device-%ld.bin", dir,
                 (long)getpid());
        remove_stale_images(dir);
        atexit(remove_flash);
        tml_posix_seed_set(seed);
        tml_posix_clock_manual(true);
        ready = 1;
    }
    tml_posix_clock_advance(0u - tml_platform_millis()); /* back to 0: runs are repeatable */
    power_off();
    unlink(flash_path);
    FUZZ_CHECK(tml_posix_flash_open(flash_path, 64 * 1024, 1024) == TML_OK);
    gw_seq = 0;
    boot();
    fuzz_device_exchange();
}

void fuzz_device_power_cycle(void)
{
    power_off();
    FUZZ_CHECK(tml_posix_flash_open(flash_path, 64 * 1024, 1024) == TML_OK);
    boot();
}

void fuzz_device_frame(uint8_t kind, const uint8_t *payload, size_t len)
{
    static uint8_t frame[2 * TML_LINK_RX_BODY + 8];
    size_t n = 0;
    FUZZ_CHECK(tml_link_build(kind, gw_seq++, 0, payload, len, frame, sizeof(frame), &n) ==
               TML_OK);
    tml_device_input(&fuzz_dev, frame, n);
}

void fuzz_device_check(void)
{
    const tml_device_t *d = &fuzz_dev;
    const tml_meta_t *m = &d->slots.meta;
    FUZZ_CHECK(d->report_count <= TML_DEVICE_REPORTS);
    FUZZ_CHECK(d->event_count <= TML_EVENTS_PER_BATCH);
    FUZZ_CHECK(m->rotated_count <= TML_MAX_ROTATED_KEYS);
    FUZZ_CHECK(d->keyring.count <= TML_MAX_BUILTIN_KEYS + TML_MAX_ROTATED_KEYS);
    FUZZ_CHECK(d->running == TML_SLOT_NONE || d->running < 2);
    FUZZ_CHECK(d->link.rx_len <= sizeof(d->link.rx));
    FUZZ_CHECK(d->ota.transfer.received <= d->ota.manifest.transfer_size ||
               d->ota.state != TML_OTA_DOWNLOADING);
}

void fuzz_device_exchange(void)
{
    static uint8_t copy[sizeof(to_gw)];
    for (int step = 0; step < 6; step++) {
        tml_device_poll(&fuzz_dev);
        size_t n = to_gw_len, off = 0;
        memcpy(copy, to_gw, n);
        to_gw_len = 0;
        while (off < n) {
            size_t used = 0;
            tml_link_frame_t f;
            (void)tml_link_receive(&gw, copy + off, n - off, &used, &f, 0);
            FUZZ_CHECK(used > 0);
            off += used;
        }
        if (!to_dev_len) {
            break;
        }
        n = to_dev_len;
        memcpy(copy, to_dev, n);
        to_dev_len = 0;
        tml_device_input(&fuzz_dev, copy, n);
    }
    fuzz_device_check();
}
