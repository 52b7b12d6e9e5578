/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Link framing (src/link.c): the byte-stream deframer (COBS, CRC, seq) and frame decode.
 * Input: a mode byte (whether a data frame of ours awaits its ACK, how the bytes are split),
 * then wire bytes. Every delivered frame must be within the receive buffer and the MTU, and
 * must come back unchanged when rebuilt with tml_link_build and fed to a fresh endpoint; every
 * byte the endpoint writes (ACKs) must be a well-formed frame.
 */
#include <string.h>

#include "fuzz.h"
#include "tml/link.h"

static tml_link_t l, echo;
static uint8_t written[1 << 16];
static size_t written_len;
static int truncated;

static void capture(void *ctx, const uint8_t *data, size_t len)
{
    (void)ctx;
    if (len > sizeof(written) - written_len) {
        truncated = 1;
        len = sizeof(written) - written_len;
    }
    memcpy(written + written_len, data, len);
    written_len += len;
}

static void discard(void *ctx, const uint8_t *data, size_t len)
{
    (void)ctx, (void)data, (void)len;
}

static void roundtrip(const tml_link_frame_t *f)
{
    static uint8_t wire[2 * TML_LINK_RX_BODY + 8];
    size_t n = 0, used = 0;
    tml_link_frame_t g;
    FUZZ_CHECK(tml_link_build(f->kind, f->seq, f->flags, f->payload, f->len, wire, sizeof(wire),
                              &n) == TML_OK);
    tml_link_init(&echo, discard, NULL);
    FUZZ_CHECK(tml_link_receive(&echo, wire, n, &used, &g, 0));
    FUZZ_CHECK(used == n && g.kind == f->kind && g.seq == f->seq && g.flags == f->flags &&
               g.len == f->len && memcmp(g.payload, f->payload, f->len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    uint8_t mode = data[0];
    const uint8_t *in = data + 1;
    size_t len = size - 1, i = 0;
    written_len = 0;
    truncated = 0;
    tml_link_init(&l, capture, NULL);
    if (mode & 1) { /* one frame out: incoming ACKs now matter */
        memset(tml_link_payload(&l), 0xA5, 16);
        FUZZ_CHECK(tml_link_send(&l, TML_LINK_STATUS, 16, 0) == TML_OK);
        FUZZ_CHECK(tml_link_busy(&l));
    }
    fuzz_split_t sp;
    fuzz_split_init(&sp, (uint8_t)(mode >> 1));
    while (i < len) {
        size_t n = fuzz_split_next(&sp, len - i), off = 0;
        while (off < n) {
            size_t used = 0;
            tml_link_frame_t f;
            bool got = tml_link_receive(&l, in + i + off, n - off, &used, &f, 0);
            FUZZ_CHECK(used <= n - off);
            if (got) {
                FUZZ_CHECK(used >= 1 && in[i + off + used - 1] == 0); /* a frame ends at 0x00 */
                FUZZ_CHECK(f.kind != TML_LINK_ACK && f.len <= TML_LINK_MAX_PAYLOAD);
                FUZZ_CHECK(f.payload >= l.rx && f.payload + f.len <= l.rx + sizeof(l.rx));
                FUZZ_CHECK((f.flags & ~TML_LINK_FLAG_RST) == 0);
                roundtrip(&f);
            } else {
                FUZZ_CHECK(used == n - off);
            }
            off += used;
        }
        i += n;
        FUZZ_CHECK(l.rx_len <= sizeof(l.rx));
    }
    /* What the endpoint wrote (its frame, ACKs) deframes cleanly, nothing left over. */
    tml_link_init(&echo, discard, NULL);
    size_t off = 0;
    while (off < written_len) {
        size_t used = 0;
        tml_link_frame_t g;
        (void)tml_link_receive(&echo, written + off, written_len - off, &used, &g, 0);
        off += used;
    }
    FUZZ_CHECK(truncated ||
               (echo.stats.bad_crc == 0 && echo.stats.malformed == 0 && echo.rx_len == 0));
    return 0;
}
