/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The probe's start-up: vector table, .data/.bss, a SysTick watchdog, and faults turned into
 * exit codes (TFLM below its minimum arena may fault or loop: QEMU must end either way).
 */
#include <stdint.h>

#include "probe.h"

extern uint32_t __data_load, __data_start, __data_end, __bss_start, __bss_end, __stack_top;
extern void (*__init_array_start[])(void), (*__init_array_end[])(void);

int main(void);
void reset_handler(void);
void fault_handler(void);
void systick_handler(void);

#define SYST_CSR (*(volatile uint32_t *)0xE000E010UL)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014UL)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018UL)
#define CPACR (*(volatile uint32_t *)0xE000ED88UL)

__attribute__((section(".vectors"), used)) static void (*const vectors[])(void) = {
    (void (*)(void))(&__stack_top),
    reset_handler,
    fault_handler, /* NMI */
    fault_handler, /* HardFault */
    fault_handler, /* MemManage */
    fault_handler, /* BusFault */
    fault_handler, /* UsageFault */
    0, 0, 0, 0,
    fault_handler, /* SVCall */
    fault_handler, /* DebugMon */
    0,
    fault_handler, /* PendSV */
    systick_handler,
};

static volatile uint32_t ticks, limit_ms;

void reset_handler(void)
{
#if defined(__ARM_FP)
    CPACR |= 0xFU << 20; /* the hard-float build (Cortex-M55) uses the FPU / MVE */
    __asm__ volatile("dsb\n isb");
#endif
    uint32_t *src = &__data_load, *dst = &__data_start;
    while (dst < &__data_end) {
        *dst++ = *src++;
    }
    for (dst = &__bss_start; dst < &__bss_end; dst++) {
        *dst = 0;
    }
    for (void (**f)(void) = __init_array_start; f < __init_array_end; f++) {
        (*f)();
    }
    tml_probe_exit(main());
}

void tml_probe_watchdog(uint32_t ms)
{
    limit_ms = ms;
    ticks = 0;
    SYST_RVR = 25000000UL / 1000 - 1; /* 1 kHz at the boards' 25 MHz system clock */
    SYST_CVR = 0;
    SYST_CSR = 7;
}

void systick_handler(void)
{
    if (++ticks >= limit_ms) {
        tml_probe_print("probe: fail timeout\n");
        tml_probe_exit(PROBE_TIMEOUT);
    }
}

void fault_handler(void)
{
    tml_probe_print("probe: fail fault\n");
    tml_probe_exit(PROBE_FAULT);
}

__attribute__((noinline)) void tml_probe_marker(int which)
{
    __asm__ volatile("" : : "r"(which) : "memory");
}

/* No heap: newlib's snprintf may ask for one; it gets nothing. */
void *_sbrk(int increment)
{
    (void)increment;
    return (void *)-1;
}
