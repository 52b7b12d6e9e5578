/* SPDX-License-Identifier: Apache-2.0 */
/*
 * UART link (firmware/LINK.md): COBS framing with a CRC-32, a sequence number per data frame,
 * an ACK frame for each good one, stop-and-wait retransmission. A receiver delivers a data
 * frame unless it is identical (seq and CRC) to the last one it delivered: a retransmission.
 */
#include "tml/link.h"

#include <string.h>

#define RTO_MAX_SHIFT 3
#define WIRE_CHUNK 64 /* bytes handed to the writer at once */

uint32_t tml_crc32(uint32_t crc, const void *data, size_t len)
{
    /* Reflected polynomial 0xEDB88320, a 16-entry table: small flash, ~2 lookups per byte. */
    static const uint32_t table[16] = {
        0x00000000, 0x1DB71064, 0x3B6E20C8, 0x26D930AC, 0x76DC4190, 0x6B6B51F4,
        0x4DB26158, 0x5005713C, 0xEDB88320, 0xF00F9344, 0xD6D6A3E8, 0xCB61B38C,
        0x9B64C2B0, 0x86D3D2D4, 0xA00AE278, 0xBDBDF21C};
    const uint8_t *p = data;
    crc = ~crc;
    while (len--) {
        crc ^= *p++;
        crc = (crc >> 4) ^ table[crc & 15];
        crc = (crc >> 4) ^ table[crc & 15];
    }
    return ~crc;
}

tml_status_t tml_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t cap,
                             size_t *out_len)
{
    size_t o = 0, i = 0;
    for (;;) {
        size_t run = 0;
        while (i + run < len && in[i + run] != 0 && run < 254) {
            run++;
        }
        if (o + 1 + run > cap) {
            return TML_ERR_NOSPACE;
        }
        out[o++] = (uint8_t)(run + 1);
        memcpy(out + o, in + i, run);
        o += run;
        i += run;
        if (run == 254) {
            if (i == len) {
                break;
            }
            continue; /* a full block has no implied zero */
        }
        if (i == len) {
            break;
        }
        i++; /* the zero the block's code stands for */
    }
    *out_len = o;
    return TML_OK;
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

/* Add one byte to the wire buffer, writing the buffer out first when it is full. */
static void put_wire(tml_link_t *l, uint8_t *buf, size_t *n, uint8_t b)
{
    if (*n == WIRE_CHUNK) {
        l->write(l->write_ctx, buf, *n);
        *n = 0;
    }
    buf[(*n)++] = b;
}

/* COBS-encode body straight to the wire, in pieces through a small buffer. */
static void write_frame(tml_link_t *l, const uint8_t *body, size_t len)
{
    uint8_t buf[WIRE_CHUNK];
    size_t n = 0, i = 0;
    put_wire(l, buf, &n, 0); /* a leading delimiter ends any noise the receiver has buffered */
    for (;;) {
        size_t run = 0;
        while (i + run < len && body[i + run] != 0 && run < 254) {
            run++;
        }
        put_wire(l, buf, &n, (uint8_t)(run + 1));
        for (size_t k = 0; k < run; k++) {
            put_wire(l, buf, &n, body[i + k]);
        }
        i += run;
        if (i == len) {
            break;
        }
        if (run < 254) {
            i++; /* the zero the block's code stands for (a trailing one: an empty last block) */
        }
    }
    put_wire(l, buf, &n, 0);
    l->write(l->write_ctx, buf, n);
}

tml_status_t tml_link_build(uint8_t kind, uint8_t seq, uint8_t flags, const uint8_t *payload,
                            size_t len, uint8_t *out, size_t cap, size_t *out_len)
{
    uint8_t body[TML_LINK_HEADER + TML_LINK_MAX_PAYLOAD + TML_LINK_CRC];
    size_t n = TML_LINK_HEADER + len + TML_LINK_CRC;
    if (len > TML_LINK_MAX_PAYLOAD) {
        return TML_ERR_NOSPACE;
    }
    body[0] = kind;
    body[1] = seq;
    body[2] = flags;
    if (len) {
        memcpy(body + TML_LINK_HEADER, payload, len);
    }
    put_le32(body + n - TML_LINK_CRC, tml_crc32(0, body, n - TML_LINK_CRC));
    if (cap < 2) {
        return TML_ERR_NOSPACE;
    }
    out[0] = 0;
    size_t enc = 0;
    tml_status_t st = tml_cobs_encode(body, n, out + 1, cap - 2, &enc);
    if (st != TML_OK) {
        return st;
    }
    out[1 + enc] = 0;
    *out_len = enc + 2;
    return TML_OK;
}

void tml_link_init(tml_link_t *l, tml_write_fn write, void *ctx)
{
    memset(l, 0, sizeof(*l));
    l->write = write;
    l->write_ctx = ctx;
    l->tx_rst = true;
    l->rto = TML_LINK_RTO_MS;
}

uint8_t *tml_link_payload(tml_link_t *l)
{
    return l->tx + TML_LINK_HEADER;
}

bool tml_link_busy(const tml_link_t *l)
{
    return l->tx_pending;
}

tml_status_t tml_link_send(tml_link_t *l, uint8_t kind, size_t len, uint32_t now_ms)
{
    if (l->tx_pending) {
        return TML_ERR_BUSY;
    }
    if (kind == TML_LINK_ACK || len > TML_LINK_TX_MAX_PAYLOAD) {
        return TML_ERR_ARG;
    }
    l->tx[0] = kind;
    l->tx[1] = l->tx_seq;
    l->tx[2] = l->tx_rst ? TML_LINK_FLAG_RST : 0;
    l->tx_len = TML_LINK_HEADER + len + TML_LINK_CRC;
    put_le32(l->tx + l->tx_len - TML_LINK_CRC, tml_crc32(0, l->tx, l->tx_len - TML_LINK_CRC));
    l->tx_pending = true;
    l->tx_sent_at = now_ms;
    l->rto = TML_LINK_RTO_MS;
    write_frame(l, l->tx, l->tx_len);
    return TML_OK;
}

void tml_link_poll(tml_link_t *l, uint32_t now_ms)
{
    if (l->tx_pending && (uint32_t)(now_ms - l->tx_sent_at) >= l->rto) {
        write_frame(l, l->tx, l->tx_len); /* unchanged: the receiver spots it by seq and CRC */
        l->stats.retransmits++;
        l->tx_sent_at = now_ms;
        if (l->rto < (uint32_t)TML_LINK_RTO_MS << RTO_MAX_SHIFT) {
            l->rto *= 2;
        }
    }
}

uint32_t tml_link_next_ms(const tml_link_t *l, uint32_t now_ms)
{
    if (!l->tx_pending) {
        return UINT32_MAX;
    }
    uint32_t waited = now_ms - l->tx_sent_at;
    return waited >= l->rto ? 0 : l->rto - waited;
}

static void send_ack(tml_link_t *l, uint8_t seq)
{
    uint8_t body[TML_LINK_HEADER + TML_LINK_CRC] = {TML_LINK_ACK, seq, 0};
    put_le32(body + TML_LINK_HEADER, tml_crc32(0, body, TML_LINK_HEADER));
    write_frame(l, body, sizeof(body));
}

/* A complete body arrived: check it, acknowledge it, and say whether to deliver it. */
static bool frame_end(tml_link_t *l, tml_link_frame_t *f)
{
    size_t n = l->rx_len;
    if (n < TML_LINK_HEADER + TML_LINK_CRC) {
        l->stats.malformed++;
        return false;
    }
    const uint8_t *c = l->rx + n - TML_LINK_CRC;
    uint32_t crc = (uint32_t)c[0] | (uint32_t)c[1] << 8 | (uint32_t)c[2] << 16 |
                   (uint32_t)c[3] << 24;
    if (crc != tml_crc32(0, l->rx, n - TML_LINK_CRC)) {
        l->stats.bad_crc++;
        return false;
    }
    if (l->rx[2] & ~TML_LINK_FLAG_RST) {
        l->stats.malformed++; /* reserved flag bits: a newer link version; drop */
        return false;
    }
    uint8_t kind = l->rx[0], seq = l->rx[1];
    if (kind == TML_LINK_ACK) {
        if (l->tx_pending && seq == l->tx_seq) {
            l->tx_pending = false;
            l->tx_rst = false;
            l->tx_seq++;
            l->stats.acked++;
        }
        return false;
    }
    send_ack(l, seq);
    if (l->rx_session && seq == l->rx_last_seq && crc == l->rx_last_crc) {
        l->stats.duplicates++;
        return false;
    }
    l->rx_session = true;
    l->rx_last_seq = seq;
    l->rx_last_crc = crc;
    l->stats.delivered++;
    f->kind = kind;
    f->seq = seq;
    f->flags = l->rx[2];
    f->payload = l->rx + TML_LINK_HEADER;
    f->len = n - TML_LINK_HEADER - TML_LINK_CRC;
    return true;
}

bool tml_link_receive(tml_link_t *l, const uint8_t *data, size_t len, size_t *consumed,
                      tml_link_frame_t *frame, uint32_t now_ms)
{
    (void)now_ms;
    for (size_t i = 0; i < len; i++) {
        uint8_t b = data[i];
        if (b == 0) {
            bool deliver = false;
            if (!l->rx_discard && l->cobs_left == 0 && l->rx_len) {
                deliver = frame_end(l, frame);
            } else if (!l->rx_discard && l->cobs_left) {
                l->stats.malformed++; /* the frame ended inside a block */
            }
            l->rx_len = 0;
            l->cobs_left = 0;
            l->cobs_zero = false;
            l->rx_discard = false;
            if (deliver) {
                *consumed = i + 1;
                return true;
            }
            continue;
        }
        if (l->rx_discard) {
            continue;
        }
        if (l->cobs_left == 0) { /* a code byte starts the next block */
            if (l->cobs_zero) {
                if (l->rx_len == sizeof(l->rx)) {
                    l->rx_discard = true;
                    l->stats.malformed++;
                    continue;
                }
                l->rx[l->rx_len++] = 0;
            }
            l->cobs_left = (uint8_t)(b - 1);
            l->cobs_zero = b != 0xFF;
            continue;
        }
        if (l->rx_len == sizeof(l->rx)) {
            l->rx_discard = true; /* longer than any frame we accept */
            l->stats.malformed++;
            continue;
        }
        l->rx[l->rx_len++] = b;
        l->cobs_left--;
    }
    *consumed = len;
    return false;
}
