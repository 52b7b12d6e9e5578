/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file config.h
 * @brief Build-time configuration: every tunable of the firmware, with its default.
 *
 * Override with -D on the compiler command line (or a port's Makefile). The static
 * assertions at the end refuse combinations that cannot work.
 */
#ifndef TML_CONFIG_H
#define TML_CONFIG_H

#include "tml/protocol.h"

/** Firmware version reported in the status capabilities (1..64 printable bytes). */
#ifndef TML_FIRMWARE_VERSION
#define TML_FIRMWARE_VERSION "tml-fw 0.1.0"
#endif

/** Hardware profile name this build is for; manifests for another profile are refused. */
#ifndef TML_HARDWARE_PROFILE
#define TML_HARDWARE_PROFILE "host"
#endif

/** Device id the build uses when the port gives none (1..64 of [A-Za-z0-9_-]). */
#ifndef TML_DEVICE_UID
#define TML_DEVICE_UID "mcu-0001"
#endif

/** Tensor arena bytes compiled into the firmware (manifest key 12 is checked against it). */
#ifndef TML_ARENA_BYTES
#define TML_ARENA_BYTES 16384
#endif

/** Largest link payload the device receives: bounds a chunk and the offer (manifest). */
#ifndef TML_LINK_MAX_PAYLOAD
#define TML_LINK_MAX_PAYLOAD 544
#endif

/** Largest link payload the device sends (status, event batch, requests, reports). */
#ifndef TML_LINK_TX_MAX_PAYLOAD
#define TML_LINK_TX_MAX_PAYLOAD 384
#endif

/** Milliseconds before an unacknowledged frame is sent again (doubles up to 8x). */
#ifndef TML_LINK_RTO_MS
#define TML_LINK_RTO_MS 250
#endif

/** Data bytes the device asks for in one chunk request. */
#ifndef TML_OTA_CHUNK_BYTES
#define TML_OTA_CHUNK_BYTES 512
#endif

/** Milliseconds without the requested chunk before the request is repeated. */
#ifndef TML_OTA_CHUNK_TIMEOUT_MS
#define TML_OTA_CHUNK_TIMEOUT_MS 3000
#endif

/** Repeated chunk requests without an answer before the download fails with TIMEOUT. */
#ifndef TML_OTA_MAX_RETRIES
#define TML_OTA_MAX_RETRIES 10
#endif

/** Bytes of decoded model staged in RAM before one flash write (a multiple of the flash's
 *  program unit). */
#ifndef TML_OTA_WRITE_BUF
#define TML_OTA_WRITE_BUF 128
#endif

/** Largest compressed-stream window (TRANSFER.md: window_log 8..11). */
#ifndef TML_LZ_MAX_WINDOW_LOG
#define TML_LZ_MAX_WINDOW_LOG 11
#endif

/** Input bytes the compressed-stream decoder buffers (a token needs at most 32). */
#ifndef TML_LZ_INBUF
#define TML_LZ_INBUF 48
#endif

/** Keys a rotation can add to the built-in ones (persisted in the metadata area). */
#ifndef TML_MAX_ROTATED_KEYS
#define TML_MAX_ROTATED_KEYS 2
#endif

/** Built-in keys a rotation may retire (a bit each in the metadata). */
#ifndef TML_MAX_BUILTIN_KEYS
#define TML_MAX_BUILTIN_KEYS 4
#endif

/** Retired key ids of rotated keys the device remembers and refuses as new keys (built-in keys
 * have a bit each, never forgotten). The oldest is forgotten first: then only a new record
 * signed by a key trusted now can bring it back (trust.h). */
#ifndef TML_MAX_RETIRED_KIDS
#define TML_MAX_RETIRED_KIDS 4
#endif

/** Revoked package ids (policy key 32) the device keeps, the newest (the SDK keeps 16). */
#ifndef TML_MAX_REVOKED_PACKAGES
#define TML_MAX_REVOKED_PACKAGES 8
#endif

/** Events held in RAM before a batch is sent. */
#ifndef TML_EVENTS_PER_BATCH
#define TML_EVENTS_PER_BATCH 32
#endif

/** A batch is sent once its first event is this old, even if not full. */
#ifndef TML_BATCH_MAX_AGE_MS
#define TML_BATCH_MAX_AGE_MS 10000
#endif

/** Milliseconds between two inferences of the device loop. */
#ifndef TML_INFER_PERIOD_MS
#define TML_INFER_PERIOD_MS 1000
#endif

/**
 * Events sequences reserved per metadata save (milliseconds, as sequences follow the clock).
 * The device persists a floor: after a reboot it numbers batches from it, so it never reuses
 * a seq the server stored. Larger: fewer flash erases (about one per this many ms of events);
 * smaller: a seq closer to its batch's t0 after a reboot (fewer wire bytes until caught up).
 */
#ifndef TML_SEQ_RESERVE_MS
#define TML_SEQ_RESERVE_MS 3600000ULL /* one hour: ~8760 saves a year over two sectors */
#endif

/** Labels a summary accumulator counts (index = label). */
#ifndef TML_SUMMARY_MAX_LABELS
#define TML_SUMMARY_MAX_LABELS 16
#endif

/** Inferences a trial must run without error before the new model is confirmed. */
#ifndef TML_TRIAL_INFERENCES
#define TML_TRIAL_INFERENCES 3
#endif

/** Unix seconds never earlier than the build: the device's clock before the gateway's TIME. */
#ifndef TML_BUILD_UNIX_TIME
#define TML_BUILD_UNIX_TIME 1767225600ULL /* 2026-01-01 */
#endif

/** A TIME that raises the clock floor by this many seconds is saved at once (else with the
 * next metadata save): at most one flash erase a day for the clock. */
#ifndef TML_TIME_FLOOR_SAVE_S
#define TML_TIME_FLOOR_SAVE_S 86400UL
#endif

/* C11's _Static_assert (a GCC/Clang extension in C99 mode); static_assert for the C++ adapter. */
#ifdef __cplusplus
#define TML_STATIC_ASSERT(cond, why) static_assert(cond, why)
#else
#define TML_STATIC_ASSERT(cond, why) _Static_assert(cond, why)
#endif

TML_STATIC_ASSERT(TML_LINK_MAX_PAYLOAD >= TML_OTA_CHUNK_BYTES + 16,
               "a chunk message ([pkg, offset, data]) must fit one link frame");
TML_STATIC_ASSERT(TML_LINK_MAX_PAYLOAD <= 4096, "the link length field and RAM budget");
TML_STATIC_ASSERT(TML_SEQ_RESERVE_MS >= 1000ULL, "a save per batch would wear the flash out");
TML_STATIC_ASSERT(TML_LINK_TX_MAX_PAYLOAD >= 64, "requests and reports need 32 bytes");
TML_STATIC_ASSERT(TML_OTA_CHUNK_BYTES >= 16 && TML_OTA_CHUNK_BYTES <= TML_MAX_CHUNK_BYTES,
               "chunk requests ask for 1..32768 bytes");
TML_STATIC_ASSERT(TML_OTA_WRITE_BUF >= 16 && (TML_OTA_WRITE_BUF & (TML_OTA_WRITE_BUF - 1)) == 0,
               "the flash staging buffer is a power of two");
TML_STATIC_ASSERT(TML_LZ_MAX_WINDOW_LOG >= 8 && TML_LZ_MAX_WINDOW_LOG <= 11,
               "TRANSFER.md: this decoder accepts window_log 8..11");
TML_STATIC_ASSERT(TML_LZ_INBUF > 32 && TML_LZ_INBUF <= 255, "a token reads at most 27 bytes");
TML_STATIC_ASSERT(TML_EVENTS_PER_BATCH >= 1 && TML_EVENTS_PER_BATCH <= TML_MAX_EVENTS_PER_BATCH,
               "limits.py MAX_EVENTS_PER_BATCH");
TML_STATIC_ASSERT(TML_SUMMARY_MAX_LABELS >= 1 && TML_SUMMARY_MAX_LABELS <= TML_MAX_LABELS,
               "limits.py MAX_LABELS");
TML_STATIC_ASSERT(TML_MAX_ROTATED_KEYS >= 1 && TML_MAX_BUILTIN_KEYS <= 8, "metadata layout");
TML_STATIC_ASSERT(TML_TRIAL_INFERENCES >= 1, "a trial runs the model at least once");
TML_STATIC_ASSERT(TML_MAX_TRIAL_INPUTS <= 15,
               "tml_manifest_t keeps key 15's max_label_mismatches in 4 bits");

#endif /* TML_CONFIG_H */
