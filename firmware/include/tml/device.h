/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file device.h
 * @brief The device loop: boot, link messages, OTA with trial/confirm/revert, inference events.
 *
 * One tml_device_t holds every byte of state the core needs (the port allocates it
 * statically). A port calls tml_device_init() once and tml_device_poll() forever, sleeping
 * tml_device_next_ms() between calls (or until a UART byte arrives). Not reentrant.
 */
#ifndef TML_DEVICE_H
#define TML_DEVICE_H

#include <stdbool.h>
#include <stdint.h>

#include "tml/config.h"
#include "tml/events.h"
#include "tml/link.h"
#include "tml/manifest.h"
#include "tml/ota.h"
#include "tml/runner.h"
#include "tml/slots.h"

#define TML_DEVICE_REPORTS 8 /**< reports queued while the link is busy */

/** @brief What the port tells the core. */
typedef struct {
    const char *uid;              /**< device id (HELLO) */
    const char *hardware_profile; /**< manifests for another profile are refused */
    tml_model_runner_t *runner;
    const tml_key_t *builtin_keys; /**< keys compiled in (owned by the port, static) */
    size_t builtin_count;
    uint8_t pointer_bits; /**< 32 on a Cortex-M, 64 on a host */
} tml_device_config_t;

/** @brief A report waiting for the link. */
typedef struct {
    uint32_t pkg;
    uint16_t detail;
    uint8_t state;
} tml_report_t;

/** @brief The whole device. */
typedef struct {
    tml_device_config_t cfg;
    tml_link_t link;
    tml_slots_t slots;
    tml_ota_t ota;
    const tml_key_t *keys[TML_MAX_BUILTIN_KEYS + TML_MAX_ROTATED_KEYS]; /**< the keyring's */
    tml_keyring_t keyring; /**< built-in keys not retired, then rotated ones (in slots.meta) */
    /* Widest fields first: no padding holes (static RAM is a goal). */
    uint64_t time_base_ms; /**< unix ms at tick time_base_tick */
    uint64_t uptime_ms;
    uint64_t last_seq; /**< events message sequence (unix ms based, strictly increasing) */
    tml_event_t events[TML_EVENTS_PER_BATCH];
    tml_report_t reports[TML_DEVICE_REPORTS];
    uint32_t time_base_tick;
    uint32_t uptime_tick;
    uint32_t batch_model; /**< package id the held events came from */
    uint32_t last_infer, request_at, batch_started;
    uint32_t events_dropped;
    uint32_t inferences;
    uint16_t event_count;
    uint8_t running; /**< slot whose model is loaded, or TML_SLOT_NONE */
    bool hello_due, status_due, request_due;
    bool proof_due; /**< an ENROLL_PROOF is due: its signature is in ota.transfer's memory */
    bool time_synced;
    uint8_t request_retries;
    uint8_t report_count;
} tml_device_t;

/**
 * @brief Boot: load the metadata, resolve a trial, load the model to run, queue HELLO and STATUS.
 * @param d the device (owned by the port)
 * @param cfg configuration, copied
 * @param write where link frames go
 * @param write_ctx passed to write
 * @return TML_OK or TML_ERR_FLASH
 */
tml_status_t tml_device_init(tml_device_t *d, const tml_device_config_t *cfg, tml_write_fn write,
                             void *write_ctx);

/**
 * @brief Handle received UART bytes: frames, offers, chunks, time.
 * @param d the device
 * @param data bytes (owned by the caller)
 * @param len count
 */
void tml_device_input(tml_device_t *d, const uint8_t *data, size_t len);

/**
 * @brief Run timers: retransmissions, chunk requests, inference, batches; send what is due.
 * @param d the device
 */
void tml_device_poll(tml_device_t *d);

/**
 * @brief Return ms until tml_device_poll() has work, for the port's sleep.
 * @param d the device
 * @return milliseconds (0: now)
 */
uint32_t tml_device_next_ms(const tml_device_t *d);

/**
 * @brief Return the device's unix time in ms (0 until the gateway sent TIME).
 * @param d the device
 * @return unix milliseconds
 */
uint64_t tml_device_unix_ms(const tml_device_t *d);

#endif /* TML_DEVICE_H */
