/* SPDX-License-Identifier: Apache-2.0 */
/* Status, hello, chunk request, report and chunk, byte for byte (messages.vec). */
#include <stdlib.h>
#include <string.h>

#include "tml/messages.h"
#include "tml_test.h"

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
}
