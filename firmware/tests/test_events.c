/* SPDX-License-Identifier: Apache-2.0 */
/* Event batches and summaries encode byte for byte as events.py does (events.vec). */
#include <string.h>

#include "tml/events.h"
#include "tml/protocol.h"
#include "tml_test.h"

#define MAXN 1100

void suite_events(void)
{
    static uint64_t t[MAXN], labels[MAXN], scores[MAXN], lat[MAXN];
    static tml_event_t ev[MAXN];
    static uint8_t want[16384], got[16384];
    vec_file_t f;
    vec_record_t r;
    if (!vec_open(&f, "events.vec")) {
        return;
    }
    while (vec_next(&f, &r)) {
        tml_case("events", vec_get(&r, "name"));
        size_t n = vec_list(&r, "t_ms", t, MAXN);
        CHECK_EQ(vec_list(&r, "labels", labels, MAXN), n);
        vec_list(&r, "scores", scores, MAXN);
        vec_list(&r, "latencies", lat, MAXN);
        for (size_t i = 0; i < n; i++) {
            ev[i] = (tml_event_t){t[i], (uint32_t)lat[i], (uint16_t)labels[i], (uint8_t)scores[i]};
        }
        size_t wn = vec_hex(&r, "expect", want, sizeof(want)), len = 0;
        if (!strcmp(vec_get(&r, "kind"), "batch")) {
            CHECK(tml_events_encode_batch(vec_u64(&r, "seq"), (uint32_t)vec_u64(&r, "model"), ev,
                                          n, got, sizeof(got), &len) == TML_OK);
        } else {
            tml_summary_t s;
            CHECK(tml_summary_init(&s, vec_u64(&r, "seq"), vec_u64(&r, "t0"),
                                   (uint32_t)vec_u64(&r, "model"),
                                   (uint32_t)vec_u64(&r, "window_s"),
                                   (uint16_t)vec_u64(&r, "num_labels")) == TML_OK);
            for (size_t i = 0; i < n; i++) {
                CHECK(tml_summary_add(&s, &ev[i]) == TML_OK);
            }
            CHECK(tml_summary_encode(&s, got, sizeof(got), &len) == TML_OK);
        }
        CHECK_EQ(len, wn);
        CHECK(memcmp(got, want, wn) == 0);
    }
    vec_close(&f);

    tml_case("events", "refuses_what_the_server_refuses");
    {
        tml_event_t e[2] = {{1717000000000ULL, 10, 1, 1}, {1717000000000ULL - 1, 10, 1, 1}};
        size_t len;
        CHECK(tml_events_encode_batch(1, 1, e, 2, got, sizeof(got), &len) == TML_ERR_RANGE);
        CHECK(tml_events_encode_batch(1, 1, e, 0, got, sizeof(got), &len) == TML_ERR_RANGE);
        e[1].t_ms = e[0].t_ms;
        e[1].label = 1024;
        CHECK(tml_events_encode_batch(1, 1, e, 2, got, sizeof(got), &len) == TML_ERR_RANGE);
        e[1].label = 0;
        e[0].t_ms = 1000;
        CHECK(tml_events_encode_batch(1, 1, e, 1, got, sizeof(got), &len) == TML_ERR_RANGE);
        CHECK(tml_events_encode_batch(1, 1ULL << 31, e + 1, 1, got, sizeof(got), &len) ==
              TML_ERR_RANGE);
        CHECK(tml_events_encode_batch(1, 1, e + 1, 1, got, 10, &len) == TML_ERR_NOSPACE);
    }
    tml_case("events", "kind_2_sends_seq_minus_t0_and_one_column_string");
    {
        /* Two events 100 ms apart: each column is 2 bytes (width 0, minimum), 8 in all. */
        const uint64_t t0 = 1717000000000ULL;
        tml_event_t e[2] = {{t0, 7, 3, 9}, {t0 + 100, 7, 3, 9}};
        size_t len, at = 9 + 1 + 1 + 1; /* array, kind, offset; then t0 (9), model, n */
        CHECK(tml_events_encode_batch(t0, 1, e, 2, got, sizeof(got), &len) == TML_OK);
        CHECK(got[0] == 0x86 && got[1] == TML_EVENTS_KIND_BATCH2 && got[2] == 0x00);
        CHECK(len == at + 2 + 1 + 8 && got[at + 2] == 0x48); /* bstr(8) */
        CHECK(tml_events_encode_batch(t0 - 1, 1, e, 2, got, sizeof(got), &len) == TML_OK);
        CHECK(got[2] == 0x20 && len == at + 2 + 1 + 8); /* -1: one byte too */
        CHECK(tml_events_encode_batch(t0 + 24, 1, e, 2, got, sizeof(got), &len) == TML_OK);
        CHECK(got[2] == 0x18 && got[3] == 24 && len == at + 2 + 1 + 8 + 1);
        CHECK(tml_events_encode_batch(t0, 1, e, 2, got, at + 2 + 8, &len) == TML_ERR_NOSPACE);
        CHECK(tml_events_encode_batch(t0, 1, e, 2, got, at + 3 + 8, &len) == TML_OK);
        CHECK(tml_events_encode_batch((uint64_t)INT64_MAX + 1, 1, e, 2, got, sizeof(got), &len) ==
              TML_ERR_RANGE);
    }
    tml_case("events", "kind_3_summary_sends_seq_minus_t0");
    {
        /* Two labels, no events: [3, seq - t0, t0, 1, 60, [0, 0], [0, 0], 0]. */
        const uint64_t t0 = 1717000000000ULL;
        static const uint8_t head[] = {0x88, TML_EVENTS_KIND_SUMMARY2, 0x00, 0x1b, 0x00, 0x00,
                                       0x01, 0x8f, 0xc5, 0x2c, 0xd2, 0x00, 0x01, 0x18, 0x3c};
        static const uint8_t tail[] = {0x82, 0x00, 0x00, 0x82, 0x00, 0x00, 0x00};
        const size_t at = sizeof(head) + sizeof(tail); /* 22 bytes */
        tml_summary_t s;
        size_t len;
        CHECK(tml_summary_init(&s, t0, t0, 1, 60, 2) == TML_OK);
        CHECK(tml_summary_encode(&s, got, sizeof(got), &len) == TML_OK && len == at);
        CHECK(memcmp(got, head, sizeof(head)) == 0);
        CHECK(memcmp(got + sizeof(head), tail, sizeof(tail)) == 0);
        CHECK(tml_summary_encode(&s, got, at - 1, &len) == TML_ERR_NOSPACE);
        CHECK(tml_summary_init(&s, t0 - 1, t0, 1, 60, 2) == TML_OK);
        CHECK(tml_summary_encode(&s, got, sizeof(got), &len) == TML_OK);
        CHECK(got[2] == 0x20 && len == at); /* -1: one byte too */
        CHECK(tml_summary_init(&s, t0 + 24, t0, 1, 60, 2) == TML_OK);
        CHECK(tml_summary_encode(&s, got, sizeof(got), &len) == TML_OK);
        CHECK(got[2] == 0x18 && got[3] == 24 && len == at + 1);
        CHECK(tml_summary_init(&s, 0, t0, 1, 60, 2) == TML_OK); /* -t0: nint, -1 - d = t0 - 1 */
        CHECK(tml_summary_encode(&s, got, sizeof(got), &len) == TML_OK);
        CHECK(got[2] == 0x3b && got[10] == 0xff && got[9] == 0xd1 && len == at + 8);
        CHECK(tml_summary_init(&s, (uint64_t)INT64_MAX, t0, 1, 60, 2) == TML_OK);
        CHECK(tml_summary_encode(&s, got, sizeof(got), &len) == TML_OK);
        CHECK(got[2] == 0x1b && got[3] == 0x7f && len == at + 8);
        CHECK(tml_summary_init(&s, (uint64_t)INT64_MAX + 1, t0, 1, 60, 2) == TML_ERR_RANGE);
    }
    tml_case("events", "pack_empty_and_worked_example");
    {
        uint32_t deltas[2] = {1000, 1010};
        uint8_t col[16];
        size_t len;
        CHECK(tml_events_pack(deltas, 0, col, sizeof(col), &len) == TML_OK && len == 2 &&
              col[0] == 0 && col[1] == 0);
        CHECK(tml_events_pack(deltas, 2, col, sizeof(col), &len) == TML_OK && len == 4);
        CHECK(col[0] == 4 && col[1] == 0xe8 && col[2] == 0x07 && col[3] == 0xa0);
    }
}
