/* SPDX-License-Identifier: Apache-2.0 */
/* The device's key, its HELLO and its proof of possession at enrollment (enroll.h). */
#include "tml/enroll.h"

#include "monocypher.h"
#include "tml/cbor.h"
#include "tml/ed25519.h"
#include "tml/messages.h"
#include "tml/platform.h"

tml_status_t tml_enroll_hello(const char *uid, const char *hardware, uint32_t mtu, uint8_t *out,
                              size_t cap, size_t *out_len)
{
    uint8_t seed[32], key[32];
    const uint8_t *announced = NULL;
    if (tml_platform_device_seed(seed) == TML_OK) {
        tml_ed25519_public_key(key, seed);
        announced = key;
    }
    crypto_wipe(seed, sizeof(seed));
    return tml_hello_encode(uid, announced ? hardware : NULL, announced, mtu, out, cap, out_len);
}

tml_status_t tml_enroll_message(const uint8_t *challenge, size_t len, const char *uid,
                                const char *hardware, uint8_t *out, size_t cap, size_t *out_len)
{
    /* [nonce, token_sha256, capabilities_sha256, via]: major type and length bounds */
    static const uint8_t spec[4][3] = {{TML_CBOR_BYTES, 1, TML_ENROLL_MAX_NONCE},
                                       {TML_CBOR_BYTES, 32, 32},
                                       {TML_CBOR_BYTES, 32, 32},
                                       {TML_CBOR_TEXT, 1, TML_ENROLL_MAX_VIA}};
    tml_cbor_reader_t r;
    tml_cbor_item_t it;
    const uint8_t *item[5];
    tml_cbor_reader_init(&r, challenge, len);
    if (tml_cbor_expect(&r, TML_CBOR_ARRAY, &it) != TML_OK || it.arg != 4) {
        return TML_ERR_MALFORMED;
    }
    for (int i = 0; i < 4; i++) {
        item[i] = r.p;
        if (tml_cbor_expect(&r, spec[i][0], &it) != TML_OK || !it.shortest ||
            it.arg < spec[i][1] || it.arg > spec[i][2]) {
            return TML_ERR_MALFORMED;
        }
    }
    item[4] = r.p;
    if (r.p != r.end || !tml_utf8_valid(it.data, (size_t)it.arg)) {
        return TML_ERR_MALFORMED;
    }
    /* ["fleet/v1/enroll", nonce, token_sha256, uid, hardware, capabilities_sha256, via]: the
     * challenge's items are canonical, so they are copied as they are. */
    tml_cbor_writer_t w;
    tml_cbor_writer_init(&w, out, cap);
    tml_cbor_put_head(&w, TML_CBOR_ARRAY, 7);
    tml_cbor_put_text(&w, "fleet/v1/enroll");
    tml_cbor_put_raw(&w, item[0], (size_t)(item[2] - item[0])); /* nonce, token_sha256 */
    tml_cbor_put_text(&w, uid);
    tml_cbor_put_text(&w, hardware);
    tml_cbor_put_raw(&w, item[2], (size_t)(item[4] - item[2])); /* capabilities, via */
    return tml_cbor_finish(&w, out_len);
}

tml_status_t tml_enroll_prove(const uint8_t *challenge, size_t len, const char *uid,
                              const char *hardware, uint8_t signature[64])
{
    uint8_t msg[TML_ENROLL_MESSAGE_MAX], seed[32];
    size_t n;
    tml_status_t st = tml_enroll_message(challenge, len, uid, hardware, msg, sizeof(msg), &n);
    if (st == TML_OK) {
        st = tml_platform_device_seed(seed);
    }
    if (st == TML_OK) {
        tml_ed25519_sign(signature, seed, msg, n);
    }
    crypto_wipe(seed, sizeof(seed));
    return st;
}
