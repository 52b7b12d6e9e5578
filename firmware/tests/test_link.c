/* SPDX-License-Identifier: Apache-2.0 */
/* Link frames match link.py byte for byte; ARQ delivers exactly once over a lossy line. */
#include <stdlib.h>
#include <string.h>

#include "tml/link.h"
#include "tml_test.h"

typedef struct {
    uint8_t buf[65536];
    size_t len;
    uint32_t drop_at; /* drop the byte with this index (1-based) of the line's traffic, 0: none */
    uint32_t seen;
    unsigned loss_per_mille;
    unsigned rng;
} line_t;

static void line_write(void *ctx, const uint8_t *data, size_t len)
{
    line_t *l = ctx;
    for (size_t i = 0; i < len; i++) {
        l->seen++;
        if (l->seen == l->drop_at) {
            continue;
        }
        l->rng = l->rng * 1103515245U + 12345U;
        uint8_t b = data[i];
        if (l->loss_per_mille && (l->rng >> 16) % 1000 < l->loss_per_mille) {
            if ((l->rng >> 8) & 1) {
                continue; /* lost */
            }
            b ^= (uint8_t)(1U << ((l->rng >> 4) & 7)); /* flipped bit */
        }
        if (l->len < sizeof(l->buf)) {
            l->buf[l->len++] = b;
        }
    }
}

static void vectors(void)
{
    static uint8_t payload[2048], wire[2048], built[2048];
    vec_file_t f;
    vec_record_t r;
    if (!vec_open(&f, "link.vec")) {
        return;
    }
    while (vec_next(&f, &r)) {
        static line_t acks;
        static tml_link_t rx;
        size_t pn = vec_hex(&r, "payload", payload, sizeof(payload));
        size_t wn = vec_hex(&r, "wire", wire, sizeof(wire)), bn = 0, used = 0;
        uint8_t kind = (uint8_t)vec_u64(&r, "kind"), seq = (uint8_t)vec_u64(&r, "seq");
        tml_case("link", vec_get(&r, "name"));
        CHECK(tml_link_build(kind, seq, (uint8_t)vec_u64(&r, "flags"), payload, pn, built,
                             sizeof(built), &bn) == TML_OK);
        CHECK_EQ(bn, wn);
        CHECK(memcmp(built, wire, wn) == 0);
        memset(&acks, 0, sizeof(acks));
        tml_link_init(&rx, line_write, &acks);
        tml_link_frame_t fr;
        bool got = tml_link_receive(&rx, wire, wn, &used, &fr, 0);
        if (kind == TML_LINK_ACK) {
            CHECK(!got);
            continue;
        }
        CHECK(got);
        if (got) {
            CHECK_EQ(fr.kind, kind);
            CHECK_EQ(fr.seq, seq);
            CHECK_EQ(fr.len, pn);
            CHECK(memcmp(fr.payload, payload, pn) == 0);
        }
        uint8_t ack[16];
        size_t an;
        tml_link_build(TML_LINK_ACK, seq, 0, NULL, 0, ack, sizeof(ack), &an);
        CHECK_EQ(acks.len, an);
        CHECK(memcmp(acks.buf, ack, an) == 0);
        /* the same frame again is a retransmission: acknowledged, not delivered */
        CHECK(!tml_link_receive(&rx, wire, wn, &used, &fr, 0));
        CHECK_EQ(rx.stats.duplicates, 1);
    }
    vec_close(&f);
}

/* Move bytes from one line into an endpoint, collecting what it delivers. */
static void pump(line_t *from, tml_link_t *to, uint32_t now, uint32_t *next_expected,
                 unsigned *delivered, bool *order_ok)
{
    size_t off = 0;
    static uint8_t copy[65536];
    size_t n = from->len;
    memcpy(copy, from->buf, n);
    from->len = 0;
    while (off < n) {
        size_t used = 0;
        tml_link_frame_t fr;
        if (tml_link_receive(to, copy + off, n - off, &used, &fr, now)) {
            uint32_t v = 0;
            memcpy(&v, fr.payload, 4);
            if (v != *next_expected) {
                *order_ok = false;
            }
            (*next_expected)++;
            (*delivered)++;
        }
        off += used;
    }
}

/* A sends `count` messages to B (and B as many to A) over lines with the given loss. */
static void exchange(unsigned loss, uint32_t drop_at, unsigned count, uint32_t *retransmits)
{
    static line_t ab, ba;
    static tml_link_t a, b;
    memset(&ab, 0, sizeof(ab));
    memset(&ba, 0, sizeof(ba));
    ab.loss_per_mille = ba.loss_per_mille = loss;
    ab.rng = 1;
    ba.rng = 2;
    ab.drop_at = drop_at;
    tml_link_init(&a, line_write, &ab);
    tml_link_init(&b, line_write, &ba);
    uint32_t now = 0, sent_a = 0, sent_b = 0, next_a = 0, next_b = 0;
    unsigned got_a = 0, got_b = 0;
    bool order = true;
    for (int step = 0; step < 200000 && (got_b < count || got_a < count); step++) {
        if (!tml_link_busy(&a) && sent_a < count) {
            uint8_t *p = tml_link_payload(&a);
            memcpy(p, &sent_a, 4);
            memset(p + 4, (int)sent_a, 96);
            tml_link_send(&a, TML_LINK_EVENTS, 100, now);
            sent_a++;
        }
        if (!tml_link_busy(&b) && sent_b < count) {
            uint8_t *p = tml_link_payload(&b);
            memcpy(p, &sent_b, 4);
            memset(p + 4, 0, 300);
            tml_link_send(&b, TML_LINK_CHUNK, 304, now);
            sent_b++;
        }
        pump(&ab, &b, now, &next_b, &got_b, &order);
        pump(&ba, &a, now, &next_a, &got_a, &order);
        now += 10;
        tml_link_poll(&a, now);
        tml_link_poll(&b, now);
    }
    CHECK_EQ(got_b, count);
    CHECK_EQ(got_a, count);
    CHECK(order);
    *retransmits = a.stats.retransmits + b.stats.retransmits;
}

void suite_link(void)
{
    uint32_t retransmits;
    vectors();
    tml_case("link", "crc32_matches_zlib");
    CHECK_EQ(tml_crc32(0, "123456789", 9), 0xCBF43926UL);
    tml_case("link", "clean_line_needs_no_retransmission");
    exchange(0, 0, 50, &retransmits);
    CHECK_EQ(retransmits, 0);
    tml_case("link", "one_lost_byte_costs_one_frame");
    exchange(0, 5 * 120 + 37, 50, &retransmits); /* a byte inside A's 6th frame */
    CHECK_EQ(retransmits, 1);
    tml_case("link", "lossy_line_delivers_each_message_once_in_order");
    exchange(2, 0, 200, &retransmits); /* 0.2 % of bytes lost or flipped, both ways */
    CHECK(retransmits > 0);
    tml_case("link", "oversize_frame_is_dropped");
    {
        static line_t sink;
        static tml_link_t rx;
        static uint8_t junk[TML_LINK_RX_BODY + 100];
        size_t used;
        tml_link_frame_t fr;
        memset(&sink, 0, sizeof(sink));
        tml_link_init(&rx, line_write, &sink);
        memset(junk, 0x55, sizeof(junk));
        junk[sizeof(junk) - 1] = 0;
        CHECK(!tml_link_receive(&rx, junk, sizeof(junk), &used, &fr, 0));
        CHECK(rx.stats.malformed >= 1);
        CHECK_EQ(sink.len, 0);
    }
}
