/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file posix_port.h
 * @brief Host port extras: flash kept in a file, power-cut injection, a settable clock.
 */
#ifndef TML_POSIX_PORT_H
#define TML_POSIX_PORT_H

#include <stdbool.h>
#include <stdint.h>

#include "tml/status.h"

/**
 * @brief Open (or create, erased) the flash image file and load it.
 * @param path image file
 * @param slot_bytes size of each model slot (a multiple of sector)
 * @param sector erase unit of every area
 * @return TML_OK, TML_ERR_ARG (sizes), TML_ERR_FLASH (file)
 */
tml_status_t tml_posix_flash_open(const char *path, uint32_t slot_bytes, uint32_t sector);

/** @brief Close the image file (a "power off"; reopen to "boot"). */
void tml_posix_flash_close(void);

/**
 * @brief Cut the power at the n-th flash write or erase from now: that operation is torn
 *        (only its first half lands) and every later one fails. n < 0 disables.
 * @param n operations to let through before the cut
 */
void tml_posix_flash_cut_after(long n);

/** @brief Return how many writes and erases ran since open. @return count */
long tml_posix_flash_ops(void);

/** @brief Return whether the simulated power is off. @return true after a cut */
bool tml_posix_flash_dead(void);

/** @brief Use a manual clock for tests. @param on true: millis only moves by advance */
void tml_posix_clock_manual(bool on);

/** @brief Advance the manual clock. @param ms milliseconds */
void tml_posix_clock_advance(uint32_t ms);

/** @brief Set the file descriptors the UART uses. @param in read side @param out write side */
void tml_posix_uart_fds(int in, int out);

/**
 * @brief Keep the device's secret Ed25519 seed in this file: read at each use, made from
 *        /dev/urandom (mode 0600) when missing. Without a file or a fixed seed, no key.
 * @param path the seed file (NULL: none)
 */
void tml_posix_seed_file(const char *path);

/** @brief Use a fixed seed (tests). @param seed 32 bytes, copied, or NULL for none */
void tml_posix_seed_set(const uint8_t *seed);

/**
 * @brief On first boot, write a factory model into slot 0 and make it the active model
 *        (package and sequence ``package``); later boots change nothing. Call after
 *        tml_posix_flash_open(), before tml_device_init().
 * @param path the .tflite file
 * @param package its package id (0: none), so events and status name it
 * @return TML_OK, TML_ERR_ARG (unreadable, empty or larger than a slot), TML_ERR_FLASH
 */
tml_status_t tml_posix_factory_adopt(const char *path, uint32_t package);

#endif /* TML_POSIX_PORT_H */
