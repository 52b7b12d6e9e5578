/* SPDX-License-Identifier: Apache-2.0 */
/* Minimal CBOR writer and strict reader (RFC 8949), definite lengths only. */
#include "tml/cbor.h"

#include <string.h>

void tml_cbor_writer_init(tml_cbor_writer_t *w, uint8_t *buf, size_t cap)
{
    w->buf = buf;
    w->cap = cap;
    w->len = 0;
    w->overflow = false;
}

void tml_cbor_put_raw(tml_cbor_writer_t *w, const void *data, size_t len)
{
    if (w->overflow || len > w->cap - w->len) {
        w->overflow = true;
        return;
    }
    if (len) {
        memcpy(w->buf + w->len, data, len);
    }
    w->len += len;
}

void tml_cbor_put_head(tml_cbor_writer_t *w, int major, uint64_t arg)
{
    uint8_t head[9];
    size_t n;
    uint8_t mt = (uint8_t)(major << 5);
    if (arg < 24) {
        head[0] = (uint8_t)(mt | arg);
        n = 1;
    } else if (arg <= 0xFF) {
        head[0] = mt | 24;
        n = 2;
    } else if (arg <= 0xFFFF) {
        head[0] = mt | 25;
        n = 3;
    } else if (arg <= 0xFFFFFFFFULL) {
        head[0] = mt | 26;
        n = 5;
    } else {
        head[0] = mt | 27;
        n = 9;
    }
    for (size_t i = 1; i < n; i++) {
        head[i] = (uint8_t)(arg >> (8 * (n - 1 - i)));
    }
    tml_cbor_put_raw(w, head, n);
}

void tml_cbor_put_uint(tml_cbor_writer_t *w, uint64_t v)
{
    tml_cbor_put_head(w, TML_CBOR_UINT, v);
}

void tml_cbor_put_int(tml_cbor_writer_t *w, int64_t v)
{
    if (v >= 0) {
        tml_cbor_put_head(w, TML_CBOR_UINT, (uint64_t)v);
    } else {
        tml_cbor_put_head(w, TML_CBOR_NINT, (uint64_t)(-(v + 1)));
    }
}

void tml_cbor_put_bytes(tml_cbor_writer_t *w, const void *data, size_t len)
{
    tml_cbor_put_head(w, TML_CBOR_BYTES, len);
    tml_cbor_put_raw(w, data, len);
}

void tml_cbor_put_text(tml_cbor_writer_t *w, const char *s)
{
    size_t len = strlen(s);
    tml_cbor_put_head(w, TML_CBOR_TEXT, len);
    tml_cbor_put_raw(w, s, len);
}

tml_status_t tml_cbor_finish(const tml_cbor_writer_t *w, size_t *len)
{
    if (w->overflow) {
        return TML_ERR_NOSPACE;
    }
    *len = w->len;
    return TML_OK;
}

void tml_cbor_reader_init(tml_cbor_reader_t *r, const uint8_t *buf, size_t len)
{
    r->p = buf;
    r->end = buf + len;
}

tml_status_t tml_cbor_read(tml_cbor_reader_t *r, tml_cbor_item_t *item)
{
    if (r->p >= r->end) {
        return TML_ERR_MALFORMED;
    }
    item->start = r->p;
    item->data = NULL;
    uint8_t ib = *r->p++;
    item->major = ib >> 5;
    uint8_t ai = ib & 31;
    item->shortest = true;
    if (ai < 24) {
        item->arg = ai;
    } else if (ai <= 27) {
        size_t n = (size_t)1 << (ai - 24);
        if ((size_t)(r->end - r->p) < n) {
            return TML_ERR_MALFORMED;
        }
        uint64_t v = 0;
        for (size_t i = 0; i < n; i++) {
            v = (v << 8) | *r->p++;
        }
        item->arg = v;
        uint64_t min = n == 1 ? 24 : n == 2 ? 0x100 : n == 4 ? 0x10000 : 0x100000000ULL;
        item->shortest = v >= min;
    } else {
        return TML_ERR_MALFORMED; /* 28..30 reserved, 31 indefinite: refused */
    }
    if (item->major == TML_CBOR_SIMPLE && ai == 24 && item->arg < 32) {
        return TML_ERR_MALFORMED; /* two-byte simple values below 32 are not well-formed */
    }
    if (item->major == TML_CBOR_BYTES || item->major == TML_CBOR_TEXT) {
        if (item->arg > (uint64_t)(r->end - r->p)) {
            return TML_ERR_MALFORMED;
        }
        item->data = r->p;
        r->p += item->arg;
    }
    return TML_OK;
}

tml_status_t tml_cbor_expect(tml_cbor_reader_t *r, int major, tml_cbor_item_t *item)
{
    tml_status_t st = tml_cbor_read(r, item);
    if (st != TML_OK) {
        return st;
    }
    return item->major == major ? TML_OK : TML_ERR_RANGE;
}

bool tml_utf8_valid(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        size_t n;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (len - i <= n) {
            return false;
        }
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xC0) != 0x80) {
                return false;
            }
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF)) {
            return false;
        }
        i += n + 1;
    }
    return true;
}

tml_status_t tml_cbor_skip(tml_cbor_reader_t *r, int max_depth)
{
    /* Iterative: a counter of items still to read at each level keeps the stack flat. */
    uint64_t todo[16];
    int depth = 0;
    if (max_depth > 15) {
        max_depth = 15;
    }
    todo[0] = 1;
    while (depth >= 0) {
        if (todo[depth] == 0) {
            depth--;
            continue;
        }
        todo[depth]--;
        tml_cbor_item_t it;
        if (tml_cbor_read(r, &it) != TML_OK) {
            return TML_ERR_MALFORMED;
        }
        uint64_t children = 0;
        switch (it.major) {
        case TML_CBOR_TEXT:
            if (!tml_utf8_valid(it.data, (size_t)it.arg)) {
                return TML_ERR_MALFORMED;
            }
            break;
        case TML_CBOR_ARRAY: children = it.arg; break;
        case TML_CBOR_MAP:
            if (it.arg > (uint64_t)(r->end - r->p)) {
                return TML_ERR_MALFORMED;
            }
            children = it.arg * 2;
            break;
        case TML_CBOR_TAG: children = 1; break;
        default: break;
        }
        if (it.major == TML_CBOR_ARRAY || it.major == TML_CBOR_MAP || it.major == TML_CBOR_TAG) {
            if (children > (uint64_t)(r->end - r->p)) {
                return TML_ERR_MALFORMED; /* each child needs at least one byte */
            }
            if (depth + 1 > max_depth) {
                return TML_ERR_MALFORMED;
            }
            todo[++depth] = children;
        }
    }
    return TML_OK;
}
