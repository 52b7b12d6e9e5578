/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file platform.h
 * @brief What a port implements: UART bytes, flash areas, clocks, reboot.
 *
 * Modelled on MCUboot's flash_area_* contract. Flash follows NOR rules: erase sets bytes to
 * 0xFF, a write can only clear bits. Areas are numbered; every offset is relative to its
 * area. The core calls these from thread context only, never from an interrupt.
 */
#ifndef TML_PLATFORM_H
#define TML_PLATFORM_H

#include <stddef.h>
#include <stdint.h>

#include "tml/status.h"

/** @brief Flash areas the core uses. */
typedef enum {
    TML_AREA_META = 0,  /**< two erase sectors: the metadata record's two copies */
    TML_AREA_SLOT0 = 1, /**< model slot A */
    TML_AREA_SLOT1 = 2  /**< model slot B */
} tml_area_t;

/**
 * @brief Send bytes on the UART, blocking until the driver took them all.
 * @param data bytes to send (owned by the caller)
 * @param len number of bytes
 */
void tml_platform_uart_write(const uint8_t *data, size_t len);

/**
 * @brief Take the bytes received so far, without blocking.
 * @param buf where to copy them (owned by the caller)
 * @param cap size of buf
 * @return number of bytes copied, 0 when none is waiting
 */
size_t tml_platform_uart_read(uint8_t *buf, size_t cap);

/**
 * @brief Sleep until a UART byte arrives or timeout_ms passes (wfi on an MCU).
 * @param timeout_ms upper bound of the sleep; 0 returns at once
 */
void tml_platform_wait(uint32_t timeout_ms);

/**
 * @brief Return a monotonic millisecond clock (wraps after 49 days; the core handles it).
 * @return milliseconds since an arbitrary start
 */
uint32_t tml_platform_millis(void);

/**
 * @brief Return the size of a flash area.
 * @param area a tml_area_t
 * @return bytes, 0 for an area the port does not have
 */
uint32_t tml_platform_flash_size(int area);

/**
 * @brief Return the erase unit of a flash area.
 * @param area a tml_area_t
 * @return bytes per erase sector (a power of two that divides the area size)
 */
uint32_t tml_platform_flash_sector(int area);

/**
 * @brief Read bytes of a flash area.
 * @param area a tml_area_t
 * @param offset first byte, relative to the area
 * @param buf destination (owned by the caller)
 * @param len number of bytes
 * @return TML_OK, TML_ERR_ARG past the area's end, TML_ERR_FLASH on a driver error
 */
tml_status_t tml_platform_flash_read(int area, uint32_t offset, void *buf, size_t len);

/**
 * @brief Program bytes into erased flash (NOR: bits can only go from 1 to 0).
 * @param area a tml_area_t
 * @param offset first byte, relative to the area
 * @param data bytes to program (owned by the caller)
 * @param len number of bytes
 * @return TML_OK, TML_ERR_ARG past the area's end, TML_ERR_FLASH on a driver error
 */
tml_status_t tml_platform_flash_write(int area, uint32_t offset, const void *data, size_t len);

/**
 * @brief Erase whole sectors of a flash area to 0xFF.
 * @param area a tml_area_t
 * @param offset first byte, a multiple of the sector size
 * @param len a multiple of the sector size
 * @return TML_OK, TML_ERR_ARG when misaligned or past the end, TML_ERR_FLASH on a driver error
 */
tml_status_t tml_platform_flash_erase(int area, uint32_t offset, size_t len);

/**
 * @brief Return the flash area as memory, for the interpreter to run a model in place.
 * @param area a tml_area_t
 * @return a pointer valid until the next write or erase, or NULL if the port cannot map it
 */
const uint8_t *tml_platform_flash_map(int area);

/**
 * @brief Restart the device. Does not return on hardware; a host port may return.
 */
void tml_platform_reboot(void);

/**
 * @brief Return an estimate of the RAM the application has left (reported in the status).
 * @return bytes
 */
uint32_t tml_platform_free_ram(void);

/**
 * @brief Copy the device's secret Ed25519 seed (RFC 8032, 32 bytes): its identity key. A product
 *        port reads its provisioned secret (OTP, secure element); the QEMU port has one made at
 *        build time (build/gen/device_seed.h), the posix port a file from /dev/urandom.
 * @param seed receives the seed; the core wipes it after use
 * @return TML_OK, or an error when the device has no key (its HELLO then announces none)
 */
tml_status_t tml_platform_device_seed(uint8_t seed[32]);

/*
 * Hooks of the model runner (src/tflm_adapter.cc). Only ports that link the TFLM runner
 * implement them; the core never calls them.
 */

/**
 * @brief Read the sensor's next samples, each a signed reading scaled to -128..127.
 * @param samples where to write count samples (owned by the caller)
 * @param count how many samples the model's input needs
 */
void tml_platform_sensor_read(int8_t *samples, size_t count);

/**
 * @brief Return a monotonic microsecond clock (wraps after 71 minutes), for inference latency.
 * @return microseconds
 */
uint32_t tml_platform_micros(void);

/**
 * @brief Write one line of diagnostic text (TFLM's DebugLog) where the port keeps its logs;
 *        never on the UART, which carries the link. May drop it.
 * @param text a NUL-terminated string
 */
void tml_platform_log(const char *text);

#endif /* TML_PLATFORM_H */
