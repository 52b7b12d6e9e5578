/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Host port: the device's secret Ed25519 seed, in a file of its state (made from /dev/urandom
 * on first boot, mode 0600) or fixed by a test.
 */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

#include "posix_port.h"
#include "tml/platform.h"

static const char *seed_path;
static uint8_t fixed[32];
static bool has_fixed;

void tml_posix_seed_file(const char *path)
{
    seed_path = path;
}

void tml_posix_seed_set(const uint8_t *seed)
{
    has_fixed = seed != NULL;
    if (seed) {
        memcpy(fixed, seed, sizeof(fixed));
    }
}

static bool read_all(int fd, uint8_t *buf, size_t len)
{
    while (len) {
        ssize_t n = read(fd, buf, len);
        if (n <= 0) {
            return false;
        }
        buf += n;
        len -= (size_t)n;
    }
    return true;
}

tml_status_t tml_platform_device_seed(uint8_t seed[32])
{
    if (has_fixed) {
        memcpy(seed, fixed, sizeof(fixed));
        return TML_OK;
    }
    if (!seed_path) {
        return TML_ERR_ARG;
    }
    int fd = open(seed_path, O_RDONLY);
    if (fd < 0) { /* first boot: make the key */
        int rnd = open("/dev/urandom", O_RDONLY);
        bool ok = rnd >= 0 && read_all(rnd, seed, 32);
        if (rnd >= 0) {
            close(rnd);
        }
        fd = ok ? open(seed_path, O_WRONLY | O_CREAT | O_EXCL, 0600) : -1;
        ok = fd >= 0 && write(fd, seed, 32) == 32 && fsync(fd) == 0;
        if (fd >= 0) {
            close(fd);
        }
        if (!ok) {
            return TML_ERR_FLASH;
        }
        fd = open(seed_path, O_RDONLY); /* read back: a racing first boot wins for both */
    }
    bool ok = fd >= 0 && read_all(fd, seed, 32);
    if (fd >= 0) {
        close(fd);
    }
    return ok ? TML_OK : TML_ERR_FLASH;
}
