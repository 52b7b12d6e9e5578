/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Semihosting for the mps2/mps3 images: the call itself, console output, and the port's log
 * hook (TFLM's DebugLog lands on QEMU's stdout, never on UART0, which carries the link).
 */
#include "semihost.h"
#include "tml/platform.h"

int32_t tml_semihost_call(uint32_t op, void *arg)
{
    register uint32_t r0 __asm__("r0") = op;
    register void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return (int32_t)r0;
}

void tml_semihost_print(const char *text)
{
    tml_semihost_call(TML_SH_WRITE0, (void *)text);
}

void tml_platform_log(const char *text)
{
    tml_semihost_print(text);
}
