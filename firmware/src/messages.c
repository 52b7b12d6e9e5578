/* SPDX-License-Identifier: Apache-2.0 */
/* Status, hello, chunk request/chunk, report and time messages (status.py, ota_messages.py). */
#include "tml/messages.h"

#include <string.h>

#include "tml/cbor.h"
#include "tml/protocol.h"

/* The widest status (every key trusted, every field at its widest) fits one transmit frame. */
TML_STATIC_ASSERT(TML_STATUS_MAX_BYTES <= TML_LINK_TX_MAX_PAYLOAD,
                  "status with TML_MAX_BUILTIN_KEYS + TML_MAX_ROTATED_KEYS keys > link frame");

tml_status_t tml_status_encode(const tml_status_msg_t *s, uint8_t *out, size_t cap,
                               size_t *out_len)
{
    if (s->slot > 1 || (s->has_model && s->model > TML_MAX_MODEL_ID) ||
        s->op_count > TML_MAX_OPS || (s->pointer_bits != 32 && s->pointer_bits != 64) ||
        s->uptime_s > (uint64_t)INT64_MAX || s->free_ram > (uint64_t)INT64_MAX ||
        s->seq > (uint64_t)INT64_MAX) {
        return TML_ERR_RANGE;
    }
    /*
     * RFC 8949 canonical order (shorter encoded key first, then bytewise), as cbor2 writes:
     * "ops", the unsigned entries (a table: smaller code than a call pair each), the two texts.
     */
    static const char *const keys[] = {"seq", "slot", "model", "state", "free_ram", "uptime_s",
                                       "slot_bytes", "arena_bytes", "pointer_bits"};
    enum { MODEL = 2 }; /* keys[MODEL] is left out when no model runs */
    const uint64_t values[] = {s->seq, s->slot, s->model, TML_LINK_STATE_ONLINE, s->free_ram,
                               s->uptime_s, s->slot_bytes, s->arena_bytes, s->pointer_bits};
    tml_cbor_writer_t w;
    tml_cbor_writer_init(&w, out, cap);
    tml_cbor_put_head(&w, TML_CBOR_MAP, 11 + s->has_model + (s->keys != NULL));
    tml_cbor_put_text(&w, "ops");
    tml_cbor_put_head(&w, TML_CBOR_ARRAY, s->op_count);
    for (size_t i = 0; i < s->op_count; i++) {
        tml_cbor_put_text(&w, s->ops[i]);
    }
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        if (i == 1 && s->keys) { /* "keys" sorts between "seq" and "slot" */
            tml_cbor_put_text(&w, "keys");
            tml_cbor_put_head(&w, TML_CBOR_ARRAY, s->keys->count);
            for (size_t k = 0; k < s->keys->count; k++) {
                tml_cbor_put_bytes(&w, s->keys->keys[k]->kid, TML_KEY_ID_BYTES);
            }
        }
        if (i != MODEL || s->has_model) {
            tml_cbor_put_text(&w, keys[i]);
            tml_cbor_put_uint(&w, values[i]);
        }
    }
    tml_cbor_put_text(&w, "tflm_version");
    tml_cbor_put_text(&w, s->tflm_version);
    tml_cbor_put_text(&w, "firmware_version");
    tml_cbor_put_text(&w, s->firmware_version);
    return tml_cbor_finish(&w, out_len);
}

tml_status_t tml_hello_encode(const char *uid, const char *hardware, const uint8_t *key,
                              uint32_t mtu, uint8_t *out, size_t cap, size_t *out_len)
{
    /* Canonical order: "key", "mtu", "uid", "link", "hardware". */
    tml_cbor_writer_t w;
    tml_cbor_writer_init(&w, out, cap);
    tml_cbor_put_head(&w, TML_CBOR_MAP, 3 + (key != NULL) + (hardware != NULL));
    if (key) {
        tml_cbor_put_text(&w, "key");
        tml_cbor_put_bytes(&w, key, 32);
    }
    tml_cbor_put_text(&w, "mtu");
    tml_cbor_put_uint(&w, mtu);
    tml_cbor_put_text(&w, "uid");
    tml_cbor_put_text(&w, uid);
    tml_cbor_put_text(&w, "link");
    tml_cbor_put_uint(&w, 1);
    if (hardware) {
        tml_cbor_put_text(&w, "hardware");
        tml_cbor_put_text(&w, hardware);
    }
    return tml_cbor_finish(&w, out_len);
}

/* Encode the array [a, b, c] of unsigned integers (a chunk request, a report). */
static tml_status_t encode_uint3(uint32_t a, uint32_t b, uint32_t c, uint8_t *out, size_t cap,
                                 size_t *out_len)
{
    tml_cbor_writer_t w;
    tml_cbor_writer_init(&w, out, cap);
    tml_cbor_put_head(&w, TML_CBOR_ARRAY, 3);
    tml_cbor_put_uint(&w, a);
    tml_cbor_put_uint(&w, b);
    tml_cbor_put_uint(&w, c);
    return tml_cbor_finish(&w, out_len);
}

tml_status_t tml_chunk_request_encode(uint32_t pkg, uint32_t offset, uint32_t length,
                                      uint8_t *out, size_t cap, size_t *out_len)
{
    if (pkg > TML_MAX_PACKAGE_ID || length < 1 || length > TML_MAX_CHUNK_BYTES ||
        (uint64_t)offset + length > TML_MAX_TRANSFER_BYTES) {
        return TML_ERR_RANGE;
    }
    return encode_uint3(pkg, offset, length, out, cap, out_len);
}

tml_status_t tml_report_encode(uint32_t pkg, uint8_t state, uint16_t detail, uint8_t *out,
                               size_t cap, size_t *out_len)
{
    if (pkg > TML_MAX_PACKAGE_ID || state > TML_STATE_ROLLED_BACK) {
        return TML_ERR_RANGE;
    }
    return encode_uint3(pkg, state, detail, out, cap, out_len);
}

tml_status_t tml_chunk_decode(const uint8_t *msg, size_t len, uint32_t *pkg, uint32_t *offset,
                              const uint8_t **data, size_t *data_len)
{
    tml_cbor_reader_t r;
    tml_cbor_item_t a, p, o, d;
    tml_cbor_reader_init(&r, msg, len);
    if (tml_cbor_expect(&r, TML_CBOR_ARRAY, &a) != TML_OK || a.arg != 3 ||
        tml_cbor_expect(&r, TML_CBOR_UINT, &p) != TML_OK ||
        tml_cbor_expect(&r, TML_CBOR_UINT, &o) != TML_OK ||
        tml_cbor_expect(&r, TML_CBOR_BYTES, &d) != TML_OK || r.p != r.end) {
        return TML_ERR_MALFORMED;
    }
    /* offset + length <= the limit, written so it cannot wrap: d.arg <= the limit here */
    if (p.arg > TML_MAX_PACKAGE_ID || d.arg > TML_MAX_CHUNK_BYTES ||
        o.arg > TML_MAX_TRANSFER_BYTES - d.arg) {
        return TML_ERR_RANGE;
    }
    *pkg = (uint32_t)p.arg;
    *offset = (uint32_t)o.arg;
    *data = d.data;
    *data_len = (size_t)d.arg;
    return TML_OK;
}

tml_status_t tml_withdraw_decode(const uint8_t *msg, size_t len, uint32_t *pkg, uint16_t *reason)
{
    tml_cbor_reader_t r;
    tml_cbor_item_t a, p, why;
    tml_cbor_reader_init(&r, msg, len);
    if (tml_cbor_expect(&r, TML_CBOR_ARRAY, &a) != TML_OK || a.arg != 2 ||
        tml_cbor_expect(&r, TML_CBOR_UINT, &p) != TML_OK ||
        tml_cbor_expect(&r, TML_CBOR_UINT, &why) != TML_OK || r.p != r.end) {
        return TML_ERR_MALFORMED;
    }
    if (p.arg > TML_MAX_PACKAGE_ID || why.arg > TML_MAX_REASON_CODE) {
        return TML_ERR_RANGE;
    }
    *pkg = (uint32_t)p.arg;
    *reason = (uint16_t)why.arg;
    return TML_OK;
}

tml_status_t tml_time_decode(const uint8_t *msg, size_t len, uint64_t *unix_ms)
{
    tml_cbor_reader_t r;
    tml_cbor_item_t t;
    tml_cbor_reader_init(&r, msg, len);
    if (tml_cbor_expect(&r, TML_CBOR_UINT, &t) != TML_OK || r.p != r.end) {
        return TML_ERR_MALFORMED;
    }
    *unix_ms = t.arg;
    return TML_OK;
}
