/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file probe.h
 * @brief The arena probe: exit codes (wire values for ota/validation/qemu_probe.py: never
 *        renumber) and the start-up's services.
 */
#ifndef TML_PROBE_H
#define TML_PROBE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    PROBE_OK = 0,           /**< AllocateTensors (and the invokes asked for) succeeded */
    PROBE_ALLOCATE = 1,     /**< AllocateTensors failed (arena too small, op missing, ...) */
    PROBE_INVOKE = 2,       /**< Invoke failed */
    PROBE_TIMEOUT = 3,      /**< the SysTick watchdog fired */
    PROBE_FAULT = 4,        /**< a CPU fault */
    PROBE_USAGE = 5,        /**< bad command line, or a file could not be read or written */
    PROBE_MODEL = 6,        /**< the model does not verify as a TFLite flatbuffer */
    PROBE_NO_ROOM = 7,      /**< model + arena exceed the board's RAM pool */
};

/** @brief Print a string on QEMU's stdout (semihosting). @param text NUL-terminated */
void tml_probe_print(const char *text);

/** @brief End QEMU with an exit code (semihosting SYS_EXIT_EXTENDED). @param code 0..255 */
void tml_probe_exit(int code) __attribute__((noreturn));

/** @brief Start the SysTick watchdog: exit with PROBE_TIMEOUT after ms of guest time. */
void tml_probe_watchdog(uint32_t ms);

/**
 * @brief Mark the start (1) and end (2) of one Invoke for the instruction-counting QEMU plugin
 *        (bench/qemu_insn.c watches this function's address). Does nothing else.
 */
void tml_probe_marker(int which);

#ifdef __cplusplus
}
#endif

#endif /* TML_PROBE_H */
