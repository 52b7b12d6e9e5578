/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file events.h
 * @brief Encode event batches and window summaries, byte for byte as events.py does.
 *
 *     batch2   = [2, seq - t0, t0, model, n, deltas || labels || scores || latencies]
 *     summary2 = [3, seq - t0, t0, model, window_s, counts, mean_scores, mean_latency]
 *
 * Columns are frame-of-reference bit-packed (CDDL.md "Packed columns") and sent back to back
 * in one byte string. Both kinds send seq as its difference from t0, a CBOR int: 0 (one byte)
 * for a seq numbered from the first event's time (a summary: its window's start) as device.c
 * numbers them. The server still accepts kinds 0 and 1 (the full seq; kind 0 a byte string
 * per column) from older firmware; this firmware never sends them. Encoders refuse what the
 * server's decoder would refuse. Reentrant; no allocation.
 */
#ifndef TML_EVENTS_H
#define TML_EVENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tml/config.h"
#include "tml/status.h"

/** @brief One inference result. */
typedef struct {
    uint64_t t_ms;          /**< unix time, milliseconds */
    uint32_t latency_100us; /**< inference time, 100 us units, <= 600000 */
    uint16_t label;         /**< class index, < 1024 */
    uint8_t score;          /**< top-1 confidence, 0..255 */
} tml_event_t;

/**
 * @brief Encode a batch (kind 2): t0 is the first event's time.
 * @param seq per-device increasing sequence (the server's dedupe key), < 2^63; sent as
 *            seq - t0, so max(t0, previous seq + 1) costs one byte
 * @param model package id of the running model, < 2^31
 * @param events 1..1024 events in time order (owned by the caller)
 * @param n number of events
 * @param out destination buffer (owned by the caller)
 * @param cap its size
 * @param out_len receives the encoded length
 * @return TML_OK, TML_ERR_RANGE for a value the wire refuses, TML_ERR_NOSPACE
 */
tml_status_t tml_events_encode_batch(uint64_t seq, uint32_t model, const tml_event_t *events,
                                     size_t n, uint8_t *out, size_t cap, size_t *out_len);

/**
 * @brief Pack a column as packing.py pack_column does (width byte, LEB128 minimum, LSB-first fields).
 * @param values the column (owned by the caller)
 * @param n number of values (0 gives 00 00)
 * @param out destination
 * @param cap its size
 * @param out_len receives the column's length
 * @return TML_OK or TML_ERR_NOSPACE
 */
tml_status_t tml_events_pack(const uint32_t *values, size_t n, uint8_t *out, size_t cap,
                             size_t *out_len);

/** @brief A window summary being accumulated (events.py summarize()). */
typedef struct {
    uint64_t seq;
    uint64_t t0_ms;
    uint32_t model;
    uint32_t window_s;
    uint16_t num_labels; /**< entries written: max label + 1 seen, or fixed by the caller */
    bool fixed_labels;   /**< num_labels was given: labels at or past it are refused */
    uint32_t counts[TML_SUMMARY_MAX_LABELS];
    uint64_t score_sums[TML_SUMMARY_MAX_LABELS];
    uint64_t latency_sum;
    uint32_t total;
} tml_summary_t;

/**
 * @brief Start a summary of the window [t0_ms, t0_ms + window_s * 1000).
 * @param s the accumulator (owned by the caller)
 * @param seq sequence number of the message, < 2^63; sent as seq - t0_ms, so one numbered
 *            from the window's start, max(t0_ms, previous seq + 1), costs one byte
 * @param t0_ms window start, unix ms
 * @param model package id of the running model
 * @param window_s 1..86400
 * @param num_labels fixed label count (0: max label seen + 1, as summarize(num_labels=None))
 * @return TML_OK or TML_ERR_RANGE
 */
tml_status_t tml_summary_init(tml_summary_t *s, uint64_t seq, uint64_t t0_ms, uint32_t model,
                              uint32_t window_s, uint16_t num_labels);

/**
 * @brief Count one event into the summary.
 * @param s the accumulator
 * @param e the event; it must lie inside the window and its label below the label count
 * @return TML_OK or TML_ERR_RANGE (the event is not counted)
 */
tml_status_t tml_summary_add(tml_summary_t *s, const tml_event_t *e);

/**
 * @brief Encode the summary (kind 3: seq as seq - t0; means rounded half up, as Python's).
 * @param s the accumulator
 * @param out destination
 * @param cap its size
 * @param out_len receives the length
 * @return TML_OK or TML_ERR_NOSPACE
 */
tml_status_t tml_summary_encode(const tml_summary_t *s, uint8_t *out, size_t cap,
                                size_t *out_len);

#endif /* TML_EVENTS_H */
