/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file sim.h
 * @brief A device on the posix port talking to a scripted gateway, for end-to-end tests.
 */
#ifndef TML_SIM_H
#define TML_SIM_H

#include "tml/device.h"

/** @brief One update of tests/vectors/ota.vec. */
typedef struct {
    char name[32];
    uint8_t cose[1024];
    size_t cose_len;
    uint8_t transfer[16384];
    size_t transfer_len;
    uint32_t package_id;
    uint8_t model_sha256[32];
    uint32_t model_size;
    uint8_t state;
    uint16_t reason;
} sim_update_t;

/** @brief What the gateway saw from the device. */
typedef struct {
    uint32_t frames, chunk_requests, reports, statuses, hellos, events;
    uint8_t last_state;
    uint16_t last_detail;
    uint32_t last_pkg;
    uint8_t last_status[512];
    size_t last_status_len;
} sim_seen_t;

extern tml_device_t sim_device;
extern sim_seen_t sim_seen;
/** @brief The runner sim_boot() gives the device (NULL: the test-source fake). */
extern tml_model_runner_t *sim_runner;

/** @brief Load ota.vec; returns how many updates (<= cap). */
size_t sim_load_updates(sim_update_t *u, size_t cap);
/** @brief Load updates in ota.vec's format from another vector file (e.g. trial.vec). */
size_t sim_load_update_file(const char *name, sim_update_t *u, size_t cap);
/** @brief Erase the flash image (delete the file) and open it. */
void sim_flash_fresh(void);
/** @brief Close and reopen the flash image: a power cycle. */
void sim_flash_reopen(void);
/** @brief Boot the device (tml_device_init) and reset the gateway. */
tml_status_t sim_boot(void);
/** @brief The gateway's clock (unix ms, 2026-09-21, after the build time): TIME at HELLO. */
#define SIM_TIME_MS 1790000000000ULL
/** @brief Send TIME (unix ms) from the gateway to the device. */
void sim_send_time(uint64_t unix_ms);
/** @brief Send a frame from the gateway to the device. */
void sim_send(uint8_t kind, const uint8_t *payload, size_t len);
/** @brief Exchange traffic until quiet (or steps run out); serves chunk requests from u. */
void sim_run(const sim_update_t *u, int steps);
/** @brief Offer u and run until it ends (a final report) or the flash dies. */
void sim_update(const sim_update_t *u);

#endif /* TML_SIM_H */
