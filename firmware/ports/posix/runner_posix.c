/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The posix port's hooks for the TFLM runner (linked into the posix device, tml-device, and
 * the host TFLM tests, make test-tflm): a microsecond clock, TFLM's log on stderr (when TML_LOG is set), and the same
 * synthetic sensor as ports/qemu-mps2/runner_port.c (a sine whose period changes with every
 * read, plus LCG noise; deterministic from start), so host and board see the same inputs.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "tml/platform.h"

uint32_t tml_platform_micros(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000000U + (uint64_t)ts.tv_nsec / 1000U);
}

void tml_platform_log(const char *text)
{
    if (getenv("TML_LOG")) {
        fprintf(stderr, "%s\n", text);
    }
}

static uint32_t phase, step = 2048, noise = 12345;

static int32_t sine100(uint32_t x)
{
    int32_t half = (int32_t)(x & 0x7FFF);
    int32_t y = half * (32768 - half) / 2684355;
    return x & 0x8000 ? -y : y;
}

void tml_platform_sensor_read(int8_t *samples, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        noise = noise * 1664525UL + 1013904223UL;
        int32_t v = sine100(phase) + (int32_t)(noise >> 27) - 16;
        phase = (phase + step) & 0xFFFF;
        samples[i] = (int8_t)(v > 127 ? 127 : v < -128 ? -128 : v);
    }
    step = 1400 + (step + 97) % 2700;
}
