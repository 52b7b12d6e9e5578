/* SPDX-License-Identifier: Apache-2.0 */
/* Event batches and summaries, byte-identical to device_sdk/protocol/events.py. */
#include "tml/events.h"

#include "tml/cbor.h"
#include "tml/protocol.h"

/* Columns of a batch in wire order (never change), then a plain uint32_t array. */
enum { COL_DELTA, COL_LABEL, COL_SCORE, COL_LATENCY, COL_U32 };

static uint32_t get(const void *src, int col, size_t i)
{
    if (col == COL_U32) {
        return ((const uint32_t *)src)[i];
    }
    const tml_event_t *e = (const tml_event_t *)src + i;
    switch (col) {
    case COL_DELTA:
        return (uint32_t)(e[1].t_ms - e[0].t_ms);
    case COL_LABEL:
        return e->label;
    case COL_SCORE:
        return e->score;
    default:
        return e->latency_100us;
    }
}

/*
 * Write the column raw (width, LEB128 minimum, LSB-first fields) and return its length; with
 * w NULL only measure it, so a batch can size its one byte string before writing into it.
 */
static size_t put_column(tml_cbor_writer_t *w, int col, const void *src, size_t n)
{
    uint32_t lo = 0, hi = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = get(src, col, i);
        if (i == 0 || v < lo) {
            lo = v;
        }
        if (i == 0 || v > hi) {
            hi = v;
        }
    }
    uint8_t width = 0;
    for (uint32_t span = hi - lo; span; span >>= 1) {
        width++;
    }
    uint8_t head[6];
    size_t hn = 0;
    head[hn++] = width;
    uint32_t m = lo;
    while (m >= 0x80) {
        head[hn++] = (uint8_t)(m | 0x80);
        m >>= 7;
    }
    head[hn++] = (uint8_t)m;
    size_t size = hn + (n * width + 7) / 8;
    if (!w) {
        return size;
    }
    tml_cbor_put_raw(w, head, hn);
    uint64_t acc = 0;
    unsigned bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc |= (uint64_t)(get(src, col, i) - lo) << bits;
        bits += width;
        while (bits >= 8) {
            uint8_t b = (uint8_t)acc;
            tml_cbor_put_raw(w, &b, 1);
            acc >>= 8;
            bits -= 8;
        }
    }
    if (bits) {
        uint8_t b = (uint8_t)acc;
        tml_cbor_put_raw(w, &b, 1);
    }
    return size;
}

/*
 * Start a message whose first items are [kind, seq - t0, t0, model], as batches (kind 2) and
 * summaries (kind 3) both are, in an array of `items` items.
 */
static void put_header(tml_cbor_writer_t *w, size_t items, int kind, uint64_t seq, uint64_t t0,
                       uint32_t model)
{
    tml_cbor_put_head(w, TML_CBOR_ARRAY, items);
    tml_cbor_put_uint(w, (uint64_t)kind);
    /* seq - t0 as a CBOR int, 0 for a seq numbered from t0. Both are below 2^63, so the top bit
     * of the wrapped difference d is its sign; below zero, the head is major type 1 with
     * argument -1 - d, which is ~d. */
    uint64_t d = seq - t0;
    uint64_t negative = 0 - (d >> 63); /* all ones below zero, else 0 */
    tml_cbor_put_head(w, (int)(negative & TML_CBOR_NINT), d ^ negative);
    tml_cbor_put_uint(w, t0);
    tml_cbor_put_uint(w, model);
}

tml_status_t tml_events_pack(const uint32_t *values, size_t n, uint8_t *out, size_t cap,
                             size_t *out_len)
{
    tml_cbor_writer_t w;
    tml_cbor_writer_init(&w, out, cap);
    put_column(&w, COL_U32, values, n);
    return tml_cbor_finish(&w, out_len);
}

tml_status_t tml_events_encode_batch(uint64_t seq, uint32_t model, const tml_event_t *ev,
                                     size_t n, uint8_t *out, size_t cap, size_t *out_len)
{
    if (n < 1 || n > TML_MAX_EVENTS_PER_BATCH || seq > (uint64_t)INT64_MAX ||
        model > TML_MAX_MODEL_ID) {
        return TML_ERR_RANGE;
    }
    for (size_t i = 0; i < n; i++) {
        if (ev[i].t_ms < TML_MIN_T0_MS || ev[i].t_ms > TML_MAX_T0_MS ||
            ev[i].label >= TML_MAX_LABELS || ev[i].latency_100us > TML_MAX_LATENCY_100US) {
            return TML_ERR_RANGE;
        }
        if (i && (ev[i].t_ms < ev[i - 1].t_ms || ev[i].t_ms - ev[i - 1].t_ms > TML_MAX_DELTA_MS)) {
            return TML_ERR_RANGE;
        }
    }
    size_t size = 0; /* the four columns back to back, deltas (n - 1 values) first */
    for (int c = COL_DELTA; c <= COL_LATENCY; c++) {
        size += put_column(NULL, c, ev, n - (c == COL_DELTA));
    }
    tml_cbor_writer_t w;
    tml_cbor_writer_init(&w, out, cap);
    put_header(&w, 6, TML_EVENTS_KIND_BATCH2, seq, ev[0].t_ms, model);
    tml_cbor_put_uint(&w, n);
    tml_cbor_put_head(&w, TML_CBOR_BYTES, size);
    for (int c = COL_DELTA; c <= COL_LATENCY; c++) {
        put_column(&w, c, ev, n - (c == COL_DELTA));
    }
    return tml_cbor_finish(&w, out_len);
}

tml_status_t tml_summary_init(tml_summary_t *s, uint64_t seq, uint64_t t0_ms, uint32_t model,
                              uint32_t window_s, uint16_t num_labels)
{
    if (seq > (uint64_t)INT64_MAX || t0_ms < TML_MIN_T0_MS || t0_ms > TML_MAX_T0_MS ||
        model > TML_MAX_MODEL_ID || window_s < 1 || window_s > TML_MAX_WINDOW_S ||
        num_labels > TML_SUMMARY_MAX_LABELS) {
        return TML_ERR_RANGE;
    }
    *s = (tml_summary_t){.seq = seq, .t0_ms = t0_ms, .model = model, .window_s = window_s,
                         .num_labels = num_labels};
    s->fixed_labels = num_labels != 0;
    return TML_OK;
}

tml_status_t tml_summary_add(tml_summary_t *s, const tml_event_t *e)
{
    uint16_t cap = s->fixed_labels ? s->num_labels : TML_SUMMARY_MAX_LABELS;
    if (e->t_ms < s->t0_ms || e->t_ms >= s->t0_ms + (uint64_t)s->window_s * 1000 ||
        e->label >= cap || e->latency_100us > TML_MAX_LATENCY_100US ||
        s->counts[e->label] == UINT32_MAX) {
        return TML_ERR_RANGE;
    }
    if (e->label >= s->num_labels) {
        s->num_labels = (uint16_t)(e->label + 1);
    }
    s->counts[e->label]++;
    s->score_sums[e->label] += e->score;
    s->latency_sum += e->latency_100us;
    s->total++;
    return TML_OK;
}

static uint64_t mean(uint64_t total, uint64_t count)
{
    return count ? (2 * total + count) / (2 * count) : 0;
}

tml_status_t tml_summary_encode(const tml_summary_t *s, uint8_t *out, size_t cap, size_t *out_len)
{
    tml_cbor_writer_t w;
    tml_cbor_writer_init(&w, out, cap);
    put_header(&w, 8, TML_EVENTS_KIND_SUMMARY2, s->seq, s->t0_ms, s->model);
    tml_cbor_put_uint(&w, s->window_s);
    tml_cbor_put_head(&w, TML_CBOR_ARRAY, s->num_labels);
    for (uint16_t i = 0; i < s->num_labels; i++) {
        tml_cbor_put_uint(&w, s->counts[i]);
    }
    tml_cbor_put_head(&w, TML_CBOR_ARRAY, s->num_labels);
    for (uint16_t i = 0; i < s->num_labels; i++) {
        tml_cbor_put_uint(&w, mean(s->score_sums[i], s->counts[i]));
    }
    tml_cbor_put_uint(&w, mean(s->latency_sum, s->total));
    return tml_cbor_finish(&w, out_len);
}
