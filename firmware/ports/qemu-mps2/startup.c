/* SPDX-License-Identifier: Apache-2.0 */
/* Cortex-M3 start-up: vector table, .data/.bss set-up, stack painting, then main(). */
#include <stdint.h>
#include <string.h>

extern uint32_t __data_load, __data_start, __data_end, __bss_start, __bss_end;
extern uint32_t __stack_bottom, __stack_top;

int main(void);
void reset_handler(void);
void default_handler(void);
void uart0_rx_handler(void);
void systick_handler(void);

#define STACK_PAINT 0xA5A5A5A5UL

__attribute__((section(".vectors"), used)) static void (*const vectors[])(void) = {
    (void (*)(void))(&__stack_top),
    reset_handler,
    default_handler, /* NMI */
    default_handler, /* HardFault */
    default_handler, /* MemManage */
    default_handler, /* BusFault */
    default_handler, /* UsageFault */
    0, 0, 0, 0,
    default_handler, /* SVCall */
    default_handler, /* DebugMon */
    0,
    default_handler, /* PendSV */
    systick_handler,
    uart0_rx_handler, /* IRQ 0: UART0 RX */
    default_handler,  /* IRQ 1: UART0 TX */
};

void reset_handler(void)
{
    uint32_t *src = &__data_load, *dst = &__data_start;
    while (dst < &__data_end) {
        *dst++ = *src++;
    }
    for (dst = &__bss_start; dst < &__bss_end; dst++) {
        *dst = 0;
    }
    /* Paint the stack below the current frame so its high-water mark can be measured. */
    uintptr_t sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (dst = &__stack_bottom; (uintptr_t)dst < sp - 256; dst++) {
        *dst = STACK_PAINT;
    }
    (void)main();
    for (;;) {
    }
}

void default_handler(void)
{
    for (;;) {
    }
}

uint32_t tml_mps2_stack_peak(void)
{
    uint32_t *p = &__stack_bottom;
    while (p < &__stack_top && *p == STACK_PAINT) {
        p++;
    }
    return (uint32_t)((uintptr_t)&__stack_top - (uintptr_t)p);
}
