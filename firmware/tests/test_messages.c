/* SPDX-License-Identifier: Apache-2.0 */
/* Status, hello, chunk request, report and chunk, byte for byte (messages.vec). */
#include <stdlib.h>
#include <string.h>

#include "tml/messages.h"
#include "tml_test.h"

/* A chunk whose offset + length passes 2^64 must be refused, not wrapped into range (the
 * fuzz harness found it: fuzz/regressions/messages/). Offsets at the transfer limit too. */
static void chunk_bounds(void)
{
    static const struct {
        const char *name;
        uint8_t wire[16];
        size_t len;
        tml_status_t want;
    } cases[] = {
        /* [1, 2^64 - 1, h'00'] */
        {"chunk_offset_wraps_u64",
         {0x83, 0x01, 0x1B, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x41, 0x00}, 13,
         TML_ERR_RANGE},
        /* [1, 2^64 - 2, h'0000'] */
        {"chunk_offset_wraps_u64_by_two",
         {0x83, 0x01, 0x1B, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE, 0x42, 0x00, 0x00}, 14,
         TML_ERR_RANGE},
        /* [1, 2^26 - 1, h'00']: the last byte of the largest transfer */
        {"chunk_offset_last_byte", {0x83, 0x01, 0x1A, 0x03, 0xFF, 0xFF, 0xFF, 0x41, 0x00}, 9,
         TML_OK},
        /* [1, 2^26, h'00']: one past it */
        {"chunk_offset_past_limit", {0x83, 0x01, 0x1A, 0x04, 0x00, 0x00, 0x00, 0x41, 0x00}, 9,
         TML_ERR_RANGE},
        /* [1, 2^32, h'']: would truncate to offset 0 */
        {"chunk_offset_above_u32",
         {0x83, 0x01, 0x1B, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x40}, 12,
         TML_ERR_RANGE},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint32_t pkg = 0, offset = 0;
        const uint8_t *p = NULL;
        size_t n = 0;
        tml_case("messages", cases[i].name);
        CHECK_EQ(tml_chunk_decode(cases[i].wire, cases[i].len, &pkg, &offset, &p, &n),
                 cases[i].want);
        if (cases[i].want == TML_OK) {
            CHECK_EQ(offset, 0x3FFFFFF);
            CHECK_EQ(n, 1);
        }
    }
}

void suite_messages(void)
{
    static uint8_t want[2048], got[2048], data[2048];
    vec_file_t f;
    vec_record_t r;
    if (!vec_open(&f, "messages.vec")) {
        return;
    }
    while (vec_next(&f, &r)) {
        const char *kind = vec_get(&r, "kind");
        size_t wn = vec_hex(&r, "expect", want, sizeof(want)), len = 0;
        tml_case("messages", vec_get(&r, "name"));
        if (!strcmp(kind, "status")) {
            char opsbuf[256];
            const char *ops[16];
            size_t nops = 0;
            strncpy(opsbuf, vec_get(&r, "ops"), sizeof(opsbuf) - 1);
            opsbuf[sizeof(opsbuf) - 1] = 0;
            for (char *tok = strtok(opsbuf, ","); tok && nops < 16; tok = strtok(NULL, ",")) {
                ops[nops++] = tok;
            }
            int64_t model = vec_i64(&r, "model");
            tml_status_msg_t s = {
                .has_model = model >= 0,
                .model = model >= 0 ? (uint32_t)model : 0,
                .slot = (uint8_t)vec_u64(&r, "slot"),
                .uptime_s = vec_u64(&r, "uptime_s"),
                .free_ram = vec_u64(&r, "free_ram"),
                .seq = vec_u64(&r, "seq"),
                .firmware_version = vec_get(&r, "firmware_version"),
                .tflm_version = vec_get(&r, "tflm_version"),
                .ops = ops,
                .op_count = nops,
                .arena_bytes = (uint32_t)vec_u64(&r, "arena_bytes"),
                .slot_bytes = (uint32_t)vec_u64(&r, "slot_bytes"),
                .pointer_bits = (uint8_t)vec_u64(&r, "pointer_bits"),
            };
            CHECK(tml_status_encode(&s, got, sizeof(got), &len) == TML_OK);
        } else if (!strcmp(kind, "hello")) {
            uint8_t key[32];
            bool has_key = vec_hex(&r, "key", key, sizeof(key)) == 32;
            CHECK(tml_hello_encode(vec_get(&r, "uid"), vec_get(&r, "hardware"),
                                   has_key ? key : NULL, (uint32_t)vec_u64(&r, "mtu"), got,
                                   sizeof(got), &len) == TML_OK);
        } else if (!strcmp(kind, "chunk_request")) {
            CHECK(tml_chunk_request_encode((uint32_t)vec_u64(&r, "pkg"),
                                           (uint32_t)vec_u64(&r, "offset"),
                                           (uint32_t)vec_u64(&r, "length"), got, sizeof(got),
                                           &len) == TML_OK);
        } else if (!strcmp(kind, "report")) {
            CHECK(tml_report_encode((uint32_t)vec_u64(&r, "pkg"), (uint8_t)vec_u64(&r, "state"),
                                    (uint16_t)vec_u64(&r, "detail"), got, sizeof(got),
                                    &len) == TML_OK);
        } else if (!strcmp(kind, "chunk")) {
            uint32_t pkg, offset;
            const uint8_t *p;
            size_t n, dn = vec_hex(&r, "data", data, sizeof(data));
            CHECK(tml_chunk_decode(want, wn, &pkg, &offset, &p, &n) == TML_OK);
            CHECK_EQ(pkg, vec_u64(&r, "pkg"));
            CHECK_EQ(offset, vec_u64(&r, "offset"));
            CHECK_EQ(n, dn);
            CHECK(n == 0 || memcmp(p, data, n) == 0);
            CHECK(tml_chunk_decode(want, wn - 1, &pkg, &offset, &p, &n) != TML_OK);
            continue;
        }
        CHECK_EQ(len, wn);
        CHECK(memcmp(got, want, wn) == 0);
    }
    vec_close(&f);
    chunk_bounds();
}
