/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file semihost.h
 * @brief Arm semihosting calls (bkpt 0xab), answered by QEMU with -semihosting-config
 *        enable=on,target=native. Without a debugger or QEMU behind it a call faults.
 */
#ifndef TML_SEMIHOST_H
#define TML_SEMIHOST_H

#include <stddef.h>
#include <stdint.h>

/** Semihosting operation numbers (Arm semihosting specification 2.0). */
enum {
    TML_SH_OPEN = 0x01,
    TML_SH_CLOSE = 0x02,
    TML_SH_WRITE0 = 0x04,
    TML_SH_WRITE = 0x05,
    TML_SH_READ = 0x06,
    TML_SH_FLEN = 0x0C,
    TML_SH_GET_CMDLINE = 0x15,
    TML_SH_EXIT_EXTENDED = 0x20,
};

/**
 * @brief Make one semihosting call.
 * @param op a TML_SH_* operation
 * @param arg its parameter block (or string), owned by the caller
 * @return the host's answer in r0
 */
int32_t tml_semihost_call(uint32_t op, void *arg);

/**
 * @brief Write a NUL-terminated string on the host's console (QEMU's stdout).
 * @param text the string
 */
void tml_semihost_print(const char *text);

#endif /* TML_SEMIHOST_H */
