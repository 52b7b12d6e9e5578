/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Host port: UART over file descriptors (stdin/stdout or a TCP socket), flash areas kept in
 * RAM and written through to one image file with NOR rules, power cuts on demand, a
 * monotonic or manual clock.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "posix_port.h"
#include "tml/platform.h"

#define MAX_SLOT (1024UL * 1024UL)
#define MAX_SECTOR 4096UL

static uint8_t image[2 * MAX_SECTOR + 2 * MAX_SLOT];
static uint32_t slot_size, sector_size;
static int fd = -1;
static long ops, cut_at = -1;
static bool dead;
static int uart_in = 0, uart_out = 1;
static bool manual_clock;
static uint32_t manual_ms;

static uint32_t area_base(int area)
{
    return area == TML_AREA_META ? 0 : 2 * sector_size + (uint32_t)(area - 1) * slot_size;
}

uint32_t tml_platform_flash_size(int area)
{
    if (area == TML_AREA_META) {
        return 2 * sector_size;
    }
    return area == TML_AREA_SLOT0 || area == TML_AREA_SLOT1 ? slot_size : 0;
}

uint32_t tml_platform_flash_sector(int area)
{
    (void)area;
    return sector_size;
}

static bool in_area(int area, uint32_t offset, size_t len)
{
    uint32_t size = tml_platform_flash_size(area);
    return size && offset <= size && len <= size - offset;
}

static tml_status_t persist(uint32_t at, size_t len)
{
    if (pwrite(fd, image + at, len, at) != (ssize_t)len) {
        return TML_ERR_FLASH;
    }
    return TML_OK;
}

tml_status_t tml_posix_flash_open(const char *path, uint32_t slot_bytes, uint32_t sector)
{
    if (!sector || sector > MAX_SECTOR || (sector & (sector - 1)) || slot_bytes % sector ||
        slot_bytes > MAX_SLOT) {
        return TML_ERR_ARG;
    }
    slot_size = slot_bytes;
    sector_size = sector;
    size_t total = 2 * sector + 2 * (size_t)slot_bytes;
    fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0) {
        return TML_ERR_FLASH;
    }
    memset(image, 0xFF, total);
    ssize_t got = pread(fd, image, total, 0);
    if (got < 0) {
        return TML_ERR_FLASH;
    }
    if ((size_t)got < total && persist(0, total) != TML_OK) {
        return TML_ERR_FLASH;
    }
    ops = 0;
    cut_at = -1;
    dead = false;
    return TML_OK;
}

void tml_posix_flash_close(void)
{
    if (fd >= 0) {
        close(fd);
        fd = -1;
    }
}

void tml_posix_flash_cut_after(long n)
{
    cut_at = n < 0 ? -1 : ops + n;
}

long tml_posix_flash_ops(void)
{
    return ops;
}

bool tml_posix_flash_dead(void)
{
    return dead;
}

/* Count an operation; return how many of len bytes land (len, a torn half, or none). */
static size_t power(size_t len)
{
    if (dead) {
        return 0;
    }
    if (cut_at >= 0 && ops == cut_at) {
        dead = true;
        ops++;
        return len / 2;
    }
    ops++;
    return len;
}

tml_status_t tml_platform_flash_read(int area, uint32_t offset, void *buf, size_t len)
{
    if (!in_area(area, offset, len)) {
        return TML_ERR_ARG;
    }
    if (dead) {
        return TML_ERR_FLASH;
    }
    memcpy(buf, image + area_base(area) + offset, len);
    return TML_OK;
}

tml_status_t tml_platform_flash_write(int area, uint32_t offset, const void *data, size_t len)
{
    if (!in_area(area, offset, len)) {
        return TML_ERR_ARG;
    }
    size_t n = power(len);
    uint8_t *p = image + area_base(area) + offset;
    const uint8_t *d = data;
    for (size_t i = 0; i < n; i++) {
        p[i] &= d[i]; /* NOR: programming only clears bits */
    }
    if (n && persist(area_base(area) + offset, n) != TML_OK) {
        return TML_ERR_FLASH;
    }
    return n == len ? TML_OK : TML_ERR_FLASH;
}

tml_status_t tml_platform_flash_erase(int area, uint32_t offset, size_t len)
{
    if (!in_area(area, offset, len) || offset % sector_size || len % sector_size) {
        return TML_ERR_ARG;
    }
    size_t n = power(len);
    memset(image + area_base(area) + offset, 0xFF, n);
    if (n && persist(area_base(area) + offset, n) != TML_OK) {
        return TML_ERR_FLASH;
    }
    return n == len ? TML_OK : TML_ERR_FLASH;
}

const uint8_t *tml_platform_flash_map(int area)
{
    return tml_platform_flash_size(area) ? image + area_base(area) : NULL;
}

void tml_posix_clock_manual(bool on)
{
    manual_clock = on;
}

void tml_posix_clock_advance(uint32_t ms)
{
    manual_ms += ms;
}

uint32_t tml_platform_millis(void)
{
    if (manual_clock) {
        return manual_ms;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000);
}

void tml_posix_uart_fds(int in, int out)
{
    uart_in = in;
    uart_out = out;
}

void tml_platform_uart_write(const uint8_t *data, size_t len)
{
    while (len) {
        ssize_t n = write(uart_out, data, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            exit(0); /* the gateway went away */
        }
        data += n;
        len -= (size_t)n;
    }
}

size_t tml_platform_uart_read(uint8_t *buf, size_t cap)
{
    struct pollfd p = {.fd = uart_in, .events = POLLIN};
    if (poll(&p, 1, 0) <= 0) {
        return 0;
    }
    ssize_t n = read(uart_in, buf, cap);
    if (n == 0) {
        exit(0); /* end of input: the gateway closed the line */
    }
    return n > 0 ? (size_t)n : 0;
}

void tml_platform_wait(uint32_t timeout_ms)
{
    struct pollfd p = {.fd = uart_in, .events = POLLIN};
    (void)poll(&p, 1, timeout_ms > 1000 ? 1000 : (int)timeout_ms);
}

void tml_platform_reboot(void)
{
    exit(3);
}

uint32_t tml_platform_free_ram(void)
{
    return 0;
}
