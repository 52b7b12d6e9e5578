/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The port's hooks for the TFLM runner: a microsecond clock (SysTick's millisecond count plus
 * its current value) and the sensor. The emulated board's sensor is a synthetic signal, as an
 * ADC behind a filter would give it: a sine whose period changes with every read (16 to 47
 * samples), plus a little noise (an LCG), scaled to -128..127. Integer only (a parabolic sine), so the port needs no libm. Deterministic from
 * reset. Not for interrupts.
 */
#include "tml/platform.h"

#define SYST_RVR (*(volatile uint32_t *)0xE000E014UL)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018UL)
#define CYCLES_PER_US 25U /* SYSCLK 25 MHz */

uint32_t tml_platform_micros(void)
{
    uint32_t ms, cvr;
    do { /* a tick between the two reads: read again */
        ms = tml_platform_millis();
        cvr = SYST_CVR;
    } while (ms != tml_platform_millis());
    return ms * 1000U + (SYST_RVR - cvr) / CYCLES_PER_US;
}

static uint32_t phase, step = 2048, noise = 12345;

/* sin(2 pi x / 65536) * 100, for x in 0..65535: two parabolas (Bhaskara-free, error < 6 %). */
static int32_t sine100(uint32_t x)
{
    int32_t half = (int32_t)(x & 0x7FFF);          /* 0..32767 within a half period */
    int32_t y = half * (32768 - half) / 2684355; /* at most 2^28: no overflow; peak 100 */
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
    step = 1400 + (step + 97) % 2700; /* the next window: another frequency */
}
