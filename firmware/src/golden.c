/* SPDX-License-Identifier: Apache-2.0 */
/* Golden inputs, the top-1 label rule and the key-15 trial, as device_sdk/protocol/golden.py. */
#include "tml/golden.h"

#include <string.h>

#include "tml/sha.h"

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

void tml_golden_input(const uint8_t model_sha256[32], uint32_t index, uint8_t *out, size_t len)
{
    uint8_t tail[14] = {'g', 'o', 'l', 'd', 'e', 'n'}, digest[32];
    put_le32(tail + 6, index);
    for (uint32_t block = 0; len; block++) {
        tml_sha256_t c;
        size_t n = len < sizeof(digest) ? len : sizeof(digest);
        put_le32(tail + 10, block);
        tml_sha256_init(&c);
        tml_sha256_update(&c, model_sha256, 32);
        tml_sha256_update(&c, tail, sizeof(tail));
        tml_sha256_final(&c, digest);
        memcpy(out, digest, n);
        out += n;
        len -= n;
    }
}

uint32_t tml_golden_label(const uint8_t *output, size_t len, uint8_t output_type)
{
    /* Flipping the sign bit maps int8 order onto uint8 order: one comparison for both. */
    uint8_t flip = output_type == TML_GOLDEN_OUTPUT_INT8 ? 0x80 : 0;
    uint32_t best = 0;
    for (size_t i = 1; i < len; i++) {
        if ((uint8_t)(output[i] ^ flip) > (uint8_t)(output[best] ^ flip)) {
            best = (uint32_t)i;
        }
    }
    return best;
}

tml_reason_t tml_golden_trial(tml_model_runner_t *r, const tml_manifest_t *m, uint8_t *scratch,
                              size_t cap)
{
    uint8_t *in = scratch, digest[32];
    size_t in_len = r->input_bytes(r), out_len = 0;
    unsigned mismatches = 0;
    tml_sha256_t h;
    if (in_len == 0 || in_len >= cap) {
        return TML_REASON_TRIAL_FAILED;
    }
    tml_sha256_init(&h);
    for (uint8_t i = 0; i < m->trial_n; i++) {
        uint8_t *out = in + in_len;
        tml_golden_input(m->model_sha256, i, in, in_len);
        if (r->invoke_raw(r, in, in_len, out, cap - in_len, &out_len) != TML_OK || out_len == 0) {
            return TML_REASON_TRIAL_FAILED;
        }
        tml_sha256_update(&h, out, out_len);
        mismatches += tml_golden_label(out, out_len, m->trial_output_type) != m->trial_labels[i];
    }
    tml_sha256_final(&h, digest);
    if (mismatches > m->trial_max_mismatches ||
        (m->trial_has_digest && memcmp(digest, m->trial_outputs_sha256, 32) != 0)) {
        return TML_REASON_TRIAL_OUTPUT_MISMATCH;
    }
    return TML_REASON_OK;
}
