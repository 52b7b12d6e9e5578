/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The OTA messages the gateway sends (src/messages.c, src/enroll.c): CHUNK [pkg, offset, data],
 * TIME (unix ms) and ENROLL_CHALLENGE [nonce, token_sha256, caps_sha256, via]. Every input
 * goes through all three, and is also read as the fields of a chunk (pkg u32 le, offset u64 le,
 * data) that the CBOR writer encodes: values anywhere in their ranges, wire-valid. A decoded
 * value must be the one on the wire (no truncation, no wrap-around) and within messages.h's
 * bounds; the enroll-message built from a challenge must be one well-formed CBOR array of 7
 * that fits its buffer.
 */
#include <string.h>

#include "fuzz.h"
#include "tml/cbor.h"
#include "tml/enroll.h"
#include "tml/messages.h"
#include "tml/protocol.h"

static void chunk(const uint8_t *msg, size_t len)
{
    uint32_t pkg, offset;
    const uint8_t *d;
    size_t n;
    if (tml_chunk_decode(msg, len, &pkg, &offset, &d, &n) != TML_OK) {
        return;
    }
    /* Read it again with the plain reader: the values the caller got are the wire's. */
    tml_cbor_reader_t r;
    tml_cbor_item_t a, p, o, b;
    tml_cbor_reader_init(&r, msg, len);
    FUZZ_CHECK(tml_cbor_read(&r, &a) == TML_OK && tml_cbor_read(&r, &p) == TML_OK &&
               tml_cbor_read(&r, &o) == TML_OK && tml_cbor_read(&r, &b) == TML_OK);
    FUZZ_CHECK(p.arg == pkg && o.arg == offset && b.data == d && b.arg == n);
    FUZZ_CHECK(pkg <= TML_MAX_PACKAGE_ID && n <= TML_MAX_CHUNK_BYTES);
    FUZZ_CHECK((uint64_t)offset + n <= TML_MAX_TRANSFER_BYTES);
    FUZZ_CHECK(d >= msg && d + n <= msg + len);
}

static void time_msg(const uint8_t *msg, size_t len)
{
    uint64_t ms;
    if (tml_time_decode(msg, len, &ms) != TML_OK) {
        return;
    }
    uint8_t again[9];
    size_t n = 0;
    tml_cbor_writer_t w;
    tml_cbor_writer_init(&w, again, sizeof(again));
    tml_cbor_put_uint(&w, ms);
    FUZZ_CHECK(tml_cbor_finish(&w, &n) == TML_OK && n <= len);
    FUZZ_CHECK(n == len ? memcmp(again, msg, n) == 0 : msg[0] > 0x17); /* else a longer head */
}

static void enroll(const uint8_t *msg, size_t len)
{
    static uint8_t out[TML_ENROLL_MESSAGE_MAX];
    size_t n = 0;
    if (tml_enroll_message(msg, len, "mcu-0001", "mps2-an385", out, sizeof(out), &n) != TML_OK) {
        return;
    }
    tml_cbor_reader_t r;
    tml_cbor_item_t it;
    FUZZ_CHECK(n <= sizeof(out));
    tml_cbor_reader_init(&r, out, n);
    FUZZ_CHECK(tml_cbor_skip(&r, 2) == TML_OK && r.p == r.end);
    tml_cbor_reader_init(&r, out, n);
    FUZZ_CHECK(tml_cbor_read(&r, &it) == TML_OK && it.major == TML_CBOR_ARRAY && it.arg == 7);
}

/* The fields of a chunk, encoded canonically, then decoded. */
static void chunk_fields(const uint8_t *data, size_t size)
{
    static uint8_t msg[4200];
    uint64_t pkg = 0, offset = 0;
    size_t n = 0;
    if (size < 12) {
        return;
    }
    for (int i = 3; i >= 0; i--) {
        pkg = pkg << 8 | data[i];
    }
    for (int i = 11; i >= 4; i--) {
        offset = offset << 8 | data[i];
    }
    tml_cbor_writer_t w;
    tml_cbor_writer_init(&w, msg, sizeof(msg));
    tml_cbor_put_head(&w, TML_CBOR_ARRAY, 3);
    tml_cbor_put_uint(&w, pkg);
    tml_cbor_put_uint(&w, offset);
    tml_cbor_put_bytes(&w, data + 12, size - 12);
    if (tml_cbor_finish(&w, &n) == TML_OK) {
        chunk(msg, n);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    chunk(data, size);
    chunk_fields(data, size);
    time_msg(data, size);
    enroll(data, size);
    return 0;
}
