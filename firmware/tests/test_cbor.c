/* SPDX-License-Identifier: Apache-2.0 */
/* CBOR writer heads and the strict reader's refusals. */
#include <string.h>

#include "tml/cbor.h"
#include "tml_test.h"

void suite_cbor(void)
{
    uint8_t buf[32];
    size_t len;
    tml_cbor_writer_t w;
    static const struct {
        uint64_t v;
        const char *hex;
    } ints[] = {{0, "00"},         {23, "17"},         {24, "1818"},         {255, "18ff"},
                {256, "190100"},   {65535, "19ffff"},  {65536, "1a00010000"},
                {4294967296ULL, "1b0000000100000000"}};
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        uint8_t want[16];
        tml_case("cbor", "uint_shortest_head");
        tml_cbor_writer_init(&w, buf, sizeof(buf));
        tml_cbor_put_uint(&w, ints[i].v);
        CHECK(tml_cbor_finish(&w, &len) == TML_OK);
        size_t n = vec_parse_hex(ints[i].hex, want, sizeof(want));
        CHECK_EQ(len, n);
        CHECK(memcmp(buf, want, n) == 0);
    }
    tml_case("cbor", "negative_int");
    tml_cbor_writer_init(&w, buf, sizeof(buf));
    tml_cbor_put_int(&w, -8);
    CHECK(tml_cbor_finish(&w, &len) == TML_OK && len == 1 && buf[0] == 0x27);

    tml_case("cbor", "overflow_sticks");
    tml_cbor_writer_init(&w, buf, 3);
    tml_cbor_put_bytes(&w, "abcd", 4);
    tml_cbor_put_uint(&w, 1);
    CHECK(tml_cbor_finish(&w, &len) == TML_ERR_NOSPACE);

    static const char *const bad[] = {"5f", "1c", "9f", "18", "5a0000", "7f", "f818", "62c328"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint8_t in[8];
        tml_cbor_reader_t r;
        tml_case("cbor", "skip_refuses_ill_formed");
        size_t n = vec_parse_hex(bad[i], in, sizeof(in));
        tml_cbor_reader_init(&r, in, n);
        CHECK(tml_cbor_skip(&r, 8) != TML_OK);
    }
    tml_case("cbor", "skip_depth_limit");
    {
        uint8_t deep[12];
        tml_cbor_reader_t r;
        memset(deep, 0x81, sizeof(deep));
        deep[11] = 0;
        tml_cbor_reader_init(&r, deep, sizeof(deep));
        CHECK(tml_cbor_skip(&r, 8) != TML_OK);
        tml_cbor_reader_init(&r, deep + 4, 8);
        CHECK(tml_cbor_skip(&r, 8) == TML_OK);
    }
    tml_case("cbor", "utf8");
    CHECK(tml_utf8_valid((const uint8_t *)"h\xc3\xa9llo \xf0\x9f\x98\x80", 11));
    CHECK(!tml_utf8_valid((const uint8_t *)"\xc0\xaf", 2));
    CHECK(!tml_utf8_valid((const uint8_t *)"\xed\xa0\x80", 3));
    CHECK(!tml_utf8_valid((const uint8_t *)"\xe2\x82", 2));
}
