/* SPDX-License-Identifier: Apache-2.0 */
/*
 * mps2-an385 port: CMSDK UART0 at 0x40004000 with an RX interrupt into a ring buffer (the
 * interrupt is masked while the ring is full, so the emulated line applies back-pressure
 * instead of dropping bytes), SysTick at 1 kHz, wfi between events, and "flash" areas in the
 * code SSRAM programmed with NOR rules.
 */
#include <stdint.h>
#include <string.h>

#include "device_seed.h" /* build/gen: made per build folder, never committed */
#include "mps2.h"
#include "tml/platform.h"

#define UART0 0x40004000UL
#define UART_DATA (*(volatile uint32_t *)(UART0 + 0x00))
#define UART_STATE (*(volatile uint32_t *)(UART0 + 0x04))
#define UART_CTRL (*(volatile uint32_t *)(UART0 + 0x08))
#define UART_INTCLEAR (*(volatile uint32_t *)(UART0 + 0x0C))
#define UART_BAUDDIV (*(volatile uint32_t *)(UART0 + 0x10))
#define STATE_TX_FULL 1U
#define STATE_RX_FULL 2U
#define CTRL_TX_EN 1U
#define CTRL_RX_EN 2U
#define CTRL_RX_INT 8U
#define INT_RX 2U

#define SYST_CSR (*(volatile uint32_t *)0xE000E010UL)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014UL)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018UL)
#define NVIC_ISER0 (*(volatile uint32_t *)0xE000E100UL)
#define SCB_AIRCR (*(volatile uint32_t *)0xE000ED0CUL)
#define SYSCLK_HZ 25000000UL

#define SECTOR 4096UL
#define SLOT_BYTES (128UL * 1024UL)
#define RING 256U

extern uint8_t __meta_start[], __slot0_start[], __slot1_start[];
extern uint8_t __bss_end[], __stack_bottom[], __stack_top[];

static volatile uint8_t ring[RING];
static volatile uint32_t head, tail; /* head: written by the interrupt; tail: by thread code */
static volatile uint32_t ticks;

void systick_handler(void)
{
    ticks++;
}

void uart0_rx_handler(void)
{
    UART_INTCLEAR = INT_RX;
    while ((UART_STATE & STATE_RX_FULL) && head - tail < RING) {
        ring[head % RING] = (uint8_t)UART_DATA;
        head++;
    }
    if (head - tail >= RING) {
        UART_CTRL &= ~CTRL_RX_INT; /* full: let the line wait until the thread drains it */
    }
}

void tml_mps2_init(void)
{
    UART_BAUDDIV = 16;
    UART_CTRL = CTRL_TX_EN | CTRL_RX_EN | CTRL_RX_INT;
    (void)UART_DATA; /* a dummy read: otherwise the first byte stalls about a second */
    UART_INTCLEAR = 0xF;
    NVIC_ISER0 = 1U << 0; /* IRQ 0: UART0 RX */
    SYST_RVR = SYSCLK_HZ / 1000 - 1;
    SYST_CVR = 0;
    SYST_CSR = 7; /* processor clock, interrupt, enable */
}

void tml_platform_uart_write(const uint8_t *data, size_t len)
{
    while (len--) {
        while (UART_STATE & STATE_TX_FULL) {
        }
        UART_DATA = *data++;
    }
}

size_t tml_platform_uart_read(uint8_t *buf, size_t cap)
{
    size_t n = 0;
    while (n < cap && tail != head) {
        buf[n++] = ring[tail % RING];
        tail++;
    }
    if (n) {
        /* Room again. A byte that arrived while the interrupt was off raised none (the UART
         * flags RX interrupts on arrival only) and holds the line: take it now. */
        __asm__ volatile("cpsid i" ::: "memory");
        UART_CTRL |= CTRL_RX_INT;
        uart0_rx_handler();
        __asm__ volatile("cpsie i" ::: "memory");
    }
    return n;
}

void tml_platform_wait(uint32_t timeout_ms)
{
    uint32_t start = ticks;
    while (head == tail && ticks - start < timeout_ms) {
        __asm__ volatile("wfi"); /* woken by the RX interrupt or the next tick */
    }
}

uint32_t tml_platform_millis(void)
{
    return ticks;
}

static uint8_t *area_base(int area)
{
    return area == TML_AREA_META ? __meta_start : area == TML_AREA_SLOT0 ? __slot0_start
                                                                        : __slot1_start;
}

uint32_t tml_platform_flash_size(int area)
{
    return area == TML_AREA_META ? 2 * SECTOR
           : area == TML_AREA_SLOT0 || area == TML_AREA_SLOT1 ? SLOT_BYTES
                                                               : 0;
}

uint32_t tml_platform_flash_sector(int area)
{
    (void)area;
    return SECTOR;
}

/* Where [offset, offset + len) of an area is, or NULL when it is not inside the area. */
static uint8_t *area_at(int area, uint32_t offset, size_t len)
{
    uint32_t size = tml_platform_flash_size(area);
    return size && offset <= size && len <= size - offset ? area_base(area) + offset : NULL;
}

tml_status_t tml_platform_flash_read(int area, uint32_t offset, void *buf, size_t len)
{
    const uint8_t *p = area_at(area, offset, len);
    if (!p) {
        return TML_ERR_ARG;
    }
    memcpy(buf, p, len);
    return TML_OK;
}

tml_status_t tml_platform_flash_write(int area, uint32_t offset, const void *data, size_t len)
{
    uint8_t *p = area_at(area, offset, len);
    const uint8_t *d = data;
    if (!p) {
        return TML_ERR_ARG;
    }
    for (size_t i = 0; i < len; i++) {
        p[i] &= d[i];
    }
    return TML_OK;
}

tml_status_t tml_platform_flash_erase(int area, uint32_t offset, size_t len)
{
    uint8_t *p = area_at(area, offset, len);
    if (!p || offset % SECTOR || len % SECTOR) {
        return TML_ERR_ARG;
    }
    memset(p, 0xFF, len);
    return TML_OK;
}

const uint8_t *tml_platform_flash_map(int area)
{
    return area_base(area);
}

void tml_platform_reboot(void)
{
    SCB_AIRCR = 0x05FA0004UL; /* SYSRESETREQ */
    for (;;) {
    }
}

tml_status_t tml_platform_device_seed(uint8_t seed[32])
{
    /* A product port would read its provisioned secret (OTP, a secure element) here. */
    static const uint8_t device_seed[32] = TML_DEVICE_SEED;
    memcpy(seed, device_seed, sizeof(device_seed));
    return TML_OK;
}

uint32_t tml_platform_free_ram(void)
{
    /* RAM above the stack's high-water mark and the statically allocated data. */
    return (uint32_t)(__stack_top - __stack_bottom) - tml_mps2_stack_peak() +
           (uint32_t)(0x20010000UL - (uintptr_t)__stack_top);
}

void tml_mps2_exit(int code)
{
    /* Semihosting SYS_EXIT_EXTENDED: QEMU exits with `code` (needs -semihosting-config). */
    static uint32_t block[2];
    block[0] = 0x20026; /* ADP_Stopped_ApplicationExit */
    block[1] = (uint32_t)code;
    register uint32_t r0 __asm__("r0") = 0x20;
    register uint32_t *r1 __asm__("r1") = block;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    for (;;) {
    }
}
