/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Streaming decoder of transfer encoding 1 ("TZ": LZ77 tokens, LZMA's adaptive binary range
 * coder), following device_sdk/protocol/transfer/lz_decoder.py step by step. A token starts
 * only when 32 input bytes are buffered (or the input is final), so the decoder never stops
 * inside one and keeps fewer than TML_LZ_INBUF input bytes between calls.
 */
#include <string.h>

#include "tml/transfer.h"

enum { STAGE_HEADER, STAGE_START, STAGE_TOKENS, STAGE_DONE };

#define HEADER_BYTES 8
#define LOOKAHEAD 32
#define TOP (1UL << 24)
#define PROB_BITS 11
#define PROB_ONE (1U << PROB_BITS)
#define MOVE_BITS 5
#define DIST_LOW_BITS 6
#define MIN_MATCH 2

/* Probability tables, in TRANSFER.md's "Models" order, as offsets into the prob array. */
typedef struct {
    uint16_t *is_match, *is_rep, *len_choice, *len_low, *len_mid, *len_high, *dist_high,
        *dist_low, *literal;
} models_t;

static uint32_t prob_count(unsigned wl, unsigned lc, unsigned lp)
{
    return (2U << lp) + 2 + 2 + 8 + 8 + 256 + (1U << (wl - DIST_LOW_BITS)) +
           (1U << DIST_LOW_BITS) + (256U << (lc + lp));
}

static void models(tml_lz_t *d, models_t *m)
{
    uint16_t *p = (uint16_t *)(void *)(d->mem + ((size_t)1 << d->window_log));
    m->is_match = p;
    p += 2U << d->lp;
    m->is_rep = p;
    p += 2;
    m->len_choice = p;
    p += 2;
    m->len_low = p;
    p += 8;
    m->len_mid = p;
    p += 8;
    m->len_high = p;
    p += 256;
    m->dist_high = p;
    p += 1U << (d->window_log - DIST_LOW_BITS);
    m->dist_low = p;
    p += 1U << DIST_LOW_BITS;
    m->literal = p;
}

/*
 * The range decoder over the lookahead buffer; `eof` is set when a token runs off its end. Its
 * range and code live here, not in the decoder, while tokens are decoded: the window's byte
 * stores may alias anything, so fields read through `d` would be reloaded for every bit.
 */
typedef struct {
    const uint8_t *in;
    uint32_t ip, len, range, code;
    bool eof;
} rc_t;

/*
 * One bit. Its data-dependent branch is cheap on a Cortex-M (a short pipeline) and the fewest
 * instructions there; a host CPU mispredicts about every second literal bit instead, so the
 * simulator's build (TML_LZ_BRANCHLESS, make libtransfer) selects with masks: the same
 * arithmetic, the same results.
 */
static inline unsigned bit(rc_t *rc, uint16_t *p)
{
    if (rc->range < TOP) {
        if (rc->ip >= rc->len) {
            rc->eof = true;
            return 0;
        }
        rc->range <<= 8;
        rc->code = (rc->code << 8) | rc->in[rc->ip++];
    }
    unsigned prob = *p;
    uint32_t bound = (rc->range >> PROB_BITS) * prob;
#ifdef TML_LZ_BRANCHLESS
    uint32_t one = rc->code >= bound, mask = 0U - one;
    rc->code -= bound & mask;
    rc->range = (bound & ~mask) | ((rc->range - bound) & mask);
    *p = (uint16_t)(((prob + ((PROB_ONE - prob) >> MOVE_BITS)) & ~mask) |
                    ((prob - (prob >> MOVE_BITS)) & mask));
    return one;
#else
    if (rc->code < bound) {
        rc->range = bound;
        *p = (uint16_t)(prob + ((PROB_ONE - prob) >> MOVE_BITS));
        return 0;
    }
    rc->range -= bound;
    rc->code -= bound;
    *p = (uint16_t)(prob - (prob >> MOVE_BITS));
    return 1;
#endif
}

static uint32_t tree(rc_t *rc, uint16_t *probs, unsigned nbits)
{
    uint32_t m = 1;
    for (unsigned i = 0; i < nbits; i++) {
        m = (m << 1) | bit(rc, &probs[m]);
    }
    return m - (1U << nbits);
}

/* Decoded bytes are gathered and handed to the sink in pieces. */
typedef struct {
    tml_sink_fn sink;
    void *ctx;
    size_t n;
    uint8_t buf[64];
} out_t;

static tml_reason_t flush(out_t *o)
{
    tml_reason_t why = TML_REASON_OK;
    if (o->n) {
        why = o->sink(o->ctx, o->buf, o->n);
        o->n = 0;
    }
    return why;
}

static tml_reason_t put(out_t *o, uint8_t b)
{
    o->buf[o->n++] = b;
    return o->n == sizeof(o->buf) ? flush(o) : TML_REASON_OK;
}

void tml_lz_init(tml_lz_t *d, int64_t expected_size)
{
    d->in_len = 0;
    d->stage = STAGE_HEADER;
    d->expected_size = expected_size;
    d->pos = 0;
    d->size = 0;
    d->kind = 0;
    d->rep = 1;
    d->prev = 0;
    d->range = 0xFFFFFFFFUL;
    d->code = 0;
}

bool tml_lz_done(const tml_lz_t *d)
{
    return d->stage == STAGE_DONE;
}

static tml_reason_t header(tml_lz_t *d)
{
    const uint8_t *h = d->in;
    if (h[0] != 'T' || h[1] != 'Z' || h[2] != 1) {
        return TML_REASON_DECODE_ERROR;
    }
    uint32_t size = (uint32_t)h[4] | (uint32_t)h[5] << 8 | (uint32_t)h[6] << 16 |
                    (uint32_t)h[7] << 24;
    if (d->expected_size >= 0 && size != (uint64_t)d->expected_size) {
        return size > (uint64_t)d->expected_size ? TML_REASON_TRANSFER_OVERFLOW
                                                 : TML_REASON_DECODE_ERROR;
    }
    uint8_t p = h[3];
    unsigned wl = (p & 7U) + 8, lp = (p >> 3) & 3U, lc = p >> 5;
    if ((p >> 7) || wl > TML_LZ_MAX_WINDOW_LOG || lp > 2 || lc > 3) {
        return TML_REASON_DECODE_ERROR;
    }
    uint32_t probs = prob_count(wl, lc, lp);
    if ((1UL << wl) + 2 * probs > TML_LZ_STATE_BYTES) {
        return TML_REASON_DECODE_ERROR; /* beyond TRANSFER.md's 3,584-byte decoder budget */
    }
    d->window_log = (uint8_t)wl;
    d->lp = (uint8_t)lp;
    d->lc = (uint8_t)lc;
    d->size = size;
    uint16_t *prob = (uint16_t *)(void *)(d->mem + ((size_t)1 << wl));
    for (uint32_t i = 0; i < probs; i++) {
        prob[i] = PROB_ONE >> 1;
    }
    return TML_REASON_OK;
}

/* Decode one token; the caller made sure LOOKAHEAD bytes are buffered or the input is final. */
static tml_reason_t token(tml_lz_t *d, rc_t *rc, const models_t *m, out_t *o)
{
    uint32_t wmask = (1UL << d->window_log) - 1, pmask = (1U << d->lp) - 1;
    uint32_t state = ((uint32_t)d->kind << d->lp) | (d->pos & pmask);
    if (!bit(rc, &m->is_match[state])) {
        uint16_t *probs = m->literal + 256 * (((d->pos & pmask) << d->lc) | (d->prev >> (8 - d->lc)));
        uint8_t b = (uint8_t)tree(rc, probs, 8);
        if (rc->eof) {
            return TML_REASON_DECODE_ERROR; /* stream ends inside a token */
        }
        d->mem[d->pos & wmask] = b;
        d->pos++;
        d->prev = b;
        d->kind = 0;
        return put(o, b);
    }
    if (!bit(rc, &m->is_rep[d->kind])) {
        uint32_t high = tree(rc, m->dist_high, d->window_log - DIST_LOW_BITS);
        d->rep = ((high << DIST_LOW_BITS) | tree(rc, m->dist_low, DIST_LOW_BITS)) + 1;
    }
    uint32_t len;
    if (!bit(rc, &m->len_choice[0])) {
        len = MIN_MATCH + tree(rc, m->len_low, 3);
    } else if (!bit(rc, &m->len_choice[1])) {
        len = MIN_MATCH + 8 + tree(rc, m->len_mid, 3);
    } else {
        len = MIN_MATCH + 16 + tree(rc, m->len_high, 8);
    }
    if (rc->eof || d->rep > d->pos || len > d->size - d->pos) {
        return TML_REASON_DECODE_ERROR;
    }
    for (uint32_t i = 0; i < len; i++) {
        uint8_t b = d->mem[(d->pos - d->rep) & wmask];
        d->mem[d->pos & wmask] = b;
        d->pos++;
        d->prev = b;
        tml_reason_t why = put(o, b);
        if (why != TML_REASON_OK) {
            return why;
        }
    }
    d->kind = 1;
    return TML_REASON_OK;
}

tml_reason_t tml_lz_feed(tml_lz_t *d, const uint8_t *data, size_t len, bool final,
                         tml_sink_fn sink, void *ctx)
{
    out_t o = {sink, ctx, 0, {0}};
    size_t i = 0;
    tml_reason_t why = TML_REASON_OK;
    models_t m;
    if (d->stage == STAGE_DONE && len) {
        return TML_REASON_DECODE_ERROR; /* bytes after the end of the stream */
    }
    for (;;) {
        size_t take = (size_t)(TML_LZ_INBUF - d->in_len);
        if (take > len - i) {
            take = len - i;
        }
        memcpy(d->in + d->in_len, data + i, take);
        d->in_len = (uint8_t)(d->in_len + take);
        i += take;
        bool all_in = i == len, fin = final && all_in;
        rc_t rc = {d->in, 0, d->in_len, d->range, d->code, false};
        if (d->stage == STAGE_HEADER) {
            if (d->in_len < HEADER_BYTES) {
                return fin ? TML_REASON_DECODE_ERROR : TML_REASON_OK;
            }
            why = header(d);
            if (why != TML_REASON_OK) {
                return why;
            }
            rc.ip = HEADER_BYTES;
            d->stage = STAGE_START;
        }
        if (d->stage == STAGE_START) {
            if (d->in_len - rc.ip < 5) {
                if (fin) {
                    return TML_REASON_DECODE_ERROR;
                }
                /* Too few bytes yet: they are kept below, and the next call goes on. */
            } else {
                const uint8_t *s = d->in + rc.ip;
                rc.code = (uint32_t)s[1] << 24 | (uint32_t)s[2] << 16 | (uint32_t)s[3] << 8 | s[4];
                if (s[0] != 0 || rc.code == 0xFFFFFFFFUL) {
                    return TML_REASON_DECODE_ERROR;
                }
                rc.range = 0xFFFFFFFFUL;
                rc.ip += 5;
                d->stage = STAGE_TOKENS;
            }
        }
        models(d, &m);
        while (d->stage == STAGE_TOKENS && d->pos < d->size &&
               (d->in_len - rc.ip >= LOOKAHEAD || fin)) {
            why = token(d, &rc, &m, &o);
            if (why != TML_REASON_OK) {
                return why;
            }
        }
        if (d->stage == STAGE_TOKENS && d->pos == d->size) {
            /* The encoder's flush leaves exactly the bytes that make the final code zero. */
            bool wait = false;
            if (rc.range < TOP) {
                if (rc.ip >= d->in_len) {
                    if (fin) {
                        return TML_REASON_DECODE_ERROR; /* ends before its flush */
                    }
                    wait = true;
                } else {
                    rc.code = (rc.code << 8) | d->in[rc.ip++];
                    rc.range <<= 8;
                }
            }
            if (!wait) {
                if (rc.code != 0) {
                    return TML_REASON_DECODE_ERROR;
                }
                d->stage = STAGE_DONE;
            }
        }
        if (d->stage == STAGE_DONE && (rc.ip < d->in_len || !all_in)) {
            return TML_REASON_DECODE_ERROR; /* bytes after the end of the stream */
        }
        d->range = rc.range;
        d->code = rc.code;
        memmove(d->in, d->in + rc.ip, d->in_len - rc.ip);
        d->in_len = (uint8_t)(d->in_len - rc.ip);
        if (all_in) {
            why = flush(&o);
            if (why == TML_REASON_OK && final && d->stage != STAGE_DONE) {
                why = TML_REASON_DECODE_ERROR; /* ended before its decoded size */
            }
            return why;
        }
        why = flush(&o);
        if (why != TML_REASON_OK) {
            return why;
        }
    }
}
